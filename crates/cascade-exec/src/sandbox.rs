//! The sandbox runner: every step of a node in fresh Linux namespaces ([`namespace`]),
//! cascade's embedded default, no daemon.
//!
//! What a step sees:
//! - a root filesystem that is either the host's (read-only, without its `/proc`,
//!   `/sys`, `/dev`, `/tmp`, `/run` and `/work`), with the declared tools on `PATH`
//!   (`/.cascade/tools`), or an unpacked image (read-only), with its config's
//!   environment;
//! - `/work`, the work directory, writable, with the entries the caller names (the
//!   source's, `inputs/`) mounted read-only over themselves; `HOME=/work`;
//! - `/tmp`, a directory of its own (`TMPDIR` on host roots);
//! - its own `/proc` and pid namespace, a minimal `/dev`, a network namespace with only
//!   loopback, a uid and gid that are not root, no capabilities, `no_new_privs`;
//! - Landlock over the same writable places, where the kernel has it (a second wall).
//!
//! When a step ends, or its timeout fires, its pid namespace ends with it.
//!
//! [`namespace`]: crate::namespace

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::host::{setup, wait_step, Commands, Ended};
use crate::namespace::{self, Bind, Jail, Limits, Root};
use crate::{interrupted, ResolvedTool, RunError};

/// The memory and process limits of a sandboxed step (the container runner's too).
pub const LIMITS: Limits = Limits {
    data: 4 << 30,
    processes: 4096,
};

/// Where the declared tools of a host root are, inside.
const TOOLS_INSIDE: &str = "/.cascade/tools";

/// What a sandboxed step's root filesystem is.
pub enum RootFs<'a> {
    /// The host's filesystem, read-only, with the declared tools on `PATH`.
    Host { tools: &'a [ResolvedTool] },
    /// An unpacked image, read-only, and its config's `Env` (`NAME=value`).
    Image { rootfs: &'a Path, env: &'a [String] },
}

