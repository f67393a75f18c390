//! Processes in fresh Linux namespaces: the one module of cascade-exec with `unsafe`.
//!
//! [`spawn`] starts a command the way Nix's build sandbox and Bazel's `linux-sandbox` do,
//! in-process and without a daemon:
//!
//! ```text
//! cascade ─clone(CLONE_VM|CLONE_VFORK, new user, mount, net, pid, ipc, uts namespaces)─►
//!     P: pid 1 of its pid namespace, own process group; writes its own uid/gid maps;
//!     builds the root (a tmpfs with read-only bind mounts, /work, /tmp, /dev, /proc),
//!     loopback up, pivot_root; rlimits, Landlock, no_new_privs, no capabilities;
//!     execve: P is the program
//! ```
//!
//! A build step ([`Network::Thread`]) keeps the thread's network namespace instead of
//! making one (most of a sandbox's cost); one more short-lived child enters it:
//!
//! ```text
//! cascade ─clone(CLONE_VM|CLONE_VFORK)─► E: setns(thread's user ns, thread's net ns);
//!     unshare(user, mount, pid, ipc, uts); writes the maps;
//!     ─clone(CLONE_VM|CLONE_VFORK|CLONE_PARENT)─► P (cascade's child), as above
//!     E exits once P has exec'd
//! ```
//!
//! When P exits (the program ended, or it was killed), the kernel kills every process
//! left in the pid namespace: nothing a step starts with `&`, `nohup` or `setsid`
//! survives it, and orphans are reaped by the program as pid 1 (shells wait for any
//! child). Killing P's process group (a timeout, an interrupt) kills everything. One
//! process, not a chain of three: a copy of cascade exists only until the execve, so
//! what a fork costs (the page tables of a process that holds a big graph, and the
//! pages cascade writes while a copy shares them) is paid for a millisecond per step.
//!
//! **Why it is sound.** Between `fork` and `execve` the children run only system calls
//! on memory prepared before the fork (every path a `CString`, every buffer built,
//! [`Plan`]): no allocation, no lock, so a fork from a multi-threaded process cannot
//! deadlock. Errors are reported as `(stage, errno)` through a close-on-exec pipe; the
//! parent reads it to its end, which comes when P's `execve` succeeds or it exits. P
//! closes every inherited descriptor but its own first, so another thread's
//! close-on-exec pipe is never held open by it.

use std::ffi::{CStr, CString, OsStr};
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags, CWD};
use rustix::mount::{
    MountFlags, MountPropagationFlags, MoveMountFlags, OpenTreeFlags, UnmountFlags,
};
use rustix::thread::UnshareFlags;

/// What a sandboxed process is started with.
pub struct Jail {
    /// Where the root filesystem's top-level entries come from.
    pub root: Root,
    /// Mounted after the root's entries, in order: host path → absolute path inside.
    pub binds: Vec<Bind>,
    /// The working directory inside.
    pub cwd: String,
    /// `argv[0]` is the program's absolute path inside the sandbox.
    pub argv: Vec<String>,
    /// The whole environment, `NAME=value`.
    pub env: Vec<String>,
    /// Where stdout and stderr go (stdin is `/dev/null`).
    pub output: OwnedFd,
    /// A Landlock ruleset to enforce before `execve` (the second wall).
    pub landlock: Option<OwnedFd>,
    pub limits: Limits,
    pub network: Network,
}

/// The network namespace a sandboxed process gets: either way only loopback, reaching
/// nothing outside.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Network {
    /// One made for it (a server that may outlive the spawning code: smoke tests).
    Own,
    /// The calling thread's, made once per thread and entered by each process the
    /// thread starts, one at a time (build steps). Making a network namespace is most of
    /// what a sandbox costs (about a millisecond here: loopback, sysctl tables), so a
    /// thread makes one and keeps it. A step leaves nothing in it: its processes, and so
    /// its sockets, end with its pid namespace, and `TIME_WAIT` is off (no connection
    /// outlives its sockets, so no port is still in use for the next step), as is the
    /// TCP metrics cache. Without capabilities a step can change nothing else there.
    /// Where the kernel refuses any of it, the process gets its own, as with `Own`.
    Thread,
}

/// The source of the root filesystem's top-level entries, each bound read-only.
#[derive(Clone, Debug)]
pub enum Root {
    /// The host's own `/` (less `/proc`, `/sys`, `/dev`, `/tmp`, `/run` and `/work`).
    Host,
    /// A directory: an unpacked image.
    Dir(PathBuf),
}

#[derive(Clone, Debug)]
pub struct Bind {
    pub source: PathBuf,
    /// Absolute, inside the sandbox; created as a mount point when missing.
    pub target: String,
    pub writable: bool,
}

/// Resource limits (rlimits: cgroup v2 is not used).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// RLIMIT_DATA: heap and private mappings.
    pub data: u64,
    /// RLIMIT_NPROC.
    pub processes: u64,
}

/// The uid and gid a sandboxed process has inside: the caller's, or 65534 when cascade
/// runs as root (never root inside).
pub fn inside_ids() -> (u32, u32) {
    let (uid, gid) = (rustix::process::geteuid(), rustix::process::getegid());
    if uid.is_root() {
        (65534, 65534)
    } else {
        (uid.as_raw(), gid.as_raw())
    }
}

/// A started sandbox: P, the program, the leader of its own process group.
pub struct Jailed {
    pub pid: libc::pid_t,
}

impl Jailed {
    /// Waits for the program: its exit status (128 + the signal when it was killed).
    pub fn wait(&self) -> io::Result<i32> {
        wait_status(self.pid)
    }

    /// The program's status if it has ended, without waiting.
    pub fn try_wait(&self) -> io::Result<Option<i32>> {
        let mut status = 0;
        // SAFETY: waitpid writes only into `status`.
        let r = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
        match r {
            0 => Ok(None),
            r if r == self.pid => Ok(Some(if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                128 + libc::WTERMSIG(status)
            })),
            _ => Err(io::Error::last_os_error()),
        }
    }

    /// Kills everything: P's group holds P, whose death ends the pid namespace.
    pub fn kill(&self) {
        // SAFETY: plain syscall; a negative pid names the process group.
        unsafe {
            libc::kill(-self.pid, libc::SIGKILL);
        }
    }
}

/// Waits for a child and decodes its status as a shell would.
fn wait_status(pid: libc::pid_t) -> io::Result<i32> {
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes only into `status`.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            return Ok(if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                128 + libc::WTERMSIG(status)
            });
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Why the kernel refused the namespaces: what to change, or what to use instead.
#[derive(Clone, Debug, thiserror::Error)]
#[error("this kernel refuses the namespaces a sandboxed step needs ({stage}: {errno})")]
pub struct Refused {
    pub stage: &'static str,
    pub errno: String,
}

