//! The no-op fast path: a build whose inputs did not change since the last one is
//! answered from that build's snapshot, and every change that could change a key, a
//! version or the lockfile is seen, however it was made.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use cascade_tests::{Run, TestProject};

fn project() -> TestProject {
    let mut p = TestProject::new();
    p.write(
        "graph/environments/test.yaml",
        "name: test\nmode: branch\nsources:\n\
         \x20 base: { repo: ../../repos/base, ref: develop }\n\
         \x20 top:  { repo: ../../repos/top,  ref: develop }\n",
    );
    p.write("recipes/base.yaml", &recipe(&[], "make"));
    p.write("recipes/top.yaml", &recipe(&["base"], "make"));
    for name in ["base", "top"] {
        let data = format!("{name} data\n");
        p.commit(name, "develop", &[("data.txt", Some(&data))], "initial");
    }
    p
}

fn recipe(inputs: &[&str], step: &str) -> String {
    let cats: String = inputs
        .iter()
        .map(|i| format!(" inputs/{i}/out.txt"))
        .collect();
    format!(
        "inputs: [{}]\nrunner: {{ host: {{ tools: [sh, cat] }} }}\nsteps:\n  - name: {step}\n    run: cat{cats} data.txt > out.txt\noutputs: [out.txt]\n",
        inputs.join(", ")
    )
}

fn from_snapshot(r: &Run) -> bool {
    r.json()["from_snapshot"].as_bool().unwrap_or(false)
}

/// Sets a file's modification time back to what it was, as a careless tool might.
fn set_mtime(path: &Path, t: SystemTime) {
    let f = fs::File::options().write(true).open(path).expect("open");
    f.set_modified(t).expect("set mtime");
}

#[test]
fn a_second_build_is_answered_from_the_snapshot_with_the_same_report() {
    let p = project();
    let first = p.build("test", 0);
    assert_eq!(first.json()["built"], 2, "{}", first.stderr);
    assert!(!from_snapshot(&first));
    let second = p.build("test", 0);
    assert!(from_snapshot(&second), "{}", second.stdout);
    assert_eq!(second.json()["cached"], 2);
    assert_eq!(second.json()["lockfile"], first.json()["lockfile"]);
    for name in ["base", "top"] {
        for field in ["key", "output", "commit", "version"] {
            assert_eq!(
                second.node(name)[field],
                first.node(name)[field],
                "{name} {field}"
            );
        }
    }
    // The ordinary path agrees: with the snapshot gone, the same no-op.
    fs::remove_dir_all(p.root.join("cache/snapshots")).expect("snapshots");
    let third = p.build("test", 0);
    assert!(!from_snapshot(&third));
    assert_eq!(third.json()["built"], 0);
    assert_eq!(third.json()["lockfile"], first.json()["lockfile"]);
    assert_eq!(p.lockfiles().len(), 1, "a no-op writes no lockfile");
}

#[test]
fn a_recipe_edited_to_the_same_size_and_mtime_is_still_seen() {
    let p = project();
    p.build("test", 0);
    let path = p.root.join("recipes/top.yaml");
    let mtime = fs::metadata(&path)
        .and_then(|m| m.modified())
        .expect("mtime");
    // Same length, same mtime: only the content (and the ctime) differ.
    p.write("recipes/top.yaml", &recipe(&["base"], "mkae"));
    set_mtime(&path, mtime);
    let r = p.build("test", 0);
    assert!(!from_snapshot(&r));
    assert_eq!(r.with_status("built"), ["top"]);
    assert!(from_snapshot(&p.build("test", 0)));
}

#[test]
fn a_touched_recipe_with_the_same_content_is_still_a_no_op() {
    let p = project();
    let first = p.build("test", 0);
    let path = p.root.join("recipes/base.yaml");
    set_mtime(&path, SystemTime::now() + Duration::from_secs(5));
    let r = p.build("test", 0);
    assert!(from_snapshot(&r), "verified by content: {}", r.stdout);
    assert_eq!(r.json()["lockfile"], first.json()["lockfile"]);
}