/// Where a tool at `path` (absolute) is hidden by the sandbox, the directory to bind so
/// it is found: the entry below the hidden top-level directory (below the user's
/// directory for `/home`), or the tool's own file when it sits right there.
fn hidden_home_of(path: &Path) -> Option<PathBuf> {
    let parts: Vec<&std::ffi::OsStr> = path
        .components()
        .filter_map(|c| match c {
            std::path::Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect();
    let top = parts.first()?.to_str()?;
    if !namespace::HIDDEN.contains(&top) || matches!(top, "proc" | "sys" | "dev") {
        return None;
    }
    let depth = if top == "home" { 3 } else { 2 };
    let keep = depth.min(parts.len());
    Some(
        parts[..keep]
            .iter()
            .fold(PathBuf::from("/"), |p, c| p.join(c)),
    )
}

/// One node's steps in the sandbox.
pub struct SandboxRun<'a> {
    /// The work directory: exported source and materialized inputs; `/work` inside.
    pub work: &'a Path,
    /// An empty directory outside `work` for the tools' links, `/tmp` and the root's
    /// mount point.
    pub scratch: &'a Path,
    pub root: RootFs<'a>,
    /// Entries of `work` mounted read-only over themselves.
    pub read_only: &'a [String],
    pub commands: Commands<'a>,
}

impl SandboxRun<'_> {
    pub fn run(&self) -> Result<(), RunError> {
        namespace::available().map_err(|e| RunError::Setup {
            what: "start the sandbox".into(),
            source: std::io::Error::other(format!("{e}; {}", namespace::Refused::HELP)),
        })?;
        // 1. What every step sees: the binds, the root and the environment.
        let temp = self.scratch.join("tmp");
        fs::create_dir_all(&temp).map_err(setup("create the step's /tmp"))?;
        // The escape hatch for watching steps from outside (tests): one directory bound
        // writable at its own path. Never set it for real builds.
        let share = std::env::var_os("CASCADE_SANDBOX_SHARE")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute() && p.is_dir());
        let mut binds = self.binds(&temp, share.as_deref());
        let (root, sh, env) = self.root(&mut binds)?;
        // 2. The log's header, then each step in a sandbox of its own.
        let mut log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.commands.log)
            .map_err(setup("open the log"))?;
        let landlock = crate::landlock::available();
        if !self.commands.quiet {
            writeln!(
            log,
            "==> sandbox: namespaces (user, mount, pid, network, ipc, uts); limits by rlimit (data {} GiB, {} processes; cgroups not used); landlock {}",
            LIMITS.data >> 30,
            LIMITS.processes,
            if landlock { "on" } else { "unavailable on this kernel" }
            )
            .map_err(setup("write the log"))?;
        }
        let writable: Vec<&Path> = [self.work, temp.as_path()]
            .into_iter()
            .chain(share.as_deref())
            .collect();
        for step in self.commands.steps {
            if interrupted() {
                return Err(RunError::Interrupted);
            }
            if !self.commands.quiet {
                writeln!(log, "==> step {}", step.name).map_err(setup("write the log"))?;
            }
            let ruleset = landlock_ruleset(&writable).map_err(|e| {
                setup(format!("sandbox step `{}`", step.name))(std::io::Error::other(e))
            })?;
            let output = log.try_clone().map_err(setup("open the log"))?;
            let jail = Jail {
                root: root.clone(),
                binds: binds.clone(),
                cwd: "/work".into(),
                argv: vec![sh.clone(), "-e".into(), "-c".into(), step.run.clone()],
                env: env.clone(),
                output: output.into(),
                landlock: ruleset,
                limits: LIMITS,
                network: namespace::Network::Thread,
            };
            let jailed = namespace::spawn(jail, self.scratch).map_err(|e| RunError::Setup {
                what: format!("start step `{}` in the sandbox", step.name),
                source: std::io::Error::other(e.to_string()),
            })?;
            let pid = jailed.pid;
            wait_step(
                pid,
                move || namespace::Jailed { pid }.wait().map(Ended::Code),
                &self.commands,
                step,
                &mut log,
            )?;
        }
        Ok(())
    }

    /// The work directory, `/tmp`, the shared directory (tests) and the read-only entries
    /// of the work directory.
    fn binds(&self, temp: &Path, share: Option<&Path>) -> Vec<Bind> {
        let mut binds = vec![
            Bind {
                source: self.work.to_path_buf(),
                target: "/work".into(),
                writable: true,
            },
            Bind {
                source: temp.to_path_buf(),
                target: "/tmp".into(),
                writable: true,
            },
        ];
        if let Some(p) = share {
            binds.push(Bind {
                source: p.to_path_buf(),
                target: p.display().to_string(),
                writable: true,
            });
        }
        for e in self.read_only {
            binds.push(Bind {
                source: self.work.join(e),
                target: format!("/work/{e}"),
                writable: false,
            });
        }
        binds
    }

    /// The root, the shell and the environment (`NAME=value`, sorted): the host's root
    /// with the declared tools linked in (and their hidden homes bound), or the image's.
    fn root(&self, binds: &mut Vec<Bind>) -> Result<(Root, String, Vec<String>), RunError> {
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        let (root, sh) = match &self.root {
            RootFs::Host { tools } => {
                let tools_dir = self.scratch.join("tools");
                fs::create_dir_all(&tools_dir).map_err(setup("create the tools directory"))?;
                for t in *tools {
                    let _ = fs::remove_file(tools_dir.join(&t.name)); // a second run
                    std::os::unix::fs::symlink(&t.path, tools_dir.join(&t.name))
                        .map_err(setup(format!("link tool `{}`", t.name)))?;
                }
                binds.push(Bind {
                    source: tools_dir,
                    target: TOOLS_INSIDE.into(),
                    writable: false,
                });
                binds.extend(hidden_homes(tools));
                env.insert("PATH".into(), TOOLS_INSIDE.into());
                env.insert("TMPDIR".into(), "/tmp".into());
                (Root::Host, format!("{TOOLS_INSIDE}/sh"))
            }
            RootFs::Image {
                rootfs,
                env: image_env,
            } => {
                for kv in *image_env {
                    if let Some((k, v)) = kv.split_once('=') {
                        env.insert(k.into(), v.into());
                    }
                }
                (Root::Dir(rootfs.to_path_buf()), "/bin/sh".to_string())
            }
        };
        env.extend(
            self.commands
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        env.insert("HOME".into(), "/work".into());
        let env = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        Ok((root, sh, env))
    }
}

/// A declared tool that lives where the sandbox hides the host (`/tmp`, `/run`, a home
/// directory) is still found: the directory that holds it there (`/root/.pyenv`,
/// `/home/u/.cargo`, `/tmp/x`) is bound read-only in place, and nothing else of that place.
fn hidden_homes(tools: &[ResolvedTool]) -> Vec<Bind> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for t in tools {
        for p in [Some(t.path.clone()), fs::canonicalize(&t.path).ok()]
            .into_iter()
            .flatten()
        {
            if let Some(dir) = hidden_home_of(&p).filter(|d| !dirs.contains(d)) {
                dirs.push(dir);
            }
        }
    }
    dirs.into_iter()
        .map(|dir| Bind {
            target: dir.display().to_string(),
            source: dir,
            writable: false,
        })
        .collect()
}

