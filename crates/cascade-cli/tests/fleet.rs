//! Fleet deploys through the real binary, on two Docker engines: `node1` is this
//! machine's (its socket), `node2` a second machine made of a network namespace
//! (`.ci/services/fleet.sh`: its own engine, loopback and Debian's openssh-server) reached
//! over ssh as `ssh://root@10.251.2.2:2222`, its host key in its own known_hosts, passed
//! as `CASCADE_SSH_CONFIG`. Health checks reach node2's loopback through ssh. The app is busybox httpd, whose image can be told to fail
//! on one host (`/www/fail_on` names it; the container compares it with `CASCADE_HOST`).
//!
//! Shown here: a roll host by host in order; a health failure on the second host rolls
//! the first back; secrets reach the container and nothing else, and a new value alone
//! redeploys; two deploys at once never interleave; a deploy killed with -9 mid-roll
//! leaves a fleet that `status` calls non-uniform and that the next deploy converges;
//! an unknown host key is refused. Skipped without the services; failed without them
//! when `CI=true` (.ci/run starts them).

mod common;

use std::collections::hash_map::RandomState;
use std::fs;
use std::hash::BuildHasher;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use cascade_docker::Docker;

/// node2's engine socket: the tests look at what runs there through it (cascade
/// reaches node2 over ssh).
const NODE2: &str = "unix:///run/cascade-node2/docker.sock";

fn services_dir() -> PathBuf {
    std::env::var_os("CASCADE_SERVICES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/cascade-services"))
}

fn ssh_config() -> PathBuf {
    services_dir().join("fleet/ssh_config")
}

fn available() -> bool {
    let ok = Docker::connect().is_ok()
        && Docker::connect_to(NODE2).is_ok()
        && Path::new("/bin/busybox").exists()
        && Command::new("ssh")
            .args(["-F"])
            .arg(ssh_config())
            .args([
                "-o",
                "BatchMode=yes",
                "-p",
                "2222",
                "root@10.251.2.2",
                "true",
            ])
            .stdin(Stdio::null())
            .output()
            .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "two Docker engines and ssh are needed in CI: .ci/services/docker.sh and fleet.sh"
        );
        eprintln!("skipping: needs .ci/services/docker.sh and fleet.sh running");
    }
    ok
}

/// busybox httpd serving `version`, listening after `delay` seconds, exiting at once
/// on the host `fail_on` names.
fn recipe(version: &str, delay: u32, fail_on: &str) -> String {
    format!(
        r#"runner: {{ host: {{ tools: [sh, mkdir, cp, busybox] }} }}
steps:
  - name: make
    run: |
      mkdir -p out/bin out/www
      cp "$(command -v busybox)" out/bin/busybox
      echo "app {version}" > out/www/index.html
      printf '%s' '{fail_on}' > out/www/fail_on
outputs: [out]
image:
  base: scratch
  layers:
    - {{ from: out/bin, to: /bin }}
    - {{ from: out/www, to: /www }}
  entrypoint: [/bin/busybox, sh, -c, "trap 'exit 0' TERM; [ \"$(/bin/busybox cat /www/fail_on)\" = \"$CASCADE_HOST\" ] && exit 3; /bin/busybox sleep {delay} & wait $!; /bin/busybox httpd -f -p 8080 -h /www & wait $!"]
  ports: [8080]
"#
    )
}

struct Fleet {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    env: String,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for endpoint in [cascade_docker::DEFAULT_ENDPOINT, NODE2] {
            if let Ok(d) = Docker::connect_to(endpoint) {
                for c in d
                    .containers_with(&[("cascade.env", &self.env)])
                    .unwrap_or_default()
                {
                    let _ = d.remove(&c.id);
                }
                let _ = d.remove_volume(&format!("cascade-lock-{}", self.env));
            }
        }
    }
}