impl Refused {
    /// The settings that decide it, for a diagnostic's help.
    pub const HELP: &'static str = "allow user namespaces (`sysctl kernel.unprivileged_userns_clone=1`, a non-zero `user.max_user_namespaces`, and on Ubuntu `kernel.apparmor_restrict_unprivileged_userns=0`); or, knowingly, run container steps and smoke tests with `--executor docker` and host steps unsandboxed with `CASCADE_SANDBOX=off`";
}

/// Whether this process may create the namespaces [`spawn`] uses. Asked once per
/// process, by a child that creates them and exits.
pub fn available() -> Result<(), Refused> {
    static ANSWER: std::sync::OnceLock<Result<(), Refused>> = std::sync::OnceLock::new();
    ANSWER.get_or_init(probe).clone()
}

fn probe() -> Result<(), Refused> {
    let maps = IdMaps::new();
    let (read, write) = error_pipe().map_err(|e| Refused {
        stage: "pipe",
        errno: e.to_string(),
    })?;
    // SAFETY: the child runs only system calls on memory prepared above (`maps`), then
    // `_exit`s (see the module's header).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(Refused {
            stage: "fork",
            errno: io::Error::last_os_error().to_string(),
        });
    }
    if pid == 0 {
        let w = write.as_raw_fd();
        let r = maps.enter().and_then(|()| {
            // SAFETY: unshare of namespaces only (no CLONE_FILES); the child is single-threaded.
            unsafe { rustix::thread::unshare_unsafe(rest_flags()) }.map_err(|e| (S_UNSHARE, e))
        });
        child_exit(w, r);
    }
    drop(write);
    let failure = read_failure(read);
    let _ = wait_status(pid);
    match failure {
        None => Ok(()),
        Some((stage, errno)) => Err(Refused {
            stage: stage_name(stage),
            errno: io::Error::from_raw_os_error(errno).to_string(),
        }),
    }
}

fn rest_flags() -> UnshareFlags {
    UnshareFlags::NEWNS
        | UnshareFlags::NEWNET
        | UnshareFlags::NEWPID
        | UnshareFlags::NEWIPC
        | UnshareFlags::NEWUTS
}

// The stages a child reports a failure from.
const S_USERNS: u32 = 1;
const S_IDMAP: u32 = 2;
const S_UNSHARE: u32 = 3;
const S_FORK: u32 = 4;
const S_MOUNT: u32 = 5;
const S_LOOPBACK: u32 = 6;
const S_PIVOT: u32 = 7;
const S_LIMITS: u32 = 8;
const S_PRIVS: u32 = 9;
const S_EXEC: u32 = 10;
const S_SETNS: u32 = 11;
const S_CONNECT: u32 = 12;
const S_NETNS: u32 = 13;

fn stage_name(stage: u32) -> &'static str {
    match stage {
        S_USERNS => "new user namespace",
        S_IDMAP => "uid/gid map",
        S_UNSHARE => "new mount, network, pid, ipc and uts namespaces",
        S_FORK => "fork",
        S_MOUNT => "mounting the root filesystem",
        S_LOOPBACK => "loopback interface",
        S_PIVOT => "pivot_root",
        S_LIMITS => "resource limits",
        S_PRIVS => "dropping privileges",
        S_EXEC => "execve",
        S_SETNS => "entering the namespaces",
        S_CONNECT => "connecting",
        S_NETNS => "the thread's network namespace",
        _ => "setup",
    }
}

/// A failed sandbox setup, before the program ran.
#[derive(Debug, thiserror::Error)]
#[error("sandbox setup failed at {stage}{}: {source}", detail.as_deref().map(|d| format!(" (`{d}`)")).unwrap_or_default())]
pub struct SetupError {
    pub stage: &'static str,
    /// The path involved, when a mount failed.
    pub detail: Option<String>,
    #[source]
    pub source: io::Error,
}

fn setup_error(stage: &'static str, source: io::Error) -> SetupError {
    SetupError {
        stage,
        detail: None,
        source,
    }
}

/// uid_map, gid_map and setgroups contents, formatted before a fork.
struct IdMaps {
    uid_map: Vec<u8>,
    gid_map: Vec<u8>,
}

impl IdMaps {
    fn new() -> IdMaps {
        let (inner_uid, inner_gid) = inside_ids();
        let outer_uid = rustix::process::geteuid().as_raw();
        let outer_gid = rustix::process::getegid().as_raw();
        IdMaps::between((inner_uid, inner_gid), (outer_uid, outer_gid))
    }

    /// `inner` inside for `outer` in the parent user namespace.
    fn between(inner: (u32, u32), outer: (u32, u32)) -> IdMaps {
        IdMaps {
            uid_map: format!("{} {} 1\n", inner.0, outer.0).into_bytes(),
            gid_map: format!("{} {} 1\n", inner.1, outer.1).into_bytes(),
        }
    }

    /// After fork: a new user namespace in which the caller's ids map to the inside ids.
    fn enter(&self) -> Result<(), (u32, rustix::io::Errno)> {
        // SAFETY: a user namespace only; the child is single-threaded.
        unsafe { rustix::thread::unshare_unsafe(UnshareFlags::NEWUSER) }
            .map_err(|e| (S_USERNS, e))?;
        self.write_own()
    }

    /// In a new user namespace: its maps, written by its first process.
    fn write_own(&self) -> Result<(), (u32, rustix::io::Errno)> {
        write_file(c"/proc/self/setgroups", b"deny").map_err(|e| (S_IDMAP, e))?;
        write_file(c"/proc/self/uid_map", &self.uid_map).map_err(|e| (S_IDMAP, e))?;
        write_file(c"/proc/self/gid_map", &self.gid_map).map_err(|e| (S_IDMAP, e))?;
        Ok(())
    }
}

fn write_file(path: &CStr, bytes: &[u8]) -> Result<(), rustix::io::Errno> {
    let fd = rustix::fs::open(path, OFlags::WRONLY | OFlags::CLOEXEC, Mode::empty())?;
    rustix::io::write(&fd, bytes)?;
    Ok(())
}

fn error_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?)
}

/// Reads a child's `(stage, errno)` report; `None` when the pipe closed empty.
fn read_failure(read: OwnedFd) -> Option<(u32, i32)> {
    let mut buf = [0u8; 8];
    let mut got = 0;
    while got < buf.len() {
        match rustix::io::read(&read, &mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => break,
        }
    }
    (got == 8).then(|| {
        let stage = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]);
        let errno = i32::from_ne_bytes([buf[4], buf[5], buf[6], buf[7]]);
        (stage, errno)
    })
}

/// In a child: report a failure (if any) and exit. Never returns.
fn child_exit(pipe: RawFd, r: Result<(), (u32, rustix::io::Errno)>) -> ! {
    if let Err((stage, errno)) = r {
        report(pipe, stage, errno);
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(127) }
    }
    // SAFETY: as above.
    unsafe { libc::_exit(0) }
}

fn report(pipe: RawFd, stage: u32, errno: rustix::io::Errno) {
    let mut buf = [0u8; 8];
    buf[..4].copy_from_slice(&stage.to_ne_bytes());
    buf[4..].copy_from_slice(&errno.raw_os_error().to_ne_bytes());
    // SAFETY: write from a stack buffer to a descriptor we own.
    unsafe {
        libc::write(pipe, buf.as_ptr().cast(), buf.len());
    }
}

