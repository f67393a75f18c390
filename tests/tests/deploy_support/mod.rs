//! The deploy tests' project: the example ecosystem under a per-test environment whose
//! `deploy:` names containers after it and lets the engine pick the host ports.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cascade_tests::{cascade, copy_dir, Run};

/// The engine socket of the fleet tests' second machine (`.ci/services/fleet.sh`), which
/// cascade reaches as `ssh://root@10.251.2.2:2222`; tests look at it through the socket.
pub const FLEET_NODE2: &str = "unix:///run/cascade-node2/docker.sock";

/// The services health check most tests use.
pub const HEALTH: &str = "      health: { http: { port: 8080, path: /health }, interval: 1s }";

pub struct Example {
    _dir: tempfile::TempDir,
    pub root: PathBuf,
    /// `dt<random>`: the environment, and the prefix of its containers.
    pub env: String,
}

/// What one build produced.
pub struct Built {
    /// Relative to the project.
    pub lockfile: String,
    pub services_commit: String,
}

fn unique_env() -> String {
    use std::collections::hash_map::RandomState;
    use std::hash::BuildHasher;
    let r = RandomState::new().hash_one(std::process::id()) as u32;
    format!("dt{r:08x}")
}

impl Example {
    /// The example with environment `dt…` (scratch's sources) deploying services
    /// (`services_extra`: more lines of its entry) and explorer.
    pub fn new(services_extra: &str) -> Example {
        let ex = Example::without_engine();
        ex.set_deploy(services_extra);
        ex
    }

    /// The example's files and repositories, and `scratch-nodeploy` (scratch without a
    /// `deploy:`).
    pub fn without_engine() -> Example {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("project");
        let ws = xtask::workspace_root();
        copy_dir(&ws.join("graph"), &root.join("graph"));
        copy_dir(&ws.join("recipes"), &root.join("recipes"));
        xtask::ecosystem::generate(&ws, &root.join("target/ecosystem"))
            .expect("generate the ecosystem");
        let ex = Example {
            _dir: dir,
            root,
            env: unique_env(),
        };
        let sources = ex.scratch_sources();
        fs::write(
            ex.root.join("graph/environments/scratch-nodeploy.yaml"),
            sources.replace("name: scratch", "name: scratch-nodeploy"),
        )
        .unwrap();
        ex
    }

    /// scratch.yaml up to its `deploy:`.
    pub fn scratch_sources(&self) -> String {
        let text = fs::read_to_string(self.root.join("graph/environments/scratch.yaml")).unwrap();
        let cut = text.find("\ndeploy:").map_or(text.len(), |i| i + 1);
        text[..cut].to_string()
    }

    /// Rewrites the environment's `deploy:`.
    pub fn set_deploy(&self, services_extra: &str) {
        self.set_deploy_with(
            services_extra,
            "      health: { http: { port: 8080, path: / }, interval: 1s }",
        );
    }

    /// Rewrites the environment's `deploy:`, with `explorer_extra` lines for explorer.
    pub fn set_deploy_with(&self, services_extra: &str, explorer_extra: &str) {
        let env = &self.env;
        let text = format!(
            "{}deploy:\n  components:\n    services:\n      container: {env}-services\n      ports: [\"8080\"]\n{services_extra}\n    explorer:\n      container: {env}-explorer\n      ports: [\"8080\"]\n{explorer_extra}\n",
            self.scratch_sources().replace("name: scratch", &format!("name: {env}"))
        );
        fs::write(
            self.root.join(format!("graph/environments/{env}.yaml")),
            text,
        )
        .unwrap();
    }

    pub fn run(&self, args: &[&str]) -> Run {
        let mut full = vec!["--project".to_string(), self.root.display().to_string()];
        full.extend(args.iter().map(|s| s.to_string()));
        cascade(&full)
    }

    /// Builds the environment (smoke tests skipped: the deploy's health checks are what
    /// is tested here).
    pub fn build(&self) -> Built {
        let r = self.run(&["build", "--env", &self.env, "--json", "--skip-tests"]);
        assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
        Built {
            lockfile: Path::new(r.json()["lockfile"].as_str().unwrap())
                .strip_prefix(&self.root)
                .unwrap()
                .display()
                .to_string(),
            services_commit: r.node("services")["commit"].as_str().unwrap().to_string(),
        }
    }