impl Fleet {
    fn new(extra: &str) -> Fleet {
        let env = format!("fl{:08x}", RandomState::new().hash_one(2u8) as u32);
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        fs::create_dir_all(dir.join("graph/environments")).unwrap();
        fs::create_dir_all(dir.join("recipes")).unwrap();
        fs::write(
            dir.join(format!("graph/environments/{env}.yaml")),
            format!(
                "name: {env}\nmode: branch\nsources:\n  app: {{ repo: ../../repo, ref: main }}\ndeploy:\n  hosts:\n    node1: unix:///var/run/docker.sock\n    node2: ssh://root@10.251.2.2:2222\n  components:\n    app:\n      container: {env}-app\n      ports: [\"8080\"]\n      health: {{ http: {{ port: 8080, path: /index.html }}, interval: 500ms, retries: 20 }}\n{extra}"
            ),
        )
        .unwrap();
        git2::Repository::init(dir.join("repo")).unwrap();
        Fleet {
            _tmp: tmp,
            dir,
            env,
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_cascade"));
        c.arg("--project")
            .arg(&self.dir)
            .args(args)
            .env("CASCADE_SSH_CONFIG", ssh_config())
            .env("FLEET_TOKEN", "tok-3c1b9e27f0a4-first")
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        self.command(args).output().unwrap()
    }

    /// A commit and a build of `recipe(version, delay, fail_on)`.
    fn version(&self, version: &str, delay: u32, fail_on: &str, time: i64) {
        let repo = git2::Repository::open(self.dir.join("repo")).unwrap();
        common::commit(&repo, "VERSION", version, time);
        fs::write(
            self.dir.join("recipes/app.yaml"),
            recipe(version, delay, fail_on),
        )
        .unwrap();
        let b = self.run(&["build", "--env", &self.env, "--skip-tests"]);
        assert!(b.status.success(), "{}", String::from_utf8_lossy(&b.stderr));
    }

    fn deploy(&self, code: i32) -> (serde_json::Value, String) {
        let o = self.run(&["deploy", "--env", &self.env, "--json"]);
        let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(o.status.code(), Some(code), "{stderr}");
        (
            serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null),
            stderr,
        )
    }