/// One mount-namespace operation, with every path resolved (under the new root's
/// host path) before the fork.
enum Op {
    Dir(CString),
    File(CString),
    Symlink {
        link: CString,
        path: CString,
    },
    Bind {
        source: CString,
        target: CString,
        writable: bool,
    },
    Tmpfs {
        target: CString,
        data: CString,
    },
    Proc(CString),
}

impl Op {
    fn target(&self) -> &CStr {
        match self {
            Op::Dir(p) | Op::File(p) | Op::Proc(p) => p,
            Op::Symlink { path, .. } => path,
            Op::Bind { target, .. } | Op::Tmpfs { target, .. } => target,
        }
    }
}

/// Everything P needs, allocated before the clone.
struct Plan {
    /// In the thread's network namespace ([`Network::Thread`]): the maps are written
    /// and loopback is up before P starts.
    entered: bool,
    maps: IdMaps,
    /// The new root's mount point on the host.
    root: CString,
    ops: Vec<Op>,
    cwd: CString,
    program: CString,
    _argv: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    _env: Vec<CString>,
    envp: Vec<*const libc::c_char>,
    output: OwnedFd,
    devnull: OwnedFd,
    landlock: Option<OwnedFd>,
    limits: Limits,
    /// Descriptors P keeps; all others are closed (sorted).
    keep: Vec<RawFd>,
}

fn cstring(s: impl AsRef<OsStr>) -> io::Result<CString> {
    CString::new(s.as_ref().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in a path"))
}

/// Top-level entries of a host root that a sandbox never sees: its own `/proc`,
/// `/dev`, `/tmp` and `/work` replace them; `/sys`, `/run` (sockets of daemons such as
/// Docker's) and the home directories (`/home`, `/root`: keys, tokens, registry
/// credentials) stay out.
pub const HIDDEN: &[&str] = &["proc", "sys", "dev", "tmp", "run", "work", "home", "root"];

/// The devices of `/dev`, bound from the host's.
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// The mount operations of a new root, under its mount point on the host.
struct Ops {
    ops: Vec<Op>,
    root_dir: PathBuf,
}

impl Ops {
    /// The host path of `inside` under the new root.
    fn under(&self, inside: &str) -> io::Result<CString> {
        cstring(self.root_dir.join(inside.trim_start_matches('/')))
    }

    /// The root's top-level entries: each bound read-only, a symlink made again.
    fn entries(&mut self, entries: &[RootEntry]) -> io::Result<()> {
        for entry in entries {
            let target = cstring(self.root_dir.join(&entry.name))?;
            match &entry.kind {
                RootKind::Symlink(link) => self.ops.push(Op::Symlink {
                    link: link.clone(),
                    path: target,
                }),
                kind => {
                    self.ops.push(if matches!(kind, RootKind::Dir) {
                        Op::Dir(target.clone())
                    } else {
                        Op::File(target.clone())
                    });
                    self.ops.push(Op::Bind {
                        source: entry.source.clone(),
                        target,
                        writable: false,
                    });
                }
            }
        }
        Ok(())
    }

    /// /dev: a small tmpfs with the host's harmless devices bound in.
    fn dev(&mut self) -> io::Result<()> {
        self.ops.push(Op::Dir(self.under("/dev")?));
        self.ops.push(Op::Tmpfs {
            target: self.under("/dev")?,
            data: c"mode=0755,size=64k".into(),
        });
        for d in DEVICES {
            let host = Path::new("/dev").join(d);
            if host.exists() {
                self.ops.push(Op::File(self.under(&format!("/dev/{d}"))?));
                self.ops.push(Op::Bind {
                    source: cstring(&host)?,
                    target: self.under(&format!("/dev/{d}"))?,
                    writable: true,
                });
            }
        }
        for (name, link) in [
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
        ] {
            self.ops.push(Op::Symlink {
                link: cstring(link)?,
                path: self.under(&format!("/dev/{name}"))?,
            });
        }
        Ok(())
    }

    /// The jail's binds, each with the directories its mount point needs on the tmpfs.
    fn binds(&mut self, binds: &[Bind]) -> io::Result<()> {
        for b in binds {
            let target = self.under(&b.target)?;
            // Parents of a mount point on the root tmpfs (e.g. /.cascade/tools).
            let mut prefix = String::new();
            let parts: Vec<&str> = b.target.split('/').filter(|p| !p.is_empty()).collect();
            for p in &parts[..parts.len().saturating_sub(1)] {
                prefix.push('/');
                prefix.push_str(p);
                let dir = self.under(&prefix)?;
                if !self.ops.iter().any(|o| o.target() == dir.as_c_str()) {
                    self.ops.push(Op::Dir(dir));
                }
            }
            if !self.ops.iter().any(|o| o.target() == target.as_c_str()) {
                self.ops.push(if b.source.is_dir() {
                    Op::Dir(target.clone())
                } else {
                    Op::File(target.clone())
                });
            }
            self.ops.push(Op::Bind {
                source: cstring(&b.source)?,
                target,
                writable: b.writable,
            });
        }
        Ok(())
    }
}

/// A top-level entry of a root filesystem, as the sandbox's root shows it.
struct RootEntry {
    name: std::ffi::OsString,
    source: CString,
    kind: RootKind,
}

enum RootKind {
    Dir,
    File,
    Symlink(CString),
}

/// The host root's entries, listed again only when `/` changed (its mtime moves when an
/// entry is added, removed or replaced): one `stat` per step instead of a listing.
fn host_root() -> io::Result<std::sync::Arc<Vec<RootEntry>>> {
    type Listed = Option<((i64, i64), std::sync::Arc<Vec<RootEntry>>)>;
    static HOST: std::sync::Mutex<Listed> = std::sync::Mutex::new(None);
    let meta = fs::metadata("/")?;
    let stamp = (
        std::os::unix::fs::MetadataExt::mtime(&meta),
        std::os::unix::fs::MetadataExt::mtime_nsec(&meta),
    );
    let mut host = HOST.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((s, entries)) = host.as_ref() {
        if *s == stamp {
            return Ok(entries.clone());
        }
    }
    let entries = std::sync::Arc::new(root_entries(Path::new("/"), HIDDEN)?);
    *host = Some((stamp, entries.clone()));
    Ok(entries)
}

/// The entries of `base` but `hidden`, sorted by name.
fn root_entries(base: &Path, hidden: &[&str]) -> io::Result<Vec<RootEntry>> {
    let mut names: Vec<_> = fs::read_dir(base)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .filter(|n| !hidden.iter().any(|h| OsStr::new(h) == n))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let source = base.join(&name);
            let meta = fs::symlink_metadata(&source)?;
            let kind = if meta.file_type().is_symlink() {
                RootKind::Symlink(cstring(fs::read_link(&source)?)?)
            } else if meta.is_dir() {
                RootKind::Dir
            } else {
                RootKind::File
            };
            Ok(RootEntry {
                source: cstring(&source)?,
                name,
                kind,
            })
        })
        .collect()
}