/// The Landlock ruleset of one step: writes only under `writable` and to the harmless
/// devices.
fn landlock_ruleset(writable: &[&Path]) -> Result<Option<std::os::fd::OwnedFd>, String> {
    let devices: Vec<PathBuf> = ["null", "zero", "full", "tty"]
        .iter()
        .map(|d| Path::new("/dev").join(d))
        .filter(|p| p.exists())
        .collect();
    let devices: Vec<&Path> = devices.iter().map(PathBuf::as_path).collect();
    crate::landlock::ruleset_fd(writable, &devices)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Step, Tools};
    use std::time::Duration;

    struct Fixture {
        dir: tempfile::TempDir,
        work: PathBuf,
        scratch: PathBuf,
        log: PathBuf,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("work");
        let scratch = dir.path().join("scratch");
        fs::create_dir(&work).unwrap();
        fs::create_dir(&scratch).unwrap();
        let log = dir.path().join("log");
        Fixture {
            dir,
            work,
            scratch,
            log,
        }
    }

    /// PATH, with the directory of the real python3 first: on PATH it may be a shim
    /// (pyenv's) that needs half the host's tools to find it.
    fn test_tools() -> Tools {
        static PATH: std::sync::OnceLock<std::ffi::OsString> = std::sync::OnceLock::new();
        let path = PATH.get_or_init(|| {
            let real = std::process::Command::new("python3")
                .args([
                    "-c",
                    "import os, sys; print(os.path.dirname(os.path.realpath(sys.executable)))",
                ])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default();
            let mut path = std::ffi::OsString::from(real);
            path.push(":");
            path.push(std::env::var_os("PATH").unwrap_or_default());
            path
        });
        Tools::new(path.clone())
    }

    /// Skips (with a message) where the kernel refuses namespaces, except in CI.
    fn namespaces() -> bool {
        match namespace::available() {
            Ok(()) => true,
            Err(e) if std::env::var("CI").is_err() => {
                eprintln!("skipping: {e}");
                false
            }
            Err(e) => panic!("CI runs where namespaces work: {e}"),
        }
    }

    impl Fixture {
        fn host(&self, tools: &[&str], run: &str) -> Result<(), RunError> {
            let t = test_tools();
            let tools: Vec<ResolvedTool> = tools.iter().map(|n| t.resolve(n).unwrap()).collect();
            self.run(
                RootFs::Host { tools: &tools },
                &[],
                run,
                Duration::from_secs(20),
            )
        }

        fn run(
            &self,
            root: RootFs<'_>,
            read_only: &[String],
            run: &str,
            timeout: Duration,
        ) -> Result<(), RunError> {
            let mut env = BTreeMap::new();
            env.insert("GREETING".to_string(), "hi".to_string());
            SandboxRun {
                work: &self.work,
                scratch: &self.scratch,
                root,
                read_only,
                commands: Commands {
                    env: &env,
                    steps: &[Step {
                        name: "s".into(),
                        run: run.into(),
                    }],
                    timeout,
                    log: &self.log,
                    quiet: false,
                    cancel: None,
                },
            }
            .run()
        }

        fn log(&self) -> String {
            fs::read_to_string(&self.log).unwrap_or_default()
        }

        fn read(&self, name: &str) -> String {
            fs::read_to_string(self.work.join(name)).unwrap()
        }
    }

    #[test]
    fn tools_in_hidden_places_bind_only_their_own_directory() {
        let at = |p: &str| hidden_home_of(Path::new(p)).map(|d| d.display().to_string());
        assert_eq!(at("/usr/bin/cc"), None);
        assert_eq!(
            at("/root/.pyenv/shims/python3").as_deref(),
            Some("/root/.pyenv")
        );
        assert_eq!(
            at("/home/u/.cargo/bin/x").as_deref(),
            Some("/home/u/.cargo")
        );
        assert_eq!(at("/tmp/t1/stamp").as_deref(), Some("/tmp/t1"));
        assert_eq!(at("/root/tool").as_deref(), Some("/root/tool"));
    }

    #[test]
    fn a_step_sees_work_home_env_and_not_root() {
        if !namespaces() {
            return;
        }
        let f = fixture();
        f.host(
            &["sh", "id", "cat"],
            "echo \"$GREETING $HOME $PWD $TMPDIR $(id -u)\" > out; echo tmp > /tmp/t; cat /tmp/t >> out",
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", f.log()));
        let (uid, _) = namespace::inside_ids();
        assert_eq!(f.read("out"), format!("hi /work /work /tmp {uid}\ntmp\n"));
        assert!(uid != 0);
        assert!(f.log().contains("==> sandbox: namespaces"));
    }

    #[test]
    fn no_network_to_the_hosts_loopback() {
        if !namespaces() {
            return;
        }
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let f = fixture();
        let Ok(_) = Tools::from_env().resolve("python3") else {
            panic!("the test needs python3 on PATH");
        };
        // Inside, 127.0.0.1 is the sandbox's own loopback: nothing listens there.
        f.host(
            &["sh", "python3"],
            &format!(
                "python3 -c \"import socket; socket.create_connection(('127.0.0.1', {port}), 2)\" 2>err && echo connected > out || echo refused > out"
            ),
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", f.log()));
        assert_eq!(f.read("out"), "refused\n", "{}", f.read("err"));
        // Refused by the sandbox's loopback, not a python3 that did not start.
        assert!(
            f.read("err").contains("ConnectionRefusedError"),
            "{}",
            f.read("err")
        );
    }

    /// The steps a thread runs share its network namespace (made once), and each finds
    /// it as the first did: a port the step before served and closed is free at once
    /// (no TIME_WAIT), for a program that binds without SO_REUSEADDR.
    #[test]
    fn a_threads_steps_share_an_empty_loopback() {
        if !namespaces() {
            return;
        }
        let f = fixture();
        let serve = "import socket\n\
                     s = socket.socket(); s.bind(('127.0.0.1', 47001)); s.listen(1)\n\
                     c = socket.create_connection(('127.0.0.1', 47001)); a, _ = s.accept()\n\
                     a.sendall(b'x'); c.recv(1); a.close(); c.close(); s.close()\n";
        fs::write(f.work.join("serve.py"), serve).unwrap();
        for round in 0..3 {
            f.host(
                &["sh", "python3", "readlink"],
                &format!("python3 serve.py && readlink /proc/self/ns/net > ns{round}"),
            )
            .unwrap_or_else(|e| panic!("round {round}: {e}\n{}", f.log()));
        }
        let ns: Vec<String> = (0..3).map(|r| f.read(&format!("ns{r}"))).collect();
        assert!(ns[0].starts_with("net:["), "{ns:?}");
        assert!(
            ns.iter().all(|n| *n == ns[0]),
            "one namespace per thread: {ns:?}"
        );
        // Another thread makes its own.
        let other = std::thread::scope(|s| {
            s.spawn(|| {
                f.host(&["sh", "readlink"], "readlink /proc/self/ns/net > other")
                    .unwrap();
                f.read("other")
            })
            .join()
            .unwrap()
        });
        assert_ne!(other, ns[0]);
    }

    #[test]
    fn writes_outside_work_and_tmp_fail_and_host_dirs_are_hidden() {
        if !namespaces() {
            return;
        }
        let f = fixture();
        // The host's /etc is there, read-only; the caller's temp dir is not there at all.
        let outside = f.dir.path().join("outside");
        for target in [Path::new("/etc/cascade-sandbox-escape"), &outside] {
            let err = f
                .host(&["sh"], &format!("echo escaped > {}", target.display()))
                .unwrap_err();
            assert!(matches!(err, RunError::Failed { .. }), "{err}");
            assert!(!target.exists());
        }
        assert!(f.log().contains("Read-only file system"), "{}", f.log());
        let f = fixture();
        f.host(
            &["sh", "ls", "grep"],
            "for d in /run /sys /work/../run; do [ -e $d ] && echo $d >> out; done; ls /proc | grep -c '^[0-9]' >> out; echo done >> out",
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", f.log()));
        // No /run (daemon sockets) nor /sys, and only the sandbox's own processes in /proc.
        let out = f.read("out");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.last(), Some(&"done"));
        assert!(lines.len() == 2, "{out}");
        let pids: u32 = lines[0].parse().unwrap();
        assert!(pids <= 5, "the step sees {pids} processes");
    }

    #[test]
    fn read_only_entries_and_background_processes_die_with_the_step() {
        if !namespaces() {
            return;
        }
        let f = fixture();
        fs::create_dir(f.work.join("src")).unwrap();
        fs::write(f.work.join("src/a"), "a").unwrap();
        let marker = "3131";
        let r = f.run(
            RootFs::Host {
                tools: &["sh", "setsid", "sleep"]
                    .iter()
                    .map(|n| Tools::from_env().resolve(n).unwrap())
                    .collect::<Vec<_>>(),
            },
            &["src".to_string()],
            &format!("setsid sleep {marker} & (echo b > src/a) 2>err || echo refused > out"),
            Duration::from_secs(20),
        );
        r.unwrap_or_else(|e| panic!("{e}\n{}", f.log()));
        assert_eq!(f.read("out"), "refused\n");
        assert_eq!(f.read("src/a"), "a");
        std::thread::sleep(Duration::from_millis(100));
        let left: Vec<String> = fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| fs::read(e.ok()?.path().join("cmdline")).ok())
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .filter(|c| c.contains(&format!("sleep {marker}")))
            .collect();
        assert!(left.is_empty(), "still running: {left:?}");
    }

    #[test]
    fn timeout_kills_the_namespace() {
        if !namespaces() {
            return;
        }
        let f = fixture();
        let tools: Vec<ResolvedTool> = ["sh", "sleep"]
            .iter()
            .map(|n| Tools::from_env().resolve(n).unwrap())
            .collect();
        let started = std::time::Instant::now();
        let err = f
            .run(
                RootFs::Host { tools: &tools },
                &[],
                "sleep 30 & sleep 30",
                Duration::from_millis(300),
            )
            .unwrap_err();
        assert!(matches!(err, RunError::Timeout { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn the_callers_environment_is_out_of_reach() {
        if !namespaces() {
            return;
        }
        std::env::set_var("CASCADE_TEST_SANDBOX_SECRET", "hunter2-sandbox");
        let f = fixture();
        f.host(
            &["sh", "cat"],
            "for p in /proc/[0-9]*; do cat $p/environ 2>/dev/null || true; done > out; export -p >> out; echo end >> out",
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", f.log()));
        let out = f.read("out");
        assert!(out.ends_with("end\n"));
        assert!(!out.contains("hunter2-sandbox"), "{out}");
    }

    /// An image root: only the image's files (here: busybox as /bin/sh), not the host's.
    #[test]
    fn an_image_root_holds_only_the_image() {
        if !namespaces() {
            return;
        }
        let Some(busybox) = ["/bin/busybox", "/usr/bin/busybox"]
            .iter()
            .find(|p| Path::new(p).exists())
        else {
            assert!(std::env::var("CI").is_err(), "CI installs busybox-static");
            eprintln!("skipping: no busybox");
            return;
        };
        let f = fixture();
        let rootfs = f.dir.path().join("rootfs");
        fs::create_dir_all(rootfs.join("bin")).unwrap();
        fs::copy(busybox, rootfs.join("bin/busybox")).unwrap();
        std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh")).unwrap();
        let env = vec!["PATH=/bin".to_string(), "IMAGE_VAR=1".to_string()];
        f.run(
            RootFs::Image {
                rootfs: &rootfs,
                env: &env,
            },
            &[],
            "busybox ls / > out; [ -e /etc/hostname ] && echo host-file >> out; echo $IMAGE_VAR $GREETING >> out; busybox hostname >> out",
            Duration::from_secs(20),
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", f.log()));
        assert_eq!(f.read("out"), "bin\ndev\nproc\ntmp\nwork\n1 hi\ncascade\n");
    }

    /// A failure inside the new namespaces, before the program runs, comes back from the
    /// child (which shares cascade's memory until its execve) with its stage and errno,
    /// the failed mount named; the child is reaped and cascade goes on spawning.
    #[test]
    fn setup_failures_come_back_with_their_stage() {
        if !namespaces() {
            return;
        }
        let f = fixture();
        let jail = |argv: &str, binds: Vec<Bind>| Jail {
            root: Root::Host,
            binds,
            cwd: "/".into(),
            argv: vec![argv.into()],
            env: Vec::new(),
            output: fs::File::create(&f.log).unwrap().into(),
            landlock: None,
            limits: LIMITS,
            network: namespace::Network::Own,
        };
        let err = namespace::spawn(jail("/no/such/program", Vec::new()), &f.scratch)
            .err()
            .expect("no such program");
        assert_eq!(err.stage, "execve");
        assert_eq!(err.source.raw_os_error(), Some(libc::ENOENT));
        let missing = Bind {
            source: f.dir.path().join("missing"),
            target: "/opt/missing".into(),
            writable: false,
        };
        let err = namespace::spawn(jail("/bin/true", vec![missing]), &f.scratch)
            .err()
            .expect("a bind of nothing");
        assert_eq!(err.stage, "mounting the root filesystem", "{err:?}");
        assert_eq!(err.detail.as_deref(), Some("/opt/missing"), "{err:?}");
        // And the next spawn works: nothing was left holding the thread or its signals.
        let ok = namespace::spawn(jail("/bin/true", Vec::new()), &f.scratch).expect("spawn");
        assert_eq!(ok.wait().expect("wait"), 0);
    }
}