    fn status(&self) -> serde_json::Value {
        let o = self.run(&["status", "--env", &self.env, "--json"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    }

    /// host → the image digest its app container runs (from the labels).
    fn images(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (host, endpoint) in [
            ("node1", cascade_docker::DEFAULT_ENDPOINT),
            ("node2", NODE2),
        ] {
            let d = Docker::connect_to(endpoint).unwrap();
            for c in d.containers_with(&[("cascade.env", &self.env)]).unwrap() {
                assert_eq!(c.labels["cascade.host"], host, "{c:?}");
                out.push((host.to_string(), c.labels["cascade.image"].clone()));
            }
        }
        out
    }

    fn history(&self) -> String {
        fs::read_to_string(self.dir.join(format!("deployments/{}.yaml", self.env)))
            .unwrap_or_default()
    }
}

/// The lines of `stderr` that start a container, as (host) in order.
fn starts(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter(|l| l.trim_start().starts_with("starting"))
        .map(|l| l.rsplit(" on ").next().unwrap_or("").to_string())
        .collect()
}

#[test]
fn a_roll_goes_host_by_host_and_a_failure_on_the_second_rolls_the_first_back() {
    if !available() {
        return;
    }
    let f = Fleet::new("");
    f.version("v1", 0, "", 1_767_225_600);
    let (first, stderr) = f.deploy(0);
    assert_eq!(first["outcome"], "deployed", "{stderr}");
    assert_eq!(starts(&stderr), ["node1", "node2"], "{stderr}");
    let v1 = f.images();
    assert_eq!(v1.len(), 2, "one container per host: {v1:?}");
    assert_eq!(v1[0].1, v1[1].1);

    // The dry run prints the whole roll, step by step, and what a failure undoes.
    f.version("v2", 1, "", 1_767_229_200);
    let dry = f.run(&["deploy", "--env", &f.env, "--dry-run"]);
    let text = String::from_utf8_lossy(&dry.stderr);
    assert!(
        text.contains(" 1. changed") && text.contains(" 2. changed"),
        "{text}"
    );
    assert!(text.contains("node1") && text.contains("node2"), "{text}");
    assert!(text.contains("if a step fails"), "{text}");

    // v2: node1 first, health-checked, then node2.
    let (second, stderr) = f.deploy(0);
    let hosts: Vec<&str> = second["replaced"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["host"].as_str().unwrap())
        .collect();
    assert_eq!(hosts, ["node1", "node2"], "{second}");
    let first_healthy = stderr.find("healthy    app").unwrap_or(usize::MAX);
    let node2_start = stderr.rfind("on node2").unwrap_or(0);
    assert!(
        first_healthy < node2_start,
        "node2 starts after node1 is healthy:\n{stderr}"
    );
    let v2 = f.images();
    assert!(v2.iter().all(|(_, d)| *d != v1[0].1), "{v2:?}");

    // v3 fails on node2: node1 was already replaced, and goes back to v2.
    f.version("v3", 0, "node2", 1_767_232_800);
    let (failed, stderr) = f.deploy(1);
    assert_eq!(failed["outcome"], "failed", "{stderr}");
    assert_eq!(failed["failure"]["host"], "node2", "{failed}");
    assert_eq!(failed["rollback"]["outcome"], "deployed", "{failed}");
    let back: Vec<&str> = failed["rollback"]["replaced"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["host"].as_str().unwrap())
        .collect();
    assert_eq!(back, ["node2", "node1"], "newest first: {failed}");
    assert_eq!(f.images(), v2, "every host runs v2 again");
    let history = f.history();
    assert!(
        history.contains("outcome: failed") && history.contains("action: auto-rollback"),
        "{history}"
    );
    assert!(
        history.contains("node1:") && history.contains("node2:"),
        "{history}"
    );
    let st = f.status();
    assert_eq!(st["uniform"], true, "{st}");
    assert!(st["containers"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["health"] == "healthy"));
}

#[test]
fn secrets_reach_the_container_and_nothing_else_and_a_new_value_redeploys() {
    if !available() {
        return;
    }
    let f = Fleet::new("      secrets:\n        APP_TOKEN: { env: FLEET_TOKEN }\n");
    f.version("v1", 0, "", 1_767_225_600);
    let o = f.run(&["deploy", "--env", &f.env, "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let secret = "tok-3c1b9e27f0a4-first";
    // Passed to the container…
    let d = Docker::connect_to(NODE2).unwrap();
    let c = &d.containers_with(&[("cascade.env", &f.env)]).unwrap()[0];
    let env = Command::new("docker")
        .args(["-H", NODE2, "inspect", "-f", "{{json .Config.Env}}", &c.id])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&env.stdout).contains(secret));
    // …and nowhere else: not in any output, label, lockfile, history or store file.
    let mut seen = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    seen.push_str(&format!("{:?}", c.labels));
    let st = f.run(&["status", "--env", &f.env, "--json"]);
    seen.push_str(&String::from_utf8_lossy(&st.stdout));
    assert!(!seen.contains(secret), "{seen}");
    let mut stack = vec![f.dir.clone()];
    while let Some(p) = stack.pop() {
        for e in fs::read_dir(&p).unwrap().flatten() {
            let path = e.path();
            let t = e.file_type().unwrap();
            if t.is_dir() && !path.ends_with("repo") {
                stack.push(path);
            } else if t.is_file() {
                let bytes = fs::read(&path).unwrap_or_default();
                assert!(
                    !String::from_utf8_lossy(&bytes).contains(secret),
                    "{} holds the secret",
                    path.display()
                );
            }
        }
    }
    // The same lockfile, a new value: the plan says why and the containers are replaced.
    let again = f
        .command(&["deploy", "--env", &f.env, "--json"])
        .env("FLEET_TOKEN", "tok-7aa0c2d95e18-second")
        .output()
        .unwrap();
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert!(
        r["plan"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["reasons"][0] == "secrets changed"),
        "{r}"
    );
    assert_eq!(r["replaced"].as_array().unwrap().len(), 2, "{r}");
    // And status, with the first value back, says the running secrets differ.
    let st: serde_json::Value =
        serde_json::from_slice(&f.run(&["status", "--env", &f.env, "--json"]).stdout).unwrap();
    assert!(
        st["containers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["secrets_changed"] == true),
        "{st}"
    );
}

#[test]
fn one_deploy_at_a_time_and_a_killed_roll_is_seen_and_converged() {
    if !available() {
        return;
    }
    let f = Fleet::new("");
    f.version("v1", 0, "", 1_767_225_600);
    f.deploy(0);
    let history = f.history();

    // Two at once (v2 takes 3 s to be healthy on each host): one deploys, the other is
    // told who holds the lock and stops before touching anything.
    f.version("v2", 3, "", 1_767_229_200);
    let a = f
        .command(&["deploy", "--env", &f.env])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let b = f.run(&["deploy", "--env", &f.env]);
    let a = a.wait_with_output().unwrap();
    let b_err = String::from_utf8_lossy(&b.stderr);
    assert_eq!(
        a.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&a.stderr)
    );
    assert_eq!(b.status.code(), Some(3), "{b_err}");
    assert!(
        b_err.contains("already running") && b_err.contains("pid "),
        "{b_err}"
    );
    let after = f.history();
    assert_eq!(
        after.matches("action: deploy").count(),
        history.matches("action: deploy").count() + 1,
        "only one of them deployed:\n{after}"
    );

    // kill -9 while node1's new container is starting: node1 runs v3, node2 still v2.
    let v2 = f.images()[0].1.clone();
    f.version("v3", 4, "", 1_767_232_800);
    let mut child = f
        .command(&["deploy", "--env", &f.env])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "ended early:\n{seen}"
        );
        seen.push_str(&line);
        if line.contains("starting") && line.contains("on node1") {
            break;
        }
    }
    // Once node1's v3 container exists (its health check is waiting), kill.
    let node1 = Docker::connect().unwrap();
    for _ in 0..100 {
        let swapped = node1
            .containers_with(&[("cascade.env", &f.env)])
            .unwrap()
            .iter()
            .any(|c| c.labels["cascade.image"] != v2);
        if swapped {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = child.wait();
    let st = f.status();
    assert_eq!(st["uniform"], false, "{st}");
    let stragglers: Vec<&str> = st["stragglers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["host"].as_str().unwrap())
        .collect();
    assert_eq!(
        stragglers,
        ["node1"],
        "node1 left the recorded lockfile: {st}"
    );
    let text = String::from_utf8_lossy(&f.run(&["status", "--env", &f.env]).stdout).into_owned();
    assert!(
        text.contains("not uniform") && text.contains("node1 runs"),
        "{text}"
    );

    // The next deploy takes over the dead holder's locks and converges the fleet.
    let (r, stderr) = f.deploy(0);
    assert_eq!(r["outcome"], "deployed", "{stderr}");
    let st = f.status();
    assert_eq!(st["uniform"], true, "{st}");
    let images = f.images();
    assert_eq!(images.len(), 2);
    assert_eq!(images[0].1, images[1].1, "{images:?}");
}

#[test]
fn an_unknown_host_key_is_refused() {
    if !available() {
        return;
    }
    let f = Fleet::new("");
    f.version("v1", 0, "", 1_767_225_600);
    // The same key, an empty known_hosts: ssh must refuse the host, and so cascade.
    let cfg = f.dir.join("ssh_config");
    let real = fs::read_to_string(ssh_config()).unwrap();
    let empty = f.dir.join("known_hosts");
    fs::write(&empty, "").unwrap();
    let known = real
        .lines()
        .find(|l| l.contains("UserKnownHostsFile"))
        .unwrap()
        .to_string();
    fs::write(
        &cfg,
        real.replace(&known, &format!("  UserKnownHostsFile {}", empty.display())),
    )
    .unwrap();
    let o = f
        .command(&["deploy", "--env", &f.env])
        .env("CASCADE_SSH_CONFIG", &cfg)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("`node2`"), "{stderr}");
    assert!(stderr.contains("Host key verification failed"), "{stderr}");
    assert_eq!(
        fs::read_to_string(&empty).unwrap(),
        "",
        "nothing was accepted"
    );
    assert!(f.images().is_empty(), "nothing was started");
}