impl Plan {
    fn new(jail: Jail, scratch: &Path, entered: bool) -> io::Result<Plan> {
        let root_dir = scratch.join("root");
        fs::create_dir_all(&root_dir)?;
        // 1. The root: a tmpfs with the root's entries, /dev, /proc, /tmp, then the binds.
        let mut ops = Ops {
            ops: vec![Op::Tmpfs {
                target: cstring(&root_dir)?,
                data: c"mode=0755,size=16m".into(),
            }],
            root_dir,
        };
        let entries: std::sync::Arc<Vec<RootEntry>> = match &jail.root {
            Root::Host => host_root()?,
            Root::Dir(d) => std::sync::Arc::new(root_entries(d, &["proc", "dev", "tmp", "work"])?),
        };
        ops.entries(&entries)?;
        ops.dev()?;
        ops.ops.push(Op::Dir(ops.under("/proc")?));
        ops.ops.push(Op::Proc(ops.under("/proc")?));
        ops.ops.push(Op::Dir(ops.under("/tmp")?));
        ops.binds(&jail.binds)?;
        let Ops { ops, root_dir } = ops;
        // 2. What execve takes, and the descriptors P keeps.
        let argv_c = jail
            .argv
            .iter()
            .map(cstring)
            .collect::<io::Result<Vec<_>>>()?;
        let env_c = jail
            .env
            .iter()
            .map(cstring)
            .collect::<io::Result<Vec<_>>>()?;
        let program = argv_c
            .first()
            .cloned()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no program"))?;
        let mut argv: Vec<*const libc::c_char> = argv_c.iter().map(|c| c.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut envp: Vec<*const libc::c_char> = env_c.iter().map(|c| c.as_ptr()).collect();
        envp.push(std::ptr::null());
        let devnull: OwnedFd = fs::File::open("/dev/null")?.into();
        let mut keep = vec![jail.output.as_raw_fd(), devnull.as_raw_fd()];
        if let Some(l) = &jail.landlock {
            keep.push(l.as_raw_fd());
        }
        // Entered: the new user namespace is a child of the thread's, where the caller
        // is root (0).
        let maps = match entered {
            true => IdMaps::between(inside_ids(), (0, 0)),
            false => IdMaps::new(),
        };
        Ok(Plan {
            entered,
            maps,
            root: cstring(&root_dir)?,
            ops,
            cwd: cstring(&jail.cwd)?,
            program,
            _argv: argv_c,
            argv,
            _env: env_c,
            envp,
            output: jail.output,
            devnull,
            landlock: jail.landlock,
            limits: jail.limits,
            keep,
        })
    }
}

/// Starts `jail`'s program in fresh namespaces; `scratch` is an empty directory of the
/// caller's for the new root's mount point. Returns once the program runs.
pub fn spawn(jail: Jail, scratch: &Path) -> Result<Jailed, SetupError> {
    match jail.network {
        Network::Thread => {
            THREAD_NET.with(
                |net| match net.get_or_init(|| ThreadNet::new().ok()).as_ref() {
                    Some(net) => spawn_with(jail, scratch, Some(net)),
                    None => spawn_with(jail, scratch, None),
                },
            )
        }
        Network::Own => spawn_with(jail, scratch, None),
    }
}

fn spawn_with(jail: Jail, scratch: &Path, net: Option<&ThreadNet>) -> Result<Jailed, SetupError> {
    let mut plan = Plan::new(jail, scratch, net.is_some())
        .map_err(|e| setup_error("preparing the root", e))?;
    let (read, write) = error_pipe().map_err(|e| setup_error("pipe", e))?;
    plan.keep.push(write.as_raw_fd());
    plan.keep.sort_unstable();
    let started = match net {
        Some(net) => start_entering(&plan, write.as_raw_fd(), net),
        None => start_own(&plan, write.as_raw_fd()),
    };
    let pid = started.map_err(|source| SetupError {
        stage: stage_name(S_USERNS),
        detail: None,
        source,
    })?;
    drop(write);
    let jailed = Jailed { pid };
    let failure = match read_failure(read) {
        // E ended without starting P and without a word: never expected.
        None if pid <= 0 => Some((0, libc::ECHILD)),
        failure => failure,
    };
    if let Some((stage, errno)) = failure {
        if pid > 0 {
            let _ = jailed.wait();
        }
        let (stage, op) = (stage & 0xff, stage >> 8);
        return Err(SetupError {
            stage: stage_name(stage),
            detail: mount_detail(&plan, op),
            source: io::Error::from_raw_os_error(errno),
        });
    }
    Ok(jailed)
}

/// P in new namespaces of every kind, its network's among them.
fn start_own(plan: &Plan, pipe: RawFd) -> io::Result<libc::pid_t> {
    let stack = ChildStack::new()?;
    // One process in every new namespace at once, pid 1 of its pid namespace: it writes
    // its own id maps, builds the root and becomes the program. It shares cascade's
    // memory (CLONE_VM) and this thread waits until it has called execve or exited
    // (CLONE_VFORK), the way posix_spawn works: no page table is copied and no page of
    // cascade's is copied on write, whatever the size of the graph cascade holds.
    let flags = libc::CLONE_VM
        | libc::CLONE_VFORK
        | libc::CLONE_NEWUSER
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWNET
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS
        | libc::SIGCHLD;
    let mut args = ChildArgs { plan, pipe };
    // SAFETY: the child runs `child_main` on its own stack, calls only system calls on
    // `plan` (prepared before, not touched by this thread while it is suspended) and
    // ends in execve or _exit (see the module's header). `args` outlives the call.
    unsafe {
        clone_blocked(
            child_main,
            &stack,
            flags,
            (&mut args as *mut ChildArgs).cast(),
        )
    }
}

/// `clone` of a child that runs `main(arg)` on `stack`, sharing this memory. Signals
/// stay blocked in the child until it has reset every handler (a handler of cascade's
/// must never run on the shared memory), and here until it is gone.
///
/// # Safety
/// `main` makes only system calls on memory prepared before and ends in execve or
/// _exit; `arg` outlives the call (`flags` holds CLONE_VFORK).
unsafe fn clone_blocked(
    main: extern "C" fn(*mut libc::c_void) -> libc::c_int,
    stack: &ChildStack,
    flags: libc::c_int,
    arg: *mut libc::c_void,
) -> io::Result<libc::pid_t> {
    let saved = block_signals();
    let pid = libc::clone(main, stack.top(), flags, arg);
    let clone_error = io::Error::last_os_error();
    restore_signals(&saved);
    match pid {
        p if p < 0 => Err(clone_error),
        p => Ok(p),
    }
}

/// P in the thread's user and network namespaces, and new ones of every other kind: E
/// (sharing cascade's memory, like P) enters the thread's namespaces, makes the others,
/// writes the maps, then starts P as cascade's child (CLONE_PARENT), pid 1 of the new
/// pid namespace, and exits once P has called execve. Returns P.
fn start_entering(plan: &Plan, pipe: RawFd, net: &ThreadNet) -> io::Result<libc::pid_t> {
    let (stack, p_stack) = (ChildStack::new()?, ChildStack::new()?);
    let (user, net) = (net.user.as_raw_fd(), net.net.as_raw_fd());
    let mut keep = plan.keep.clone();
    keep.extend([user, net]);
    keep.sort_unstable();
    let mut args = EnterArgs {
        plan,
        pipe,
        user,
        net,
        keep: &keep,
        p_stack: p_stack.top(),
        p: 0,
    };
    // SAFETY: as in `start_own`; E runs `entering_main` on its own stack and P on
    // another, both only system calls on prepared memory; `args` outlives both.
    let e = unsafe {
        clone_blocked(
            entering_main,
            &stack,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            (&mut args as *mut EnterArgs).cast(),
        )
    }?;
    // E has exited (its report, if any, is in the pipe); P, if started, is ours.
    let _ = wait_status(e);
    Ok(args.p)
}

/// What E gets: P's plan, the thread's namespaces and P's stack; E leaves P's pid.
struct EnterArgs<'a> {
    plan: &'a Plan,
    pipe: RawFd,
    user: RawFd,
    net: RawFd,
    /// What E keeps open (sorted): P's descriptors and the namespaces.
    keep: &'a [RawFd],
    p_stack: *mut libc::c_void,
    p: libc::pid_t,
}

