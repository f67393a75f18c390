//! The process exit codes, one table for every command (documented in
//! docs/exit-codes.md). Operations say which row applies; only `cascade-cli` turns
//! it into the process's code.

/// What a command's end means to a script that ran it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum ExitCode {
    /// Success.
    Ok = 0,
    /// A build, test, check or deploy ran and failed.
    Failed = 1,
    /// Bad input: a manifest, a lockfile, command-line usage.
    BadInput = 2,
    /// The machine's environment: a tool, the disk, Docker, a registry, a git remote.
    Environment = 3,
    /// A bug in cascade (a panic).
    Bug = 101,
    /// Interrupted by SIGINT or SIGTERM.
    Interrupted = 130,
}

impl ExitCode {
    /// The number the process exits with.
    pub const fn code(self) -> i32 {
        self as i32
    }
}

#[cfg(test)]
mod tests {
    use super::ExitCode;

    /// Scripts depend on these numbers; they never change.
    #[test]
    fn codes_are_stable() {
        let table = [
            (ExitCode::Ok, 0),
            (ExitCode::Failed, 1),
            (ExitCode::BadInput, 2),
            (ExitCode::Environment, 3),
            (ExitCode::Bug, 101),
            (ExitCode::Interrupted, 130),
        ];
        for (exit, code) in table {
            assert_eq!(exit.code(), code, "{exit:?}");
        }
    }
}
