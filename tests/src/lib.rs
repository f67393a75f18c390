//! Test support: a [`TestProject`] is a temporary cascade project with its own git
//! repositories (fixed author and committer dates, so SHAs are stable), its own
//! store, and a way to run `cascade` in-process and look at what it printed.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub mod engine;

/// Whether a test that needs `what` can run. In CI (`CI=true`) a missing service is a
/// failure, since .ci/run starts it; elsewhere the test says why it skips.
pub fn require(what: &str, available: bool, how: &str) -> bool {
    if available {
        return true;
    }
    assert!(
        std::env::var("CI").is_err(),
        "{what} is not available in CI; {how}"
    );
    eprintln!("skipping: {what} is not available ({how})");
    false
}

/// The repository's root (where `.ci/` and `tests/judges/` are).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The python of securesystemslib's virtualenv
/// (`${CASCADE_SERVICES_DIR:-/tmp/cascade-services}/sslib-venv`), made by
/// `.ci/services/sslib.sh` first when it is missing; `None` (a skip, or a failure with
/// `CI=true`) when that fails.
pub fn sslib_python() -> Option<PathBuf> {
    let state = std::env::var_os("CASCADE_SERVICES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/cascade-services"));
    let ok = std::process::Command::new("bash")
        .arg(repo_root().join(".ci/services/sslib.sh"))
        .status()
        .is_ok_and(|s| s.success());
    require("securesystemslib", ok, "run .ci/services/sslib.sh")
        .then(|| state.join("sslib-venv/bin/python"))
}

/// A Docker Engine answers (DOCKER_HOST or /var/run/docker.sock).
pub fn docker() -> bool {
    require(
        "a Docker Engine",
        cascade_docker::Docker::connect().is_ok(),
        "run .ci/services/docker.sh",
    )
}