#[test]
fn a_moved_ref_a_new_recipe_or_a_missing_store_entry_is_a_rebuild() {
    let mut p = project();
    p.build("test", 0);
    p.commit("base", "develop", &[("data.txt", Some("v2\n"))], "change");
    let r = p.build("test", 0);
    assert!(!from_snapshot(&r));
    let mut built = r.with_status("built");
    built.sort();
    assert_eq!(built, ["base", "top"]);

    // A new file in recipes/ is a miss (it may change the graph).
    p.write("recipes/unused.yaml", &recipe(&[], "make"));
    assert!(!from_snapshot(&p.build("test", 0)));
    p.remove("recipes/unused.yaml");
    p.build("test", 0);
    assert!(from_snapshot(&p.build("test", 0)));

    // An action result removed from the store (by hand, or a gc) rebuilds that node.
    let key = p.build("test", 0).node("top")["key"]
        .as_str()
        .expect("key")
        .to_string();
    let hex = key.trim_start_matches("blake3:");
    let action = p.root.join("cache/actions").join(&hex[..2]).join(hex);
    fs::remove_file(&action).expect("the action result");
    let r = p.build("test", 0);
    assert!(!from_snapshot(&r));
    assert_eq!(r.with_status("built"), ["top"]);
}

/// A node that was a cache hit is recorded from what its lookup read and checked: an
/// entry of its output that goes missing afterwards is still seen, and rebuilt.
#[test]
fn a_cache_hits_store_entries_are_watched_too() {
    let mut p = project();
    p.build("test", 0);
    p.commit(
        "top",
        "develop",
        &[("data.txt", Some("top v2\n"))],
        "change",
    );
    let r = p.build("test", 0);
    assert_eq!(r.with_status("built"), ["top"], "{}", r.stderr);
    assert_eq!(r.with_status("cached"), ["base"]);
    assert!(from_snapshot(&p.build("test", 0)));

    // base's one output file, `out.txt`, is the blob of its bytes.
    let hex = blake3::hash(b"base data\n").to_hex().to_string();
    let blob = p.root.join("cache/blobs").join(&hex[..2]).join(&hex);
    fs::remove_file(&blob).expect("base's output blob");
    let r = p.build("test", 0);
    assert!(!from_snapshot(&r), "{}", r.stdout);
    assert_eq!(r.with_status("built"), ["base"], "{}", r.stderr);
    assert!(blob.is_file(), "rebuilt into the store");
    assert!(from_snapshot(&p.build("test", 0)));
}

#[test]
fn a_tag_that_changes_a_version_is_seen() {
    let p = project();
    let first = p.build("test", 0);
    let sha = first.node("base")["commit"]
        .as_str()
        .expect("commit")
        .to_string();
    p.tag("base", "v1.0.0", &sha);
    let r = p.build("test", 0);
    assert!(!from_snapshot(&r), "a new tag may change versions");
    assert!(from_snapshot(&p.build("test", 0)));
}

#[test]
fn a_deleted_lockfile_is_written_again() {
    let p = project();
    p.build("test", 0);
    for l in p.lockfiles() {
        fs::remove_file(l).expect("remove");
    }
    let r = p.build("test", 0);
    assert!(!from_snapshot(&r));
    assert_eq!(p.lockfiles().len(), 1);
}

#[test]
fn a_changed_tool_on_path_is_seen() {
    let p = project();
    let bin = tempfile::tempdir().expect("dir");
    let early = tempfile::tempdir().expect("dir");
    let cat = bin.path().join("cat");
    fs::copy(which("cat"), &cat).expect("copy cat");
    let path = format!(
        "{}:{}:{}",
        early.path().display(),
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let build = || {
        let out = std::process::Command::new(cascade_tests::engine::cascade_bin())
            .args(["--project"])
            .arg(&p.root)
            .args(["build", "--env", "test", "--json", "--store"])
            .arg(p.root.join("cache"))
            .env("PATH", &path)
            .output()
            .expect("cascade");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        v
    };
    let first = build();
    assert_eq!(first["built"], 2);
    assert_eq!(build()["from_snapshot"], true);

    // The same tool, one byte longer (still runs): a new runner identity.
    let mut bytes = fs::read(&cat).expect("read");
    bytes.push(0);
    fs::write(&cat, &bytes).expect("write");
    let r = build();
    assert_eq!(r["from_snapshot"], serde_json::Value::Null);
    assert_eq!(r["built"], 2);
    assert_eq!(build()["from_snapshot"], true);

    // A `cat` that appears earlier on PATH is the one steps get.
    bytes.push(0);
    fs::write(early.path().join("cat"), &bytes).expect("write");
    fs::set_permissions(early.path().join("cat"), fs::Permissions::from_mode(0o755))
        .expect("chmod");
    let r = build();
    assert_eq!(r["from_snapshot"], serde_json::Value::Null);
    assert_eq!(r["built"], 2);
}

fn which(tool: &str) -> std::path::PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{tool} on PATH"))
}