extern "C" fn entering_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `EnterArgs` of `start_entering`, alive while it is suspended.
    let args = unsafe { &mut *(arg as *mut EnterArgs) };
    match enter_and_start(args) {
        Ok(p) => {
            args.p = p;
            // SAFETY: _exit is async-signal-safe.
            unsafe { libc::_exit(0) }
        }
        Err(e) => child_exit(args.pipe, Err(e)),
    }
}

fn enter_and_start(args: &EnterArgs) -> Result<libc::pid_t, (u32, rustix::io::Errno)> {
    // First: E lives until P's execve, and a copy of another thread's descriptor (a
    // store's lock) must not outlive that thread's own close meanwhile.
    close_others(args.keep);
    enter_thread_net(args.user, args.net)?;
    args.plan.maps.write_own()?;
    let mut child = ChildArgs {
        plan: args.plan,
        pipe: args.pipe,
    };
    // SAFETY: as in `start_own`: P shares the memory, runs on its own stack and ends in
    // execve or _exit; E waits for that (CLONE_VFORK).
    let p = unsafe {
        libc::clone(
            child_main,
            args.p_stack,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PARENT,
            (&mut child as *mut ChildArgs).cast(),
        )
    };
    match p {
        p if p < 0 => Err((S_FORK, rustix::io::Errno::from_raw_os_error(errno()))),
        p => Ok(p),
    }
}

/// Enters the thread's user and network namespaces and makes the others (for P, the
/// pid namespace of the next child).
fn enter_thread_net(user: RawFd, net: RawFd) -> Result<(), (u32, rustix::io::Errno)> {
    // SAFETY: plain system calls on descriptors prepared before the clone.
    unsafe {
        if libc::setns(user, libc::CLONE_NEWUSER) != 0 || libc::setns(net, libc::CLONE_NEWNET) != 0
        {
            return Err((S_SETNS, rustix::io::Errno::from_raw_os_error(errno())));
        }
        let flags = libc::CLONE_NEWUSER
            | libc::CLONE_NEWNS
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWUTS;
        if libc::unshare(flags) != 0 {
            return Err((S_UNSHARE, rustix::io::Errno::from_raw_os_error(errno())));
        }
    }
    Ok(())
}

thread_local! {
    /// The thread's network namespace ([`Network::Thread`]); `None` where the kernel
    /// refused it.
    static THREAD_NET: std::cell::OnceCell<Option<ThreadNet>> = const { std::cell::OnceCell::new() };
}

/// A user namespace in which the caller is root, and a network namespace it owns with
/// loopback up, kept by their descriptors (no process lives in them between steps).
struct ThreadNet {
    user: OwnedFd,
    net: OwnedFd,
}

impl ThreadNet {
    fn new() -> io::Result<ThreadNet> {
        let outer = (
            rustix::process::geteuid().as_raw(),
            rustix::process::getegid().as_raw(),
        );
        let maps = IdMaps::between((0, 0), outer);
        let stack = ChildStack::new()?;
        let (read, write) = error_pipe()?;
        let mut args = NetArgs {
            maps: &maps,
            pipe: write.as_raw_fd(),
            fds: None,
        };
        // CLONE_FILES: the descriptors the child opens are this process's.
        let flags = libc::CLONE_VM
            | libc::CLONE_VFORK
            | libc::CLONE_FILES
            | libc::CLONE_NEWUSER
            | libc::CLONE_NEWNET
            | libc::SIGCHLD;
        // SAFETY: as in `start_own`; the child ends in _exit.
        let pid =
            unsafe { clone_blocked(net_main, &stack, flags, (&mut args as *mut NetArgs).cast()) }?;
        let _ = wait_status(pid);
        drop(write);
        if let Some((_, errno)) = read_failure(read) {
            return Err(io::Error::from_raw_os_error(errno));
        }
        let net = match args.fds {
            // SAFETY: opened by the child in this process's descriptor table, owned by
            // nothing else.
            Some((user, net)) => unsafe {
                ThreadNet {
                    user: OwnedFd::from_raw_fd(user),
                    net: OwnedFd::from_raw_fd(net),
                }
            },
            None => return Err(io::Error::other("no namespace descriptors")),
        };
        net.probe()?;
        Ok(net)
    }

    /// Whether a child may enter these namespaces and make the others (a seccomp
    /// policy may forbid `setns`): asked once, so that a refusal means the thread's
    /// steps get networks of their own instead of failing.
    fn probe(&self) -> io::Result<()> {
        let stack = ChildStack::new()?;
        let (read, write) = error_pipe()?;
        let mut keep = vec![
            self.user.as_raw_fd(),
            self.net.as_raw_fd(),
            write.as_raw_fd(),
        ];
        keep.sort_unstable();
        let mut args = ProbeArgs {
            user: self.user.as_raw_fd(),
            net: self.net.as_raw_fd(),
            pipe: write.as_raw_fd(),
            keep: &keep,
        };
        // SAFETY: as in `start_own`; the child ends in _exit.
        let pid = unsafe {
            clone_blocked(
                probe_main,
                &stack,
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                (&mut args as *mut ProbeArgs).cast(),
            )
        }?;
        let _ = wait_status(pid);
        drop(write);
        match read_failure(read) {
            Some((_, errno)) => Err(io::Error::from_raw_os_error(errno)),
            None => Ok(()),
        }
    }
}

struct ProbeArgs<'a> {
    user: RawFd,
    net: RawFd,
    pipe: RawFd,
    keep: &'a [RawFd],
}