    pub fn deploy(&self, extra: &[&str], code: i32) -> Run {
        let mut args = vec!["deploy", "--env", &self.env, "--json"];
        args.extend(extra);
        let r = self.run(&args);
        assert_eq!(r.code, code, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
        r
    }

    /// (component, change) of a deploy's plan.
    pub fn plan_of(&self, r: &Run) -> Vec<(String, String)> {
        r.json()["plan"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().unwrap().to_string(),
                    p["change"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    /// A commit on `develop` of the example repository `repo` adding `file`.
    pub fn commit(&self, repo: &str, file: &str, content: &str) {
        let path = self.root.join(format!("target/ecosystem/{repo}.git"));
        let r = git2::Repository::open_bare(&path).unwrap();
        let parent = r
            .find_branch("develop", git2::BranchType::Local)
            .unwrap()
            .get()
            .peel_to_commit()
            .unwrap();
        let mut tb = r.treebuilder(Some(&parent.tree().unwrap())).unwrap();
        let blob = r.blob(content.as_bytes()).unwrap();
        tb.insert(file, blob, 0o100644).unwrap();
        let tree = r.find_tree(tb.write().unwrap()).unwrap();
        let when = git2::Time::new(parent.time().seconds() + 3600, 0);
        let sig = git2::Signature::new("Test", "test@example.com", &when).unwrap();
        let oid = r
            .commit(None, &sig, &sig, "test: a change", &tree, &[&parent])
            .unwrap();
        r.reference("refs/heads/develop", oid, true, "test")
            .unwrap();
    }

    /// Replaces `from` by `to` in `recipes/<component>.yaml`.
    pub fn recipe_variant(&self, component: &str, from: &str, to: &str) {
        let p = self.root.join(format!("recipes/{component}.yaml"));
        let text = fs::read_to_string(&p).unwrap();
        assert!(text.contains(from), "{text}");
        fs::write(&p, text.replace(from, to)).unwrap();
    }

    /// A new services commit (`note`) built with one more variable in its recipe's env
    /// (`SERVICES_UNHEALTHY: "1"`, `SERVICES_STARTUP_DELAY: "5"`).
    pub fn services_variant(&self, note: &str, env: &str) {
        self.commit("services", "SERVICES_NOTE", note);
        self.recipe_variant(
            "services",
            "env: { SERVICES_BIND: 0.0.0.0 }",
            &format!("env: {{ SERVICES_BIND: 0.0.0.0, {env} }}"),
        );
    }

    fn docker() -> cascade_docker::Docker {
        cascade_docker::Docker::connect().expect("a Docker Engine")
    }

    /// This environment's containers.
    pub fn containers(&self) -> Vec<cascade_docker::ContainerInfo> {
        Self::docker()
            .containers_with(&[("cascade.env", &self.env)])
            .unwrap()
    }

    /// Component → container id.
    pub fn container_ids(&self) -> BTreeMap<String, String> {
        self.containers()
            .into_iter()
            .map(|c| (c.labels["cascade.component"].clone(), c.id))
            .collect()
    }

    /// The 127.0.0.1 port the engine published for `component`'s 8080.
    pub fn port(&self, component: &str) -> u16 {
        let c = self
            .containers()
            .into_iter()
            .find(|c| c.labels.get("cascade.component").map(String::as_str) == Some(component))
            .unwrap_or_else(|| panic!("no container of `{component}`"));
        c.ports
            .iter()
            .find(|(port, ip, _)| *port == 8080 && ip == "127.0.0.1")
            .map(|(_, _, host)| *host)
            .unwrap_or_else(|| panic!("8080 is not published on 127.0.0.1: {:?}", c.ports))
    }

    /// Every container of the environment carries cascade's labels, and publishes on
    /// 127.0.0.1 only.
    pub fn assert_labels(&self) {
        for c in self.containers() {
            let keys: BTreeSet<&str> = c.labels.keys().map(String::as_str).collect();
            for k in [
                "cascade",
                "cascade.env",
                "cascade.component",
                "cascade.image",
                "cascade.lockfile",
                "cascade.config",
            ] {
                assert!(
                    keys.contains(k),
                    "`{}` lacks label {k}: {:?}",
                    c.name,
                    c.labels
                );
            }
            assert!(c.labels["cascade.image"].starts_with("sha256:"));
            assert!(c.labels["cascade.lockfile"].starts_with("blake3:"));
            assert!(c.name.starts_with(&self.env), "{}", c.name);
            assert!(
                c.ports.iter().all(|(_, ip, _)| ip == "127.0.0.1"),
                "{:?}",
                c.ports
            );
        }
    }

    /// (outcome, action, lockfile) of each history entry.
    pub fn history(&self) -> Vec<(String, String, String)> {
        let p = self.root.join(format!("deployments/{}.yaml", self.env));
        let text = fs::read_to_string(p).unwrap_or_default();
        if text.is_empty() {
            return Vec::new();
        }
        cascade_lock::read_history("h", &text)
            .unwrap()
            .deployments
            .into_iter()
            .map(|d| (d.outcome, d.action, d.lockfile))
            .collect()
    }

    /// Text with the environment's name, lockfile stamps and digests (which depend on
    /// the host's compiler) replaced, for snapshots.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.replace(&self.env, "[ENV]");
        for prefix in ["sha256:", "blake3:"] {
            let mut done = String::new();
            let mut rest = out.as_str();
            while let Some(i) = rest.find(prefix) {
                done.push_str(&rest[..i]);
                done.push_str(prefix);
                done.push_str("[…]");
                let after = &rest[i + prefix.len()..];
                let hex = after.bytes().take_while(u8::is_ascii_hexdigit).count();
                rest = after[hex..].strip_prefix('…').unwrap_or(&after[hex..]);
            }
            done.push_str(rest);
            out = done;
        }
        // `[ENV]-20261123T062230Z.yaml` (and `-2.yaml` in the same second).
        let mut done = String::new();
        let mut rest = out.as_str();
        while let Some(i) = rest.find("[ENV]-") {
            done.push_str(&rest[..i]);
            let after = &rest[i + "[ENV]-".len()..];
            let stamp = if after.starts_with(|c: char| c.is_ascii_digit()) {
                after
                    .bytes()
                    .take_while(|b| b.is_ascii_digit() || matches!(b, b'T' | b'Z' | b'-'))
                    .count()
            } else {
                0
            };
            done.push_str(if stamp > 0 { "[ENV]-[STAMP]" } else { "[ENV]-" });
            rest = &after[stamp..];
        }
        done.push_str(rest);
        done
    }

    /// Removes this environment's containers (and only them).
    pub fn clean(&self) {
        // This machine's engine, and the fleet tests' second one (.ci/services/fleet.sh).
        for endpoint in [cascade_docker::DEFAULT_ENDPOINT, FLEET_NODE2] {
            if let Ok(d) = cascade_docker::Docker::connect_to(endpoint) {
                if let Ok(list) = d.containers_with(&[("cascade.env", &self.env)]) {
                    for c in list {
                        let _ = d.remove(&c.id);
                    }
                }
            }
        }
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        self.clean();
    }
}

/// `GET path` on 127.0.0.1:`port`; the body.
pub fn http_get(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}
