//! The host runner's write sandbox: Linux Landlock. A step may write only beneath its
//! work directory and its own temporary directory (`TMPDIR`), to its log, and to the
//! usual devices; reading and executing are not restricted (the host runner is not
//! hermetic; a container runner is). Landlock needs no privileges and binds root too.
//!
//! The ruleset is built in the parent (where allocating and opening paths is safe) and
//! only enforced in the child between fork and exec, by two plain system calls.

use std::path::Path;
use std::sync::Mutex;

use landlock::{
    AccessFs, BitFlags, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreated, RulesetCreatedAttr, RulesetStatus, ABI,
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

/// A ruleset ready to be enforced in a child process.
pub struct Sandbox {
    ruleset: Mutex<Option<RulesetCreated>>,
}

impl Sandbox {
    /// Writes allowed beneath `work` and `temp`, to the file `log`, and to `/dev`'s
    /// files (`/dev/null` and friends) and `/dev/shm`.
    pub fn new(work: &Path, temp: &Path, log: &Path) -> Result<Sandbox, String> {
        let all = AccessFs::from_write(ABI_USED);
        let write_file: BitFlags<AccessFs> = AccessFs::WriteFile | AccessFs::Truncate;
        let rule = |path: &Path, access: BitFlags<AccessFs>| {
            PathFd::new(path)
                .map(|fd| PathBeneath::new(fd, access))
                .map_err(|e| format!("sandbox: cannot open `{}`: {e}", path.display()))
        };
        let mut rules = vec![rule(work, all)?, rule(temp, all)?, rule(log, write_file)?];
        rules.push(rule(Path::new("/dev"), write_file)?);
        if Path::new("/dev/shm").is_dir() {
            rules.push(rule(Path::new("/dev/shm"), all)?);
        }
        let ruleset = Ruleset::default()
            // An older kernel enforces what it knows; none at all is reported by
            // `available`, not an error here.
            .set_compatibility(CompatLevel::BestEffort)
            .handle_access(all)
            .and_then(|r| r.create())
            .and_then(|r| r.add_rules(rules.into_iter().map(Ok::<_, landlock::RulesetError>)))
            .map_err(|e| format!("sandbox: {e}"))?;
        Ok(Sandbox {
            ruleset: Mutex::new(Some(ruleset)),
        })
    }

    /// Enforces the ruleset on the calling process. Meant for `pre_exec`: the mutex is
    /// this sandbox's own (never held across a fork), and on success the call makes only
    /// the `prctl` and `landlock_restrict_self` system calls.
    pub fn enforce(&self) -> std::io::Result<()> {
        let taken = match self.ruleset.lock() {
            Ok(mut g) => g.take(),
            Err(e) => e.into_inner().take(),
        };
        let Some(ruleset) = taken else {
            return Ok(());
        };
        match ruleset.restrict_self() {
            Ok(s) if s.ruleset == RulesetStatus::NotEnforced && available() => Err(
                std::io::Error::other("sandbox: the kernel did not enforce the ruleset"),
            ),
            Ok(_) => Ok(()),
            Err(e) => Err(std::io::Error::other(format!("sandbox: {e}"))),
        }
    }
}