/// An OCI registry answers on `addr` (`127.0.0.1:5000`) with `status` at `/v2/`.
pub fn registry(addr: &str, status: u16) -> bool {
    let answers = (|| -> std::io::Result<bool> {
        let mut s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(s, "GET /v2/ HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head)?;
        Ok(head.starts_with(format!("HTTP/1.1 {status}").as_bytes())
            || head.starts_with(format!("HTTP/1.0 {status}").as_bytes()))
    })()
    .unwrap_or(false);
    require(
        &format!("the registry on {addr}"),
        answers,
        "run .ci/services/registry.sh",
    )
}

/// A directory that steps may write to, so a test can watch them from outside (marks,
/// counters): the sandbox shows steps nothing of the host's but what it binds, so every
/// such directory is under one per-process directory that `CASCADE_SANDBOX_SHARE`
/// binds into every sandbox (the test hook for exactly this).
pub fn step_writable_dir() -> tempfile::TempDir {
    static SHARED: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    let base = SHARED.get_or_init(|| {
        let base = std::env::temp_dir().join(format!("cascade-test-marks-{}", std::process::id()));
        std::fs::create_dir_all(&base).expect("the marks directory");
        std::env::set_var("CASCADE_SANDBOX_SHARE", &base);
        base
    });
    tempfile::Builder::new()
        .prefix("marks-")
        .tempdir_in(base)
        .expect("a marks directory")
}

/// Replaces, after every `prefix` in `text`, the run of characters `keep` accepts with
/// `with` (redacting stamps, digests and the like for snapshots).
pub fn replace_after(text: &str, prefix: &str, keep: impl Fn(char) -> bool, with: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find(prefix) {
        out.push_str(&rest[..i + prefix.len()]);
        rest = &rest[i + prefix.len()..];
        let n = rest.find(|c: char| !keep(c)).unwrap_or(rest.len());
        out.push_str(with);
        rest = &rest[n..];
    }
    out.push_str(rest);
    out
}

/// Copies a directory tree (files and directories only).
pub fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// What one `cascade` invocation did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The `--json` document.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }

    /// One node of the `--json` document, by name.
    pub fn node(&self, name: &str) -> serde_json::Value {
        self.json()["nodes"]
            .as_array()
            .and_then(|a| a.iter().find(|n| n["name"] == name).cloned())
            .unwrap_or_else(|| panic!("no node `{name}` in:\n{}", self.stdout))
    }

    /// Node name → status (`built`, `cached`, `failed`, …) from the `--json` document.
    pub fn statuses(&self) -> Vec<(String, String)> {
        let j = self.json();
        j["nodes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|n| {
                        (
                            n["name"].as_str().unwrap_or("").to_string(),
                            n["status"].as_str().unwrap_or("").to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn with_status(&self, status: &str) -> Vec<String> {
        self.statuses()
            .into_iter()
            .filter(|(_, s)| s == status)
            .map(|(n, _)| n)
            .collect()
    }
}

/// Runs `cascade <args…>` in-process, capturing what it prints.
pub fn cascade(args: &[String]) -> Run {
    let full = std::iter::once("cascade".to_string()).chain(args.iter().cloned());
    let mut out = Vec::new();
    let mut err = Vec::new();
    let code = cascade_cli::run_with(full, &mut out, &mut err, false);
    Run {
        code,
        stdout: String::from_utf8_lossy(&out).into_owned(),
        stderr: String::from_utf8_lossy(&err).into_owned(),
    }
}

/// The remote-cache tests' project: environment `test`, base → app, each a host step
/// that writes `out/out.txt` (base's data; base's output and app's data); `extra` is more
/// of app's step, `salt` goes into base's data (so its blobs are the test's own).
pub fn base_app(extra: &str, salt: &str) -> TestProject {
    let mut p = TestProject::new();
    p.write(
        "graph/environments/test.yaml",
        "name: test\nmode: branch\nsources:\n\
         \x20 base: { repo: ../../repos/base, ref: develop }\n\
         \x20 app:  { repo: ../../repos/app,  ref: develop }\n",
    );
    let recipe = |inputs: &str, cat: &str, extra: &str| {
        format!(
            "inputs: [{inputs}]\nrunner: {{ host: {{ tools: [sh, cat, mkdir, date, sleep] }} }}\ntimeout: 1m\nsteps:\n  - name: make\n    run: |\n      mkdir -p out/share\n      cat {cat} data.txt > out/out.txt\n{extra}outputs: [out]\n"
        )
    };
    p.write("recipes/base.yaml", &recipe("", "", ""));
    p.write(
        "recipes/app.yaml",
        &recipe("base", "inputs/base/out/out.txt", extra),
    );
    for name in ["base", "app"] {
        let data = if name == "base" {
            format!("{name} data{salt}\n")
        } else {
            format!("{name} data\n")
        };
        p.commit(name, "develop", &[("data.txt", Some(&data))], "initial");
    }
    p
}

pub struct TestProject {
    _dir: tempfile::TempDir,
    pub root: PathBuf,
    /// Seconds since the epoch of the next commit; each commit adds an hour.
    clock: i64,
}

impl Default for TestProject {
    fn default() -> Self {
        Self::new()
    }
}

impl TestProject {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().join("project");
        fs::create_dir_all(root.join("graph/environments")).expect("mkdir");
        fs::create_dir_all(root.join("recipes")).expect("mkdir");
        TestProject {
            _dir: dir,
            root,
            clock: 1_767_225_600, // 2026-01-01T00:00:00Z
        }
    }

    pub fn write(&self, rel: &str, text: &str) {
        let p = self.root.join(rel);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).expect("mkdir");
        }
        fs::write(p, text).expect("write");
    }

    pub fn remove(&self, rel: &str) {
        fs::remove_file(self.root.join(rel)).expect("remove");
    }

    pub fn repo_path(&self, name: &str) -> PathBuf {
        self.root.join("repos").join(name)
    }

    /// Commits `files` (path, content; `None` deletes) on `branch` of repository
    /// `name` (created on first use), on top of the branch's tip. Returns the SHA.
    pub fn commit(
        &mut self,
        name: &str,
        branch: &str,
        files: &[(&str, Option<&str>)],
        message: &str,
    ) -> String {
        let path = self.repo_path(name);
        let repo = match git2::Repository::open(&path) {
            Ok(r) => r,
            Err(_) => {
                fs::create_dir_all(&path).expect("mkdir");
                git2::Repository::init(&path).expect("git init")
            }
        };
        let parent = repo
            .find_branch(branch, git2::BranchType::Local)
            .ok()
            .and_then(|b| b.get().peel_to_commit().ok())
            .or_else(|| repo.head().ok().and_then(|h| h.peel_to_commit().ok()));
        // Start from the parent's tree, in memory: the work tree is not involved.
        let mut index = git2::Index::new().expect("index");
        if let Some(p) = &parent {
            index
                .read_tree(&p.tree().expect("tree"))
                .expect("read tree");
        }
        for (file, content) in files {
            match content {
                Some(c) => {
                    let oid = repo.blob(c.as_bytes()).expect("blob");
                    let mode = if c.starts_with("#!") {
                        0o100755
                    } else {
                        0o100644
                    };
                    let entry = git2::IndexEntry {
                        ctime: git2::IndexTime::new(0, 0),
                        mtime: git2::IndexTime::new(0, 0),
                        dev: 0,
                        ino: 0,
                        mode,
                        uid: 0,
                        gid: 0,
                        file_size: c.len() as u32,
                        id: oid,
                        flags: 0,
                        flags_extended: 0,
                        path: file.as_bytes().to_vec(),
                    };
                    index.add(&entry).expect("index add");
                }
                None => index.remove_path(Path::new(file)).expect("index remove"),
            }
        }
        let tree_id = index.write_tree_to(&repo).expect("write tree");
        let tree = repo.find_tree(tree_id).expect("tree");
        let sig = git2::Signature::new("Test", "test@example.com", &git2::Time::new(self.clock, 0))
            .expect("signature");
        self.clock += 3600;
        let parents: Vec<&git2::Commit> = parent.iter().collect();
        let oid = repo
            .commit(None, &sig, &sig, message, &tree, &parents)
            .expect("commit");
        // A reference update, not `branch()`, which refuses to move the checked-out branch.
        repo.reference(&format!("refs/heads/{branch}"), oid, true, "commit")
            .expect("branch");
        if repo.head().is_err() {
            repo.set_head(&format!("refs/heads/{branch}"))
                .expect("set head");
        }
        oid.to_string()
    }

    /// A merge commit on `branch` of repository `name` whose second parent is `other`
    /// (a SHA), with the branch tip's tree and `message`. Returns the SHA.
    pub fn merge(&mut self, name: &str, branch: &str, other: &str, message: &str) -> String {
        let repo = git2::Repository::open(self.repo_path(name)).expect("open");
        let tip = repo
            .find_branch(branch, git2::BranchType::Local)
            .expect("branch")
            .get()
            .peel_to_commit()
            .expect("tip");
        let other = repo
            .find_commit(git2::Oid::from_str(other).expect("sha"))
            .expect("other");
        let sig = git2::Signature::new("Test", "test@example.com", &git2::Time::new(self.clock, 0))
            .expect("signature");
        self.clock += 3600;
        let tree = tip.tree().expect("tree");
        let oid = repo
            .commit(None, &sig, &sig, message, &tree, &[&tip, &other])
            .expect("commit");
        repo.reference(&format!("refs/heads/{branch}"), oid, true, "merge")
            .expect("branch");
        oid.to_string()
    }

    pub fn tag(&self, name: &str, tag: &str, sha: &str) {
        let repo = git2::Repository::open(self.repo_path(name)).expect("open");
        let obj = repo.revparse_single(sha).expect("rev");
        repo.tag_lightweight(tag, &obj, true).expect("tag");
    }

    /// Runs `cascade --project <root> <args…> --store <root>/cache` in-process (the store
    /// only for the commands that take one).
    pub fn run(&self, args: &[&str]) -> Run {
        let mut full: Vec<String> = vec!["--project".into(), self.root.display().to_string()];
        full.extend(args.iter().map(|s| s.to_string()));
        let uses_store = matches!(args.first(), Some(&("build" | "plan" | "why" | "graph")));
        if uses_store && !args.contains(&"--store") {
            full.push("--store".into());
            full.push(self.root.join("cache").display().to_string());
        }
        cascade(&full)
    }

    /// `cascade build --env <env> --json`, asserting the exit code.
    pub fn build(&self, env: &str, expect_code: i32) -> Run {
        let r = self.run(&["build", "--env", env, "--json"]);
        assert_eq!(
            r.code, expect_code,
            "exit code\nstdout:\n{}\nstderr:\n{}",
            r.stdout, r.stderr
        );
        r
    }

    /// The file `path` of `node`'s output in a build's `--json` report, read back from
    /// this project's store.
    pub fn output_file(&self, r: &Run, node: &str, path: &str) -> String {
        let store = cascade_store::Store::open(self.root.join("cache")).expect("the store");
        let dir = tempfile::tempdir().expect("a temp dir");
        let out = dir.path().join("out");
        fs::create_dir(&out).expect("a directory");
        let digest: cascade_core::OutputDigest = r.node(node)["output"]
            .as_str()
            .expect("an output digest")
            .parse()
            .expect("a digest");
        store.materialize(&digest, &out).expect("the output");
        let text = fs::read_to_string(out.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
        cascade_store::remove_tree(&out).expect("removed");
        text
    }

    /// The lockfiles written so far, oldest first (by name).
    pub fn lockfiles(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(self.root.join("lockfiles"))
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Replaces the temp root in text with `[ROOT]`, for snapshots.
    pub fn redact(&self, text: &str) -> String {
        text.replace(&self.root.display().to_string(), "[ROOT]")
    }
}