extern "C" fn probe_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `ProbeArgs` of `ThreadNet::probe`, alive while it is suspended.
    let args = unsafe { &*(arg as *const ProbeArgs) };
    close_others(args.keep);
    child_exit(args.pipe, enter_thread_net(args.user, args.net))
}

struct NetArgs<'a> {
    maps: &'a IdMaps,
    pipe: RawFd,
    fds: Option<(RawFd, RawFd)>,
}

extern "C" fn net_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `NetArgs` of `ThreadNet::new`, alive while it is suspended.
    let args = unsafe { &mut *(arg as *mut NetArgs) };
    let made = (|| {
        args.maps.write_own()?;
        loopback_up().map_err(|e| (S_LOOPBACK, e))?;
        // Closed connections leave no TIME_WAIT and TCP learns nothing across steps
        // (these paths name the opener's network namespace: this one).
        let sysctl = |path: &CStr, value: &[u8]| write_file(path, value).map_err(|e| (S_NETNS, e));
        sysctl(c"/proc/sys/net/ipv4/tcp_max_tw_buckets", b"0")?;
        sysctl(c"/proc/sys/net/ipv4/tcp_no_metrics_save", b"1")?;
        let user = open_ns(c"/proc/self/ns/user")?;
        let net = open_ns(c"/proc/self/ns/net")?;
        Ok((
            std::os::fd::IntoRawFd::into_raw_fd(user),
            std::os::fd::IntoRawFd::into_raw_fd(net),
        ))
    })();
    match made {
        Ok(fds) => {
            args.fds = Some(fds);
            // SAFETY: _exit is async-signal-safe.
            unsafe { libc::_exit(0) }
        }
        Err(e) => child_exit(args.pipe, Err(e)),
    }
}

/// What `clone` hands the child.
struct ChildArgs<'a> {
    plan: &'a Plan,
    pipe: RawFd,
}

extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `ChildArgs` that `spawn` passed, alive while it is suspended.
    let args = unsafe { &*(arg as *const ChildArgs) };
    inside(args.plan, args.pipe)
}

/// The stack of a child that shares cascade's memory: mapped for it, with a guard page
/// below, unmapped once the child has left it (execve or exit).
struct ChildStack {
    base: *mut libc::c_void,
    len: usize,
}

impl ChildStack {
    const LEN: usize = 256 * 1024;

    fn new() -> io::Result<ChildStack> {
        // SAFETY: a fresh anonymous private mapping; nothing else refers to it.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                Self::LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let stack = ChildStack {
            base,
            len: Self::LEN,
        };
        // SAFETY: the lowest page of our own mapping becomes the guard.
        if unsafe { libc::mprotect(base, 4096, libc::PROT_NONE) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stack)
    }

    fn top(&self) -> *mut libc::c_void {
        // SAFETY: one past the end of our own mapping; stacks grow down.
        unsafe { self.base.cast::<u8>().add(self.len).cast() }
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: our own mapping, no longer used (the child has exec'd or exited).
        unsafe {
            libc::munmap(self.base, self.len);
        }
    }
}

/// Blocks every signal of this thread; returns the mask to restore.
fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; pthread_sigmask writes `old`.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        old
    }
}

fn restore_signals(saved: &libc::sigset_t) {
    // SAFETY: as above.
    unsafe {
        libc::pthread_sigmask(libc::SIG_SETMASK, saved, std::ptr::null_mut());
    }
}

/// The mount point of op `op` (counted from 1; 0 for a failure that is not an op's), for
/// the message (see `build_root`).
fn mount_detail(plan: &Plan, op: u32) -> Option<String> {
    let index = (op as usize).checked_sub(1)?;
    plan.ops.get(index).map(|o| {
        o.target()
            .to_string_lossy()
            .replace(&*plan.root.to_string_lossy(), "")
    })
}