#[test]
fn a_plan_from_the_snapshot_says_what_the_full_plan_says() {
    let p = project();
    p.build("test", 0);
    let quick = p.run(&["plan", "--env", "test", "--json"]);
    assert_eq!(quick.code, 0, "{}", quick.stderr);
    fs::remove_dir_all(p.root.join("cache/snapshots")).expect("snapshots");
    let full = p.run(&["plan", "--env", "test", "--json"]);
    assert_eq!(full.code, 0, "{}", full.stderr);
    assert_eq!(quick.json(), full.json());
    assert_eq!(quick.json()["cached"], 2);
    // The text a person reads is the same too.
    p.build("test", 0);
    let text = p.run(&["plan", "--env", "test"]);
    fs::remove_dir_all(p.root.join("cache/snapshots")).expect("snapshots");
    assert_eq!(text.stdout, p.run(&["plan", "--env", "test"]).stdout);
}

/// The resolved-graph cache beside the snapshot: `None` before a build made one.
fn graph_cache(p: &TestProject) -> Option<std::path::PathBuf> {
    fs::read_dir(p.root.join("cache/snapshots"))
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|path| path.to_string_lossy().ends_with(".graph.bin"))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The lockfile a build wrote (or found identical), as text.
fn lockfile_of(p: &TestProject, r: &Run) -> String {
    let rel = r.json()["lockfile"].as_str().expect("lockfile").to_string();
    fs::read_to_string(p.root.join(rel)).expect("lockfile")
}

#[test]
fn after_a_commit_the_graph_comes_from_the_cache_and_builds_what_a_fresh_resolve_builds() {
    let mut p = project();
    p.build("test", 0);
    let cached = graph_cache(&p).expect("a build keeps the graph it resolved");
    // The build after a commit takes the cached graph: one tampered with under the same
    // key shows through (the step's text is in `top`'s key).
    let mut bytes = fs::read(&cached).expect("graph");
    let step = b"cat inputs/base/out.txt data.txt > out.txt";
    let at = find(&bytes, step).expect("the step's text in the cached graph");
    // The same length: the cache stays well formed.
    bytes[at..at + step.len()].copy_from_slice(b"cat data.txt inputs/base/out.txt > out.txt");
    fs::write(&cached, bytes).expect("tamper");
    p.commit("base", "develop", &[("data.txt", Some("v2\n"))], "change");
    let via_tampered = p.build("test", 0);
    fs::remove_file(&cached).expect("graph");
    fs::remove_dir_all(p.root.join("cache/snapshots")).expect("snapshots");
    let resolved = p.build("test", 0);
    assert_ne!(
        resolved.node("top")["key"],
        via_tampered.node("top")["key"],
        "the tampered graph was not used"
    );
    assert_eq!(
        resolved.node("base")["key"],
        via_tampered.node("base")["key"]
    );

    // A manifest's new content (whatever its date) is resolved afresh and kept.
    p.write("recipes/top.yaml", &recipe(&["base"], "mkae"));
    assert_eq!(p.build("test", 0).with_status("built"), ["top"]);
    assert!(find(&fs::read(&cached).expect("graph"), b"mkae").is_some());

    // A graph from the cache gives the lockfile a fresh resolve gives, byte for byte.
    p.commit(
        "base",
        "develop",
        &[("data.txt", Some("v3\n"))],
        "change again",
    );
    let via_cache = p.build("test", 0);
    let lock_via_cache = lockfile_of(&p, &via_cache);
    fs::remove_dir_all(p.root.join("cache/snapshots")).expect("snapshots");
    fs::remove_dir_all(p.root.join("lockfiles")).expect("lockfiles");
    let resolved = p.build("test", 0);
    assert_eq!(resolved.json()["built"], 0, "{}", resolved.stdout);
    assert_eq!(lockfile_of(&p, &resolved), lock_via_cache);
}

#[test]
fn a_torn_or_foreign_graph_cache_is_ignored() {
    let mut p = project();
    p.build("test", 0);
    let cached = graph_cache(&p).expect("graph cache");
    let good = fs::read(&cached).expect("graph");
    let torn: [&[u8]; 4] = [
        b"{\"key\":",
        b"not a graph at all",
        &good[..good.len() / 2],
        &good[..good.len() - 1],
    ];
    for (i, bad) in torn.into_iter().enumerate() {
        fs::write(&cached, bad).expect("corrupt");
        let data = format!("change {i}\n");
        p.commit("base", "develop", &[("data.txt", Some(&data))], "change");
        let r = p.build("test", 0);
        assert_eq!(r.json()["built"], 2, "{}", r.stderr);
        // The ordinary path resolved the graph and kept it again.
        assert_eq!(fs::read(&cached).expect("graph"), good);
    }
}
