//! The sandbox's second wall: Linux Landlock. Under the namespaces' read-only mounts, a
//! sandboxed step may also, by Landlock, write only beneath its work directory and its
//! `/tmp` and to the devices of its `/dev`. Landlock needs no privileges and binds root
//! too.
//!
//! The ruleset is built in the parent (where allocating and opening paths is safe) and
//! only enforced in the sandbox's last process before `execve`, by two plain system
//! calls (`namespace.rs`).

use std::path::Path;

use landlock::{
    AccessFs, BitFlags, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreatedAttr, ABI,
};

/// The Landlock ABI whose write rights are handled: v3 adds `Truncate`. IoctlDev (v5)
/// is left alone so terminal and device ioctls keep working.
const ABI_USED: ABI = ABI::V3;

/// Whether this kernel enforces Landlock (ABI ≥ 1). Asked once per process.
pub fn available() -> bool {
    static ANSWER: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ANSWER.get_or_init(|| {
        // SAFETY: landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)
        // only returns the ABI version (or -1); it takes no memory from us.
        let abi = unsafe {
            libc::syscall(
                libc::SYS_landlock_create_ruleset,
                std::ptr::null::<u8>(),
                0usize,
                1u32,
            )
        };
        abi >= 1
    })
}

/// A ruleset for a namespace sandbox, as the descriptor its last process enforces
/// (`namespace::Jail::landlock`): writes beneath `dirs`, and to the files `files` (the
/// devices bound into its `/dev`). `None` where the kernel has no Landlock.
pub fn ruleset_fd(dirs: &[&Path], files: &[&Path]) -> Result<Option<std::os::fd::OwnedFd>, String> {
    if !available() {
        return Ok(None);
    }
    let all = AccessFs::from_write(ABI_USED);
    let write_file: BitFlags<AccessFs> = AccessFs::WriteFile | AccessFs::Truncate;
    let mut rules = Vec::new();
    for (paths, access) in [(dirs, all), (files, write_file)] {
        for p in paths {
            let fd = PathFd::new(p)
                .map_err(|e| format!("sandbox: cannot open `{}`: {e}", p.display()))?;
            rules.push(PathBeneath::new(fd, access));
        }
    }
    let ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(all)
        .and_then(|r| r.create())
        .and_then(|r| r.add_rules(rules.into_iter().map(Ok::<_, landlock::RulesetError>)))
        .map_err(|e| format!("sandbox: {e}"))?;
    Ok(ruleset.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    use std::process::Command;

    /// The second wall on its own (no namespaces): a process under the ruleset writes
    /// beneath the allowed directory and to `/dev/null`, and nowhere else, root included.
    #[test]
    fn a_ruleset_confines_writes() {
        if !available() {
            assert!(
                std::env::var("CI").is_err(),
                "CI runs on kernels with Landlock; this one does not enforce it"
            );
            eprintln!("skipping: this kernel does not enforce Landlock");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let allowed = dir.path().join("allowed");
        std::fs::create_dir(&allowed).unwrap();
        let outside = dir.path().join("outside");
        let fd = ruleset_fd(&[&allowed], &[Path::new("/dev/null")])
            .unwrap()
            .expect("a ruleset");
        let raw = fd.as_raw_fd();
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c").arg(format!(
            "echo in > {}/f && echo quiet > /dev/null && echo out > {}",
            allowed.display(),
            outside.display()
        ));
        // SAFETY: prctl and landlock_restrict_self, plain system calls on a descriptor
        // opened before the fork.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                    || libc::syscall(libc::SYS_landlock_restrict_self, raw, 0u32) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let out = cmd.output().unwrap();
        assert!(!out.status.success());
        assert_eq!(std::fs::read_to_string(allowed.join("f")).unwrap(), "in\n");
        assert!(!outside.exists(), "the write outside happened");
        assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied"));
    }
}