/// Closes every descriptor but `keep` (sorted) and 0–2.
fn close_others(keep: &[RawFd]) {
    let mut from: u32 = 3;
    for &k in keep {
        let k = k as u32;
        if k >= from {
            if k > from {
                // SAFETY: close_range only closes descriptors.
                unsafe {
                    libc::syscall(libc::SYS_close_range, from, k - 1, 0u32);
                }
            }
            from = k + 1;
        }
    }
    // SAFETY: as above.
    unsafe {
        libc::syscall(libc::SYS_close_range, from, u32::MAX, 0u32);
    }
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// The child of [`spawn`], in its new namespaces: waits for its id maps, builds the
/// root, pivots into it, drops every privilege and becomes the program.
fn inside(plan: &Plan, pipe: RawFd) -> ! {
    let r = (|| {
        // SAFETY (all below): plain system calls on prepared memory.
        unsafe {
            // Every handler back to its default while signals are still blocked: the
            // handlers are cascade's, and this process shares cascade's memory.
            for sig in 1..=libc::SIGRTMAX() {
                libc::signal(sig, libc::SIG_DFL);
            }
            libc::setpgid(0, 0);
            // Dies with the thread that started it (cascade killed, or its thread gone).
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            // cascade's memory (its environment among it) until it execs: not dumpable,
            // so nothing can read its /proc entries meanwhile.
            libc::prctl(libc::PR_SET_DUMPABLE, 0);
            libc::dup2(plan.devnull.as_raw_fd(), 0);
            libc::dup2(plan.output.as_raw_fd(), 1);
            libc::dup2(plan.output.as_raw_fd(), 2);
        }
        close_others(&plan.keep);
        // Its own maps: one line each, the caller's ids, which a process may write for
        // its own new user namespace (entered: written before P started).
        if !plan.entered {
            plan.maps.write_own()?;
        }
        build_root(plan)?;
        let limit = |resource, value: u64| {
            rustix::process::setrlimit(
                resource,
                rustix::process::Rlimit {
                    current: Some(value),
                    maximum: Some(value),
                },
            )
            .map_err(|e| (S_LIMITS, e))
        };
        limit(rustix::process::Resource::Data, plan.limits.data)?;
        limit(rustix::process::Resource::Nproc, plan.limits.processes)?;
        drop_privileges(plan.landlock.as_ref().map(|l| l.as_raw_fd())).map_err(|e| (S_PRIVS, e))?;
        // SAFETY: umask, signal dispositions and the mask, reset for the program (Rust ignores
        // SIGPIPE, and an ignored signal stays ignored across execve).
        unsafe {
            libc::umask(0o022);
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            libc::execve(
                plan.program.as_ptr(),
                plan.argv.as_ptr(),
                plan.envp.as_ptr(),
            );
        }
        Err((S_EXEC, rustix::io::Errno::from_raw_os_error(errno())))
    })();
    child_exit(pipe, r)
}

/// The new root: a tmpfs with the root's entries bound read-only, the binds, `/dev`,
/// `/proc`, loopback up, then `pivot_root` into it.
fn build_root(plan: &Plan) -> Result<(), (u32, rustix::io::Errno)> {
    rustix::mount::mount_change(
        c"/",
        MountPropagationFlags::REC | MountPropagationFlags::PRIVATE,
    )
    .map_err(|e| (S_MOUNT, e))?;
    for (i, op) in plan.ops.iter().enumerate() {
        // The op's number (from 1) rides above the stage's byte, so the parent can name
        // its mount point (an errno has no room: rustix keeps 16 bits of it).
        mount_op(op).map_err(|e| (S_MOUNT | ((i as u32 + 1) << 8), e))?;
    }
    let _ = rustix::system::sethostname(b"cascade");
    if !plan.entered {
        loopback_up().map_err(|e| (S_LOOPBACK, e))?;
    }
    rustix::mount::mount_remount(
        plan.root.as_c_str(),
        MountFlags::BIND | MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV,
        c"",
    )
    .map_err(|e| (S_MOUNT, e))?;
    rustix::process::chdir(plan.root.as_c_str()).map_err(|e| (S_PIVOT, e))?;
    rustix::process::pivot_root(c".", c".").map_err(|e| (S_PIVOT, e))?;
    rustix::mount::unmount(c".", UnmountFlags::DETACH).map_err(|e| (S_PIVOT, e))?;
    rustix::process::chdir(plan.cwd.as_c_str()).map_err(|e| (S_PIVOT, e))?;
    Ok(())
}

fn mount_op(op: &Op) -> Result<(), rustix::io::Errno> {
    match op {
        Op::Dir(p) => match rustix::fs::mkdir(p.as_c_str(), Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => Ok(()),
            Err(e) => Err(e),
        },
        Op::File(p) => {
            match rustix::fs::open(
                p.as_c_str(),
                OFlags::CREATE | OFlags::WRONLY | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o644),
            ) {
                Ok(_) => Ok(()),
                Err(e) => Err(e),
            }
        }
        Op::Symlink { link, path } => rustix::fs::symlink(link.as_c_str(), path.as_c_str()),
        Op::Tmpfs { target, data } => rustix::mount::mount(
            c"tmpfs",
            target.as_c_str(),
            c"tmpfs",
            MountFlags::NOSUID | MountFlags::NODEV,
            data.as_c_str(),
        ),
        Op::Proc(target) => rustix::mount::mount(
            c"proc",
            target.as_c_str(),
            c"proc",
            MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
            None,
        ),
        Op::Bind {
            source,
            target,
            writable,
        } => {
            // A detached recursive copy, made read-only as a whole (mount_setattr), then
            // attached: submounts are read-only too, which a plain remount misses.
            let tree = rustix::mount::open_tree(
                CWD,
                source.as_c_str(),
                OpenTreeFlags::OPEN_TREE_CLONE
                    | OpenTreeFlags::OPEN_TREE_CLOEXEC
                    | OpenTreeFlags::AT_RECURSIVE,
            )?;
            // Writable binds are the work dir, /tmp and the devices: no `nodev` there.
            let mut attr = MountAttr {
                attr_set: MOUNT_ATTR_NOSUID,
                attr_clr: 0,
                propagation: 0,
                userns_fd: 0,
            };
            if !writable {
                attr.attr_set |= MOUNT_ATTR_RDONLY | MOUNT_ATTR_NODEV;
            }
            // SAFETY: mount_setattr reads `attr`, whose size is passed with it.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_mount_setattr,
                    tree.as_raw_fd(),
                    c"".as_ptr(),
                    libc::AT_EMPTY_PATH | AT_RECURSIVE,
                    &attr as *const MountAttr,
                    std::mem::size_of::<MountAttr>(),
                )
            };
            if r < 0 {
                return Err(rustix::io::Errno::from_raw_os_error(errno()));
            }
            rustix::mount::move_mount(
                &tree,
                c"",
                CWD,
                target.as_c_str(),
                MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
            )
        }
    }
}

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const AT_RECURSIVE: libc::c_int = 0x8000;

/// Brings `lo` up in the new network namespace: 127.0.0.1 works inside, and reaches
/// nothing outside.
fn loopback_up() -> Result<(), rustix::io::Errno> {
    // SAFETY: socket/ioctl on a stack `ifreq` that lives across both calls.
    unsafe {
        let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if s < 0 {
            return Err(rustix::io::Errno::from_raw_os_error(errno()));
        }
        let s = OwnedFd::from_raw_fd(s);
        let mut req: libc::ifreq = std::mem::zeroed();
        req.ifr_name[0] = b'l' as libc::c_char;
        req.ifr_name[1] = b'o' as libc::c_char;
        if libc::ioctl(s.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(rustix::io::Errno::from_raw_os_error(errno()));
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(s.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(rustix::io::Errno::from_raw_os_error(errno()));
        }
    }
    Ok(())
}

/// no_new_privs, Landlock (when given), then no capability in any set.
fn drop_privileges(landlock: Option<RawFd>) -> Result<(), rustix::io::Errno> {
    rustix::thread::set_no_new_privs(true)?;
    if let Some(fd) = landlock {
        // SAFETY: landlock_restrict_self takes a ruleset descriptor and flags.
        let r = unsafe { libc::syscall(libc::SYS_landlock_restrict_self, fd, 0u32) };
        if r < 0 {
            return Err(rustix::io::Errno::from_raw_os_error(errno()));
        }
    }
    for cap in 0..64 {
        // SAFETY: plain prctl; EINVAL past the last capability is expected.
        unsafe {
            libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0);
        }
    }
    // SAFETY: plain prctl.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        );
    }
    let none = rustix::thread::CapabilitySet::empty();
    rustix::thread::set_capabilities(
        None,
        rustix::thread::CapabilitySets {
            effective: none,
            permitted: none,
            inheritable: none,
        },
    )
}

/// A TCP connection to `127.0.0.1:port` inside the network namespace of a running
/// sandbox (P's), made by a child that enters it and hands the socket back.
pub fn connect_inside(jailed: &Jailed, port: u16) -> io::Result<std::net::TcpStream> {
    let user = cstring(format!("/proc/{}/ns/user", jailed.pid))?;
    let net = cstring(format!("/proc/{}/ns/net", jailed.pid))?;
    let (ours, theirs) = rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::STREAM,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )?;
    let (read, write) = error_pipe()?;
    // SAFETY: the child runs system calls on the prepared paths and sockets only.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        let w = write.as_raw_fd();
        let r = (|| {
            // Opened before entering any: once in the sandbox's user namespace, its
            // /proc entries of the sandbox's processes are out of reach.
            let (user, net) = (open_ns(&user)?, open_ns(&net)?);
            enter(&user, rustix::thread::LinkNameSpaceType::User)?;
            enter(&net, rustix::thread::LinkNameSpaceType::Network)?;
            // SAFETY: a socket, a connect from a stack address, and sendmsg of its
            // descriptor over the pair, from stack buffers.
            unsafe {
                let s = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
                if s < 0 {
                    return Err((S_CONNECT, rustix::io::Errno::from_raw_os_error(errno())));
                }
                let mut addr: libc::sockaddr_in = std::mem::zeroed();
                addr.sin_family = libc::AF_INET as libc::sa_family_t;
                addr.sin_port = port.to_be();
                addr.sin_addr.s_addr = u32::from_be_bytes([127, 0, 0, 1]).to_be();
                if libc::connect(
                    s,
                    (&addr as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                ) < 0
                {
                    return Err((S_CONNECT, rustix::io::Errno::from_raw_os_error(errno())));
                }
                send_fd(theirs.as_raw_fd(), s).map_err(|e| (S_CONNECT, e))
            }
        })();
        child_exit(w, r);
    }
    drop(write);
    drop(theirs);
    let failure = read_failure(read);
    let _ = wait_status(pid);
    if let Some((stage, errno)) = failure {
        let e = io::Error::from_raw_os_error(errno);
        return Err(if stage == S_CONNECT {
            e
        } else {
            io::Error::new(e.kind(), format!("{}: {e}", stage_name(stage)))
        });
    }
    let fd = recv_fd(ours.as_raw_fd())?;
    Ok(std::net::TcpStream::from(fd))
}

