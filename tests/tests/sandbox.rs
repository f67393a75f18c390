//! The sandbox end to end (issue #14): what a build's steps cannot do, whatever the
//! runner. Each of these held before only for container steps on Docker, or not at all.
//! The network, the caller's environment and writes outside the work directory are
//! covered beside the tests they extend (`container.rs`, `secrets.rs`, the bad-input
//! case `step_writes_outside_workdir`).

use std::fs;

use cascade_tests::TestProject;

/// The command lines of this machine's processes.
fn processes() -> Vec<String> {
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| fs::read(e.ok()?.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .collect()
}

fn project(recipe: &str) -> TestProject {
    let recipe = recipe.to_string();
    let mut p = TestProject::new();
    p.write(
        "graph/environments/test.yaml",
        "name: test\nmode: branch\nsources:\n  app: { repo: ../../repos/app, ref: main }\n",
    );
    p.write("recipes/app.yaml", &recipe);
    p.commit("app", "main", &[("data.txt", Some("data\n"))], "initial");
    p
}

/// `setsid … &` leaves a step's process group, which is all the host runner used to
/// kill: in the sandbox the step's pid namespace ends with it, and so does the sleeper.
#[test]
fn a_process_a_step_left_in_the_background_dies_with_it() {
    // Durations of this run's own, so a sleeper of another run is not taken for ours.
    let (a, b) = (
        3000 + std::process::id() % 1000 * 2,
        3001 + std::process::id() % 1000 * 2,
    );
    let p = project(&format!(
        "runner: {{ host: {{ tools: [sh, setsid, sleep, nohup, mkdir, cp] }} }}\n\
         steps:\n  - name: make\n    run: |\n      setsid sleep {a} &\n      nohup sleep {b} >/dev/null 2>&1 &\n      mkdir -p out\n      cp data.txt out/\n\
         outputs: [out]\n",
    ));
    let r = p.build("test", 0);
    assert_eq!(r.node("app")["status"], "built");
    std::thread::sleep(std::time::Duration::from_millis(100));
    let left: Vec<String> = processes()
        .into_iter()
        .filter(|c| c.starts_with(&format!("sleep {a} ")) || c.starts_with(&format!("sleep {b} ")))
        .collect();
    assert!(left.is_empty(), "still running after the build: {left:?}");
}

/// A host step sees the host's files read-only, but not its `/tmp`, `/run` (daemon
/// sockets: Docker's among them), home directories (keys, tokens) or processes, and runs
/// as no one in particular.
#[test]
fn a_host_step_sees_a_read_only_host_without_its_sockets_or_processes() {
    let marker = format!("/usr/cascade-sandbox-test-{}", std::process::id());
    let p = project(&format!(
        "runner: {{ host: {{ tools: [sh, ls, id, mkdir, cat, touch] }} }}\n\
         steps:\n  - name: look\n    run: |\n      mkdir -p out\n      \
         ( [ -e /run ] && echo run ) > out/seen || true\n      \
         ( [ -e /root ] && echo root ) >> out/seen || true\n      \
         ( [ -e /home ] && echo home ) >> out/seen || true\n      \
         ( [ -S /var/run/docker.sock ] && echo docker-socket ) >> out/seen || true\n      \
         ( touch {marker} 2>/dev/null && echo wrote-usr ) >> out/seen || true\n      \
         ls /proc | (while read -r e; do case $e in [0-9]*) echo pid;; esac; done) > out/pids\n      \
         id -u > out/uid\n\
         outputs: [out]\n",
    ));
    let r = p.build("test", 0);
    assert_eq!(p.output_file(&r, "app", "out/seen"), "");
    assert!(!std::path::Path::new(&marker).exists());
    let pids = p.output_file(&r, "app", "out/pids").lines().count();
    assert!(pids <= 4, "the step saw {pids} processes");
    let uid = p.output_file(&r, "app", "out/uid");
    assert_ne!(uid.trim(), "0", "the step ran as root");
}

/// A project whose `app` runs in `tc`'s busybox image, `motd` its `/etc/motd`.
fn image_project(motd: &str) -> TestProject {
    let mut p = TestProject::new();
    p.write(
        "graph/environments/test.yaml",
        "name: test\nmode: branch\nsources:\n  tc: { repo: ../../repos/tc, ref: main }\n  app: { repo: ../../repos/app, ref: main }\n",
    );
    p.write(
        "recipes/tc.yaml",
        "runner: { host: { tools: [sh, mkdir, ln, cp, busybox] } }\n\
         env: { MOTD: image }\n\
         steps:\n  - name: rootfs\n    run: |\n      mkdir -p rootfs/bin rootfs/etc\n      cp \"$(command -v busybox)\" rootfs/bin/busybox\n      for a in sh ls mkdir cat; do ln -s busybox rootfs/bin/$a; done\n      echo $MOTD > rootfs/etc/motd\n\
         outputs: [rootfs]\n\
         image:\n  base: scratch\n  layers: [{ from: rootfs, to: / }]\n  env: { PATH: /bin }\n",
    );
    p.write(
        "recipes/app.yaml",
        "runner: { container: { image: tc } }\n\
         steps:\n  - name: look\n    run: |\n      mkdir -p out\n      ls / > out/root\n      ls /etc > out/etc\n\
         outputs: [out]\n",
    );
    p.commit("tc", "main", &[("README", Some("tc\n"))], "initial");
    p.commit("app", "main", &[("data.txt", Some("data\n"))], "initial");
    set_motd(&p, motd);
    p
}

fn set_motd(p: &TestProject, motd: &str) {
    let path = p.root.join("recipes/tc.yaml");
    let text = fs::read_to_string(&path).unwrap();
    let start = text.find("MOTD: ").unwrap() + "MOTD: ".len();
    let end = start + text[start..].find(' ').unwrap();
    p.write(
        "recipes/tc.yaml",
        &format!("{}{motd}{}", &text[..start], &text[end..]),
    );
}

/// The unpacked runner images in the store.
fn unpacked(p: &TestProject) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(p.root.join("cache/rootfs"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// A container step in the sandbox sees the image's files and the sandbox's own mount
/// points, nothing of the host (its `/etc/hostname`, its `/usr`).
#[test]
fn a_container_step_in_the_sandbox_sees_only_its_image() {
    let p = image_project("image");
    let r = p.run(&["build", "--env", "test", "--json", "--executor", "sandbox"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        p.output_file(&r, "app", "out/root"),
        "bin\ndev\netc\nproc\ntmp\nwork\n"
    );
    assert_eq!(p.output_file(&r, "app", "out/etc"), "motd\n");
}

/// A runner image is unpacked into the store once (`rootfs/<manifest hex>`), a new image
/// beside it, and `gc` removes the unpacked copy of an image no kept lockfile has.
#[test]
fn unpacked_runner_images_are_reused_and_collected() {
    let p = image_project("one");
    p.build("test", 0);
    let first = unpacked(&p);
    assert_eq!(first.len(), 1, "{first:?}");
    set_motd(&p, "two");
    let r = p.build("test", 0);
    assert_eq!(p.output_file(&r, "app", "out/etc"), "motd\n");
    let both = unpacked(&p);
    assert_eq!(both.len(), 2, "{both:?}");
    let store = p.root.join("cache").display().to_string();
    let gc = p.run(&["gc", "--keep", "1", "--json", "--store", &store]);
    assert_eq!(gc.code, 0, "{}", gc.stderr);
    let left = unpacked(&p);
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(!left.contains(&first[0]), "the old image's rootfs was kept");
    // The kept one still serves a build (all cached) and a rebuild of `app`.
    p.write(
        "recipes/app.yaml",
        &fs::read_to_string(p.root.join("recipes/app.yaml"))
            .unwrap()
            .replace(
                "ls /etc > out/etc",
                "ls /etc > out/etc; cat /etc/motd > out/motd",
            ),
    );
    let r = p.build("test", 0);
    assert_eq!(p.output_file(&r, "app", "out/motd"), "two\n");
}

/// A source tree with its own `inputs/` cannot pass files off as an input's: the node
/// fails (cause `source`, exit 1), naming the directory, before any step runs.
#[test]
fn a_source_with_its_own_inputs_dir_is_refused() {
    let mut p = TestProject::new();
    p.write(
        "graph/environments/test.yaml",
        "name: test\nmode: branch\nsources:\n  lib: { repo: ../../repos/lib, ref: main }\n  app: { repo: ../../repos/app, ref: main }\n",
    );
    let recipe = |inputs: &str| {
        format!(
            "inputs: [{inputs}]\nrunner: {{ host: {{ tools: [sh, mkdir, cp] }} }}\nsteps:\n  - name: make\n    run: mkdir -p out && cp data.txt out/\noutputs: [out]\n"
        )
    };
    p.write("recipes/lib.yaml", &recipe(""));
    p.write("recipes/app.yaml", &recipe("lib"));
    p.commit("lib", "main", &[("data.txt", Some("lib\n"))], "initial");
    p.commit(
        "app",
        "main",
        &[
            ("data.txt", Some("app\n")),
            ("inputs/lib/out/data.txt", Some("planted\n")),
        ],
        "initial",
    );
    let r = p.build("test", 1);
    assert_eq!(r.node("lib")["status"], "built");
    assert_eq!(r.node("app")["status"], "failed");
    assert_eq!(r.node("app")["cause"], "source");
    assert!(
        r.node("app")["error"]
            .as_str()
            .unwrap_or_default()
            .contains("own `inputs/`"),
        "{}",
        r.stderr
    );
}

/// A step that calls a tool its recipe does not declare fails saying where a host
/// step's commands come from, beside the shell's own `not found`.
#[test]
fn an_undeclared_tool_is_named_as_such() {
    let p = project(
        "runner: { host: { tools: [sh, mkdir] } }\n\
         steps:\n  - name: make\n    run: mkdir -p out && cp data.txt out/\n\
         outputs: [out]\n",
    );
    let r = p.build("test", 1);
    let error = r.node("app")["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(error.contains("exit code 127"), "{error}");
    assert!(error.contains("`runner.host.tools`"), "{error}");
    assert!(r.stderr.contains("cp: not found"), "{}", r.stderr);
}
