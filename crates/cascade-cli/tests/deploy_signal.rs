//! SIGTERM to the real `cascade deploy` process while the new container is starting:
//! the swap completes, the deploy rolls back, exits 130, and the old state runs. Needs
//! a Docker Engine and busybox-static (both installed by .ci/run): skipped without
//! them, failed without them when `CI=true`.

mod common;

use std::collections::hash_map::RandomState;
use std::fs;
use std::hash::BuildHasher;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

fn available() -> bool {
    let docker = cascade_docker::Docker::connect().is_ok();
    let busybox = Path::new("/bin/busybox").exists();
    if docker && busybox {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "a Docker Engine and /bin/busybox are needed in CI (.ci/run installs them)"
    );
    eprintln!("skipping: needs a Docker Engine and /bin/busybox (busybox-static)");
    false
}

/// busybox httpd serving the commit, listening after `delay` seconds; the shell in front
/// exits on SIGTERM, so a stop is quick.
fn recipe(delay: u32) -> String {
    format!(
        r#"runner: {{ host: {{ tools: [sh, mkdir, cp, busybox] }} }}
stamp: [commit]
steps:
  - name: make
    run: |
      mkdir -p out/bin out/www
      cp "$(command -v busybox)" out/bin/busybox
      echo "app $CASCADE_COMMIT" > out/www/index.html
outputs: [out]
image:
  base: scratch
  layers:
    - {{ from: out/bin, to: /bin }}
    - {{ from: out/www, to: /www }}
  entrypoint: [/bin/busybox, sh, -c, "trap 'exit 0' TERM; /bin/busybox sleep {delay} & wait $!; /bin/busybox httpd -f -p 8080 -h /www & wait $!"]
  ports: [8080]
"#
    )
}

fn cascade(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cascade"))
        .arg("--project")
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn get(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET /index.html HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// Removes the test's containers (and only them) however the test ends.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Ok(d) = cascade_docker::Docker::connect() {
            for c in d
                .containers_with(&[("cascade.env", &self.0)])
                .unwrap_or_default()
            {
                let _ = d.remove(&c.id);
            }
        }
    }
}

#[test]
fn sigterm_mid_deploy_leaves_the_old_state_running() {
    if !available() {
        return;
    }
    let env = format!("sig{:08x}", RandomState::new().hash_one(1u8) as u32);
    let _cleanup = Cleanup(env.clone());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    fs::create_dir_all(dir.join("graph/environments")).unwrap();
    fs::create_dir_all(dir.join("recipes")).unwrap();
    fs::write(
        dir.join(format!("graph/environments/{env}.yaml")),
        format!(
            "name: {env}\nmode: branch\nsources:\n  app: {{ repo: ../../repo, ref: main }}\ndeploy:\n  components:\n    app:\n      container: {env}-app\n      ports: [\"8080\"]\n      health: {{ http: {{ port: 8080, path: /index.html }}, interval: 500ms, retries: 60 }}\n"
        ),
    )
    .unwrap();
    let repo = git2::Repository::init(dir.join("repo")).unwrap();
    let v1 = common::commit(&repo, "README", "v1", 1_767_225_600);
    fs::write(dir.join("recipes/app.yaml"), recipe(0)).unwrap();
    let build = cascade(dir, &["build", "--env", &env, "--skip-tests"]);
    assert!(build.status.success(), "{build:?}");
    let first = cascade(dir, &["deploy", "--env", &env]);
    assert_eq!(first.status.code(), Some(0), "{first:?}");

    // v2 listens only after 30 s: its health check is waiting when SIGTERM comes.
    let v2 = common::commit(&repo, "README", "v2", 1_767_229_200);
    fs::write(dir.join("recipes/app.yaml"), recipe(30)).unwrap();
    let build = cascade(dir, &["build", "--env", &env, "--skip-tests"]);
    assert!(build.status.success(), "{build:?}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_cascade"))
        .arg("--project")
        .arg(dir)
        .args(["deploy", "--env", &env, "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap() == 0 {
            panic!("the deploy ended before starting the new container:\n{seen}");
        }
        seen.push_str(&line);
        if line.contains("starting") {
            break;
        }
    }
    // Mid-swap or mid-health-check: either way the swap completes first.
    std::thread::sleep(Duration::from_millis(300));
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "stderr:\n{seen}{rest}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["outcome"], "interrupted", "{report}");
    assert_eq!(report["rollback"]["outcome"], "deployed", "{report}");
    assert!(
        rest.contains("finishing the current container swap"),
        "{rest}"
    );

    // The old state runs and answers.
    let st = cascade(dir, &["status", "--env", &env, "--json"]);
    let st: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    let containers = st["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1, "{st}");
    assert_eq!(containers[0]["health"], "healthy", "{st}");
    let port: u16 = containers[0]["ports"][0]
        .as_str()
        .and_then(|p| p.split("->").next()?.rsplit(':').next()?.parse().ok())
        .unwrap();
    let page = get(port);
    assert!(page.contains(&v1) && !page.contains(&v2), "{page}");
}
