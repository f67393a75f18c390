//! Container runners end to end, on both executors: cascade's sandbox (always) and the
//! real Docker Engine (`.ci/services/docker.sh` starts one; without it the docker half
//! skips, and fails in CI). Each test runs its body once per executor, in a fresh
//! project, and every figure it checks must hold on both.
//!
//! The runner image is built in the graph: `toolchain` copies Debian's static busybox
//! into a root filesystem and declares it as a `scratch` image. Steps of the other
//! components run in it: no network, read-only inputs and source, outputs that belong
//! to the caller, timeouts that kill and remove the container, the same bytes in any
//! directory, and, when the image changes, exactly its users rebuilt.
//!
//! Containers carry the labels `cascade.pid` (this test process) and
//! `cascade.component`, and every test uses component names of its own, so what one
//! test leaves behind is told apart from what the tests beside it run.

use std::fs;
use std::io::Read;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cascade_tests::{Run, TestProject};

const ENV: &str = "test";

/// The runner image's recipe: busybox as `/bin/*`, `PATH=/bin`. `extra` is more of its
/// image declaration.
fn toolchain_recipe(extra: &str) -> String {
    format!(
        "runner: {{ host: {{ tools: [sh, mkdir, ln, cp, busybox] }} }}\n\
         steps:\n  - name: rootfs\n    run: |\n      mkdir -p rootfs/bin\n      cp \"$(command -v busybox)\" rootfs/bin/busybox\n      for a in sh cat echo id ls mkdir nc sleep touch pwd printf; do ln -s busybox rootfs/bin/$a; done\n\
         outputs: [rootfs]\n\
         image:\n  base: scratch\n  layers: [{{ from: rootfs, to: / }}]\n  env: {{ PATH: /bin }}\n{extra}"
    )
}

/// A project with a toolchain image (component `tc`) and `components`: (name, recipe),
/// each with a repository holding `data.txt`.
fn project(components: &[(&str, String)]) -> TestProject {
    let mut p = TestProject::new();
    let mut env = String::from("name: test\nmode: branch\nsources:\n");
    for name in std::iter::once("tc").chain(components.iter().map(|(n, _)| *n)) {
        env.push_str(&format!(
            "  {name}: {{ repo: ../../repos/{name}, ref: main }}\n"
        ));
        let data = format!("{name} data\n");
        p.commit(name, "main", &[("data.txt", Some(&data))], "initial");
    }
    p.write("graph/environments/test.yaml", &env);
    p.write("recipes/tc.yaml", &toolchain_recipe(""));
    for (name, recipe) in components {
        p.write(&format!("recipes/{name}.yaml"), recipe);
    }
    p
}

/// A recipe whose steps run in `tc`'s image.
fn in_container(inputs: &[&str], extra: &str, steps: &[(&str, &str)]) -> String {
    let mut r = format!(
        "inputs: [{}]\nrunner: {{ container: {{ image: tc }} }}\n{extra}steps:\n",
        inputs.join(", ")
    );
    for (name, run) in steps {
        r.push_str(&format!("  - name: {name}\n    run: |\n"));
        for line in run.lines() {
            r.push_str(&format!("      {line}\n"));
        }
    }
    r.push_str("outputs: [out]\n");
    r
}

thread_local! {
    /// The executor this test thread's builds use (`each_executor`).
    static EXECUTOR: std::cell::Cell<&'static str> = const { std::cell::Cell::new("sandbox") };
}

/// Runs `body` on the sandbox, then on Docker when an engine answers.
fn each_executor(body: impl Fn()) {
    EXECUTOR.with(|e| e.set("sandbox"));
    body();
    if cascade_tests::docker() {
        EXECUTOR.with(|e| e.set("docker"));
        body();
    }
}

fn executor() -> &'static str {
    EXECUTOR.with(|e| e.get())
}

/// `cascade build` on this thread's executor, asserting the exit code.
fn build(p: &TestProject, code: i32) -> Run {
    let r = p.run(&["build", "--env", ENV, "--json", "--executor", executor()]);
    assert_eq!(
        r.code,
        code,
        "exit code on {}\nstdout:\n{}\nstderr:\n{}",
        executor(),
        r.stdout,
        r.stderr
    );
    r
}