fn open_ns(path: &CStr) -> Result<OwnedFd, (u32, rustix::io::Errno)> {
    rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| (S_SETNS, e))
}

fn enter(
    fd: &OwnedFd,
    kind: rustix::thread::LinkNameSpaceType,
) -> Result<(), (u32, rustix::io::Errno)> {
    rustix::thread::move_into_link_name_space(rustix::fd::AsFd::as_fd(fd), Some(kind))
        .map_err(|e| (S_SETNS, e))
}

/// Sends `fd` over a unix socket (SCM_RIGHTS), from stack buffers only.
///
/// # Safety
/// `sock` and `fd` must be open descriptors.
unsafe fn send_fd(sock: RawFd, fd: RawFd) -> Result<(), rustix::io::Errno> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut control = [0u8; 64];
    let mut msg: libc::msghdr = std::mem::zeroed();
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) as _;
    let cmsg = libc::CMSG_FIRSTHDR(&msg);
    (*cmsg).cmsg_level = libc::SOL_SOCKET;
    (*cmsg).cmsg_type = libc::SCM_RIGHTS;
    (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
    std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd);
    if libc::sendmsg(sock, &msg, 0) < 0 {
        return Err(rustix::io::Errno::from_raw_os_error(errno()));
    }
    Ok(())
}

fn recv_fd(sock: RawFd) -> io::Result<OwnedFd> {
    let mut byte = [0u8; 1];
    let mut control = [0u8; 64];
    // SAFETY: recvmsg into stack buffers described by `msg`; the descriptor read from
    // the control message is new to this process, so we own it.
    unsafe {
        let mut iov = libc::iovec {
            iov_base: byte.as_mut_ptr().cast(),
            iov_len: 1,
        };
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = control.len() as _;
        if libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) < 0 {
            return Err(io::Error::last_os_error());
        }
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null() || (*cmsg).cmsg_type != libc::SCM_RIGHTS {
            return Err(io::Error::other("no descriptor came back from the sandbox"));
        }
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>());
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// Starts `argv` inside a running sandbox (its user, mount, network and pid namespaces,
/// as the same inside user, no capabilities), with stdout into `stdout`, stderr into
/// `stderr`; the handle's status is the command's. For smoke tests' command probes.
pub fn exec_inside(
    jailed: &Jailed,
    argv: &[String],
    env: &[String],
    stdout: OwnedFd,
    stderr: OwnedFd,
) -> io::Result<Jailed> {
    let ns = |kind: &str| cstring(format!("/proc/{}/ns/{kind}", jailed.pid));
    let (user, mnt, net, pid_ns) = (ns("user")?, ns("mnt")?, ns("net")?, ns("pid_for_children")?);
    let argv_c = argv.iter().map(cstring).collect::<io::Result<Vec<_>>>()?;
    let env_c = env.iter().map(cstring).collect::<io::Result<Vec<_>>>()?;
    let program = argv_c
        .first()
        .cloned()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no program"))?;
    let mut argv_p: Vec<*const libc::c_char> = argv_c.iter().map(|c| c.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let mut env_p: Vec<*const libc::c_char> = env_c.iter().map(|c| c.as_ptr()).collect();
    env_p.push(std::ptr::null());
    let devnull: OwnedFd = fs::File::open("/dev/null")?.into();
    let (read, write) = error_pipe()?;
    let mut keep = vec![
        stdout.as_raw_fd(),
        stderr.as_raw_fd(),
        devnull.as_raw_fd(),
        write.as_raw_fd(),
    ];
    keep.sort_unstable();
    // SAFETY: the child runs system calls on the memory prepared above.
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(io::Error::last_os_error());
    }
    if child == 0 {
        let w = write.as_raw_fd();
        let r = (|| {
            // SAFETY: plain system calls.
            unsafe {
                libc::setpgid(0, 0);
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                libc::dup2(devnull.as_raw_fd(), 0);
                libc::dup2(stdout.as_raw_fd(), 1);
                libc::dup2(stderr.as_raw_fd(), 2);
            }
            close_others(&keep);
            // All opened before entering any (see `connect_inside`).
            let (user, mnt) = (open_ns(&user)?, open_ns(&mnt)?);
            let (net, pid_ns) = (open_ns(&net)?, open_ns(&pid_ns)?);
            enter(&user, rustix::thread::LinkNameSpaceType::User)?;
            enter(&mnt, rustix::thread::LinkNameSpaceType::Mount)?;
            enter(&net, rustix::thread::LinkNameSpaceType::Network)?;
            enter(&pid_ns, rustix::thread::LinkNameSpaceType::ProcessID)?;
            // SAFETY: see the module's header.
            let pid = unsafe { libc::fork() };
            if pid < 0 {
                return Err((S_FORK, rustix::io::Errno::from_raw_os_error(errno())));
            }
            if pid == 0 {
                let r = (|| {
                    rustix::process::chdir(c"/").map_err(|e| (S_PIVOT, e))?;
                    drop_privileges(None).map_err(|e| (S_PRIVS, e))?;
                    // SAFETY: execve on prepared, NUL-terminated arrays.
                    unsafe {
                        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
                        libc::execve(program.as_ptr(), argv_p.as_ptr(), env_p.as_ptr());
                    }
                    Err((S_EXEC, rustix::io::Errno::from_raw_os_error(errno())))
                })();
                child_exit(w, r);
            }
            // SAFETY: closing our copy of the report pipe.
            unsafe {
                libc::close(w);
            }
            let code = wait_status(pid).unwrap_or(127);
            // SAFETY: _exit is async-signal-safe.
            unsafe { libc::_exit(code) }
        })();
        child_exit(w, r);
    }
    drop(write);
    drop(stdout);
    drop(stderr);
    if let Some((stage, errno)) = read_failure(read) {
        let _ = wait_status(child);
        let e = io::Error::from_raw_os_error(errno);
        return Err(io::Error::new(
            e.kind(),
            format!("{}: {e}", stage_name(stage)),
        ));
    }
    Ok(Jailed { pid: child })
}