/// The ids of the containers this process created for `component`, running or not.
fn containers_of(component: &str) -> Vec<String> {
    let out = std::process::Command::new("docker")
        .args(["ps", "-aq", "--filter"])
        .arg(format!("label=cascade.pid={}", std::process::id()))
        .arg("--filter")
        .arg(format!("label=cascade.component={component}"))
        .output()
        .expect("the docker CLI (docker.io brings it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

fn log_tail(r: &Run, node: &str) -> String {
    r.node(node)["log_tail"]
        .as_array()
        .map(|l| {
            l.iter()
                .map(|x| x.as_str().unwrap_or_default().to_string())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

/// A step that opens a TCP connection to a port this test listens on fails, and the
/// listener sees nothing; so does the same step with a host runner (in the sandbox too,
/// since hermetic is the default); a connection from this process arrives (so the test
/// could see one).
#[test]
fn the_network_is_off() {
    each_executor(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let connected = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let watcher = {
            let (connected, stop) = (connected.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((mut s, _)) = listener.accept() {
                        connected.store(true, Ordering::Relaxed);
                        let _ = s.read(&mut [0; 16]);
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        let dial =
            "mkdir -p out\necho hello | nc -w 3 127.0.0.1 \"$PORT\"\necho connected > out/net";
        let env = format!("env: {{ PORT: \"{port}\" }}\n");
        let p = project(&[("net-dial", in_container(&[], &env, &[("dial", dial)]))]);
        let r = build(&p, 1);
        assert_eq!(r.node("net-dial")["status"], "failed", "{}", r.stderr);
        assert_eq!(r.node("net-dial")["cause"], "step");
        assert!(
            !connected.load(Ordering::Relaxed),
            "the container reached the host"
        );
        assert!(containers_of("net-dial").is_empty());

        // A host step is sealed off as well.
        p.write(
            "recipes/net-dial.yaml",
            &format!(
                "runner: {{ host: {{ tools: [sh, mkdir, busybox] }} }}\n{env}\
                 steps:\n  - name: dial\n    run: |\n      mkdir -p out\n      echo hello | busybox nc -w 3 127.0.0.1 \"$PORT\"\n      echo connected > out/net\n\
                 outputs: [out]\n"
            ),
        );
        let r = build(&p, 1);
        assert_eq!(r.node("net-dial")["cause"], "step", "{}", r.stderr);
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            !connected.load(Ordering::Relaxed),
            "the host step reached the host"
        );
        // The control: a connection from outside any sandbox arrives.
        drop(std::net::TcpStream::connect(("127.0.0.1", port)).unwrap());
        let deadline = Instant::now() + Duration::from_secs(5);
        while !connected.load(Ordering::Relaxed) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        stop.store(true, Ordering::Relaxed);
        watcher.join().unwrap();
        assert!(
            connected.load(Ordering::Relaxed),
            "the control did not connect"
        );
    });
}

/// Inputs and the exported source are mounted read-only: a write to an input fails the
/// step ("Read-only file system"); what the step creates is writable.
#[test]
fn inputs_and_source_are_read_only() {
    each_executor(|| {
        let lib = in_container(&[], "", &[("make", "mkdir -p out\necho lib > out/lib.txt")]);
        let writer = in_container(
            &["ro-lib"],
            "",
            &[(
                "write",
                "mkdir -p out\necho changed > inputs/ro-lib/out/lib.txt",
            )],
        );
        let p = project(&[("ro-lib", lib.clone()), ("ro-app", writer)]);
        let r = build(&p, 1);
        assert_eq!(r.node("ro-lib")["status"], "built", "{}", r.stderr);
        assert_eq!(r.node("ro-app")["status"], "failed", "{}", r.stderr);
        assert_eq!(r.node("ro-app")["cause"], "step");
        let tail = log_tail(&r, "ro-app");
        assert!(tail.contains("Read-only file system"), "{tail}");
        assert!(containers_of("ro-app").is_empty());

        // Every other way in fails too, and the step's own directory takes its outputs.
        let probe = "mkdir -p out\n\
                     for p in inputs/ro-lib/out/lib.txt inputs/ro-lib/out/new data.txt new-in-src/x; do\n\
                     \x20 if (echo x >> \"$p\") 2>/dev/null; then echo \"$p is writable\" >&2; exit 1; fi\n\
                     done\n\
                     if (mkdir inputs/ro-lib/dir) 2>/dev/null; then echo \"inputs are writable\" >&2; exit 1; fi\n\
                     if (touch /etc-new) 2>/dev/null; then echo \"the root is writable\" >&2; exit 1; fi\n\
                     echo tmp > /tmp/scratch\n\
                     cat inputs/ro-lib/out/lib.txt data.txt > out/all.txt";
        p.write(
            "recipes/ro-app.yaml",
            &in_container(&["ro-lib"], "", &[("probe", probe)]),
        );
        let r = build(&p, 0);
        assert_eq!(r.node("ro-app")["status"], "built", "{}", r.stderr);
        assert_eq!(
            p.output_file(&r, "ro-app", "out/all.txt"),
            "lib\nro-app data\n"
        );
    });
}

/// What a step writes, even with a umask of 077, belongs to the caller (or is readable
/// by it): it is stored, and the work directory is removed afterwards. The step runs as
/// the caller's uid, or as 65534 when cascade runs as root: never as root.
#[test]
fn outputs_belong_to_the_caller_and_steps_are_not_root() {
    each_executor(|| {
        let run = "umask 077\nmkdir -p out/private\necho secret > out/private/file\nid -u > out/uid\nid -g > out/gid";
        let p = project(&[("owner", in_container(&[], "", &[("write", run)]))]);
        // Work directories under the project, to see that none is left behind.
        let work = p.root.join("work");
        let r = p.run(&[
            "build",
            "--env",
            ENV,
            "--json",
            "--executor",
            executor(),
            "--work-dir",
            work.to_str().unwrap(),
        ]);
        assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
        let uid: u32 = p
            .output_file(&r, "owner", "out/uid")
            .trim()
            .parse()
            .unwrap();
        let euid = unsafe { libc::geteuid() };
        assert_ne!(uid, 0, "a step ran as root");
        assert_eq!(uid, if euid == 0 { 65534 } else { euid });
        assert_eq!(p.output_file(&r, "owner", "out/private/file"), "secret\n");
        let base = fs::read_dir(&work)
            .unwrap()
            .flatten()
            .next()
            .expect("the per-user work base")
            .path();
        let left: Vec<_> = fs::read_dir(&base)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "work directories left: {left:?}");
    });
}

/// A step past its timeout is killed, its container removed, and the node fails with a
/// timeout in well under the step's own length.
#[test]
fn a_timeout_kills_and_removes_the_container() {
    each_executor(|| {
        let p = project(&[(
            "sleeper",
            in_container(&[], "timeout: 2s\n", &[("nap", "echo napping\nsleep 60")]),
        )]);
        let started = Instant::now();
        let r = build(&p, 1);
        assert!(
            started.elapsed() < Duration::from_secs(50),
            "{:?}",
            started.elapsed()
        );
        let node = r.node("sleeper");
        assert_eq!(node["status"], "failed");
        assert_eq!(node["cause"], "step");
        assert!(
            node["error"].as_str().unwrap().contains("timed out"),
            "{node}"
        );
        let tail = log_tail(&r, "sleeper");
        assert!(
            tail.contains("napping") && tail.contains("timed out"),
            "{tail}"
        );
        assert!(
            containers_of("sleeper").is_empty(),
            "the container is still there"
        );
    });
}

/// Steps see `/work`, never the host's directories: two projects in different
/// directories, with different stores, build the same bytes and lockfiles, and the
/// lockfile replays from scratch (`--check`) to the same digests.
#[test]
fn outputs_are_identical_from_two_directories() {
    each_executor(|| {
        let run = "mkdir -p out\npwd > out/where\necho \"$HOME\" >> out/where\ncat data.txt inputs/det-base/out/base >> out/where";
        let make = || {
            project(&[
                (
                    "det-base",
                    in_container(&[], "", &[("make", "mkdir -p out\necho base > out/base")]),
                ),
                ("det-top", in_container(&["det-base"], "", &[("make", run)])),
            ])
        };
        let (a, b) = (make(), make());
        assert_ne!(a.root, b.root);
        let (ra, rb) = (build(&a, 0), build(&b, 0));
        for node in ["tc", "det-base", "det-top"] {
            assert_eq!(ra.node(node)["output"], rb.node(node)["output"], "{node}");
            assert_eq!(ra.node(node)["key"], rb.node(node)["key"], "{node}");
        }
        assert_eq!(
            a.output_file(&ra, "det-top", "out/where"),
            "/work\n/work\ndet-top data\nbase\n"
        );
        let lock = |p: &TestProject, r: &Run| {
            fs::read_to_string(p.root.join(r.json()["lockfile"].as_str().unwrap())).unwrap()
        };
        assert_eq!(lock(&a, &ra), lock(&b, &rb));
        // And a second build runs nothing.
        let again = build(&a, 0);
        assert_eq!(again.json()["built"], 0, "{}", again.stderr);
        // The lockfile replays from scratch (a fresh store: the toolchain's image made
        // again, every step run again in it) to the same digests.
        let lockfile = a.root.join(ra.json()["lockfile"].as_str().unwrap());
        let check = a.run(&[
            "build",
            "--lock",
            lockfile.to_str().unwrap(),
            "--check",
            "--json",
        ]);
        assert_eq!(check.code, 0, "{}", check.stderr);
        assert_eq!(check.json()["built"], 3, "{}", check.stderr);
        assert_eq!(check.json()["replay"]["mismatches"], serde_json::json!([]));
    });
}

/// The image's digest is the runner's identity: a new toolchain image (here only its
/// labels change, so its own steps do not run) rebuilds exactly the nodes that run in
/// it, `plan` says why, and a node downstream of them whose inputs came out the same is
/// not rebuilt (early cutoff).
#[test]
fn a_new_toolchain_image_rebuilds_exactly_its_users() {
    each_executor(|| {
        let host = "runner: { host: { tools: [sh, mkdir, cat] } }\n";
        let p = project(&[
            (
                "img-a",
                in_container(&[], "", &[("make", "mkdir -p out\ncat data.txt > out/a")]),
            ),
            (
                "img-b",
                in_container(&[], "", &[("make", "mkdir -p out\ncat data.txt > out/b")]),
            ),
            (
                "img-host",
                format!("{host}steps: [{{ name: make, run: 'mkdir -p out && cat data.txt > out/h' }}]\noutputs: [out]\n"),
            ),
            (
                "img-down",
                format!("inputs: [img-a]\n{host}steps: [{{ name: make, run: 'mkdir -p out && cat inputs/img-a/out/a > out/d' }}]\noutputs: [out]\n"),
            ),
        ]);
        let first = build(&p, 0);
        assert_eq!(first.json()["built"], 5, "{}", first.stderr);
        let old_image = first.node("tc")["image"]["digest"]
            .as_str()
            .unwrap()
            .to_string();

        p.write(
            "recipes/tc.yaml",
            &toolchain_recipe("  labels: { org.example.toolchain: \"2\" }\n"),
        );
        let plan = p.run(&["plan", "--env", ENV]);
        assert_eq!(plan.code, 0, "{}", plan.stderr);
        let short = |d: &str| format!("{}…", &d[..19]);
        let plan_json = p.run(&["plan", "--env", ENV, "--json"]);
        let node_plan = |name: &str| {
            plan_json.json()["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|n| n["name"] == name)
                .cloned()
                .unwrap()
        };
        // The toolchain is cached but its image is not made yet: its users wait for it.
        assert_eq!(node_plan("tc")["state"], "cached");
        for user in ["img-a", "img-b"] {
            let n = node_plan(user);
            assert_eq!(n["state"], "pending", "{n}");
            assert_eq!(n["waits_for"], serde_json::json!(["tc"]));
            assert_eq!(n["early_cutoff"], true, "{n}");
            assert!(
                plan.stdout
                    .contains("runner: image pending (tc must be rebuilt first)"),
                "{}",
                plan.stdout
            );
        }
        assert_eq!(node_plan("img-host")["state"], "cached");

        let second = build(&p, 0);
        let new_image = second.node("tc")["image"]["digest"]
            .as_str()
            .unwrap()
            .to_string();
        assert_ne!(old_image, new_image);
        let mut built = second.with_status("built");
        built.sort();
        assert_eq!(built, ["img-a", "img-b"], "{}", second.stderr);
        assert_eq!(second.node("img-down")["status"], "cached", "early cutoff");

        // Against the first lockfile, the plan names the image change.
        let first_lock = p.root.join(first.json()["lockfile"].as_str().unwrap());
        let plan = p.run(&[
            "plan",
            "--env",
            ENV,
            "--against",
            first_lock.to_str().unwrap(),
        ]);
        assert_eq!(plan.code, 0, "{}", plan.stderr);
        let line = format!(
            "runner: image {} → {}",
            short(&old_image),
            short(&new_image)
        );
        assert!(
            plan.stdout.contains(&line),
            "no `{line}` in:\n{}",
            plan.stdout
        );
    });
}

/// An image pinned by digest is taken from the store's image layout (or, on Docker, the
/// engine); one that is in neither stops the build before anything runs, naming it
/// (exit 3).
#[test]
fn a_pinned_image_runs_from_the_store() {
    each_executor(|| {
        // The image, made the way cascade makes images, but outside any build.
        let dir = tempfile::tempdir().unwrap();
        let layout = cascade_image::OciLayout::open_or_create(dir.path().join("oci")).unwrap();
        let mut entries = vec![cascade_image::LayerEntry::file(
            "bin/busybox",
            "/bin/busybox",
        )];
        for a in ["sh", "mkdir", "cat", "echo"] {
            entries.push(cascade_image::LayerEntry::symlink(
                format!("bin/{a}"),
                "busybox",
            ));
        }
        let spec = cascade_image::ImageSpec {
            config: cascade_image::ConfigSpec {
                env: vec!["PATH=/bin".into()],
                ..Default::default()
            },
            layers: vec![cascade_image::LayerSpec {
                entries,
                created_by: "cascade tests: a pinned runner image".into(),
                comment: None,
            }],
            source_date_epoch: 1_700_000_000,
            ..Default::default()
        };
        let built = cascade_image::assemble(&layout, &spec).unwrap();
        let pinned = format!("cascade-test/pinned@{}", built.manifest_digest);
        let recipe = format!(
            "runner: {{ container: {{ image: \"{pinned}\" }} }}\n\
             steps: [{{ name: make, run: 'mkdir -p out && cat data.txt > out/x' }}]\noutputs: [out]\n"
        );
        let p = project(&[("pinned-app", recipe)]);
        let r = build(&p, 3);
        let missing = match executor() {
            "docker" => "neither in the store nor in the Docker Engine",
            _ => "the sandbox runs images from the store only",
        };
        assert!(r.stderr.contains(missing), "{}", r.stderr);
        assert!(
            !p.root.join("cache/actions").exists()
                || fs::read_dir(p.root.join("cache/actions"))
                    .unwrap()
                    .next()
                    .is_none()
        );

        // Into the store's layout, as `skopeo copy … oci:<store>/oci:<name>` would put it.
        let store_layout =
            cascade_image::OciLayout::open_or_create(p.root.join("cache/oci")).unwrap();
        for blob in layout.image_blobs(&built.manifest_digest).unwrap() {
            store_layout
                .put_blob_bytes(&layout.read_blob(&blob).unwrap())
                .unwrap();
        }
        let r = build(&p, 0);
        assert_eq!(r.node("pinned-app")["status"], "built", "{}", r.stderr);
        assert_eq!(
            p.output_file(&r, "pinned-app", "out/x"),
            "pinned-app data\n"
        );
        // The runner in the lockfile is the pinned image's identity.
        let runner = cascade_core::RunnerIdentity::Container {
            image: built.manifest_digest.to_string(),
        };
        let lock = fs::read_to_string(p.root.join(r.json()["lockfile"].as_str().unwrap())).unwrap();
        assert!(
            lock.contains(&format!("runner: {}", runner.digest())),
            "{lock}"
        );
    });
}
