//! The architecture invariants of ARCHITECTURE.md, checked against `cargo metadata`
//! and the sources, so that they stay true.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// Package name → its normal (non-dev) dependencies.
fn dependencies() -> BTreeMap<String, Vec<String>> {
    metadata()
        .into_iter()
        .map(|(name, (_, deps))| (name, deps))
        .collect()
}

/// Every workspace package: name → (its directory, its normal dependencies).
fn metadata() -> BTreeMap<String, (std::path::PathBuf, Vec<String>)> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let root = xtask::workspace_root();
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(&root)
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    let mut map = BTreeMap::new();
    for p in meta["packages"].as_array().expect("packages") {
        let deps = p["dependencies"]
            .as_array()
            .expect("dependencies")
            .iter()
            .filter(|d| d["kind"].is_null())
            .filter_map(|d| d["name"].as_str().map(str::to_string))
            .collect();
        let dir = Path::new(p["manifest_path"].as_str().expect("manifest path"))
            .parent()
            .expect("package dir")
            .to_path_buf();
        map.insert(
            p["name"].as_str().unwrap_or_default().to_string(),
            (dir, deps),
        );
    }
    map
}

fn assert_only(deps: &BTreeMap<String, Vec<String>>, dep: &str, allowed: &[&str]) {
    for (pkg, ds) in deps {
        if ds.iter().any(|d| d == dep) {
            assert!(
                allowed.contains(&pkg.as_str()),
                "`{pkg}` must not depend on `{dep}`"
            );
        }
    }
}

#[test]
fn pure_crates_do_no_io() {
    let deps = dependencies();
    for pure in ["cascade-core", "cascade-manifest", "cascade-lock"] {
        let ds = deps
            .get(pure)
            .unwrap_or_else(|| panic!("no package {pure}"));
        for io in [
            "git2",
            "bollard",
            "tokio",
            "reqwest",
            "cascade-store",
            "cascade-exec",
            "cascade-git",
            "tempfile",
        ] {
            assert!(
                !ds.iter().any(|d| d == io),
                "pure crate `{pure}` depends on `{io}`"
            );
        }
    }
}

#[test]
fn one_crate_per_outside_concern() {
    let deps = dependencies();
    // Only cascade-git talks to git (xtask writes the example's repositories; tests make theirs).
    assert_only(&deps, "git2", &["cascade-git", "xtask", "cascade-tests"]);
    // Only the manifest and lockfile crates know which YAML library we use.
    assert_only(
        &deps,
        "serde-saphyr",
        &["cascade-manifest", "cascade-lock", "xtask"],
    );
    // Nothing is async (see ARCHITECTURE.md: the scheduler is a thread pool), but the
    // Docker and REAPI clients, which keep their runtimes private behind blocking APIs.
    assert_only(&deps, "tokio", &["cascade-docker", "cascade-reapi"]);
    assert_only(&deps, "bollard", &["cascade-docker"]);
    assert_only(&deps, "tonic", &["cascade-reapi"]);
    // HTTP: the registry client, the smoke tests' probe and the webhooks.
    assert_only(
        &deps,
        "ureq",
        &["cascade-registry", "cascade-docker", "cascade-notify"],
    );
    // Only the CLI renders and parses arguments, and draws progress.
    assert_only(&deps, "clap", &["cascade-cli", "xtask"]);
    // The cryptography lives in one crate.
    assert_only(&deps, "pgp", &["cascade-sign"]);
    assert_only(&deps, "ed25519-dalek", &["cascade-sign"]);
    assert_only(&deps, "indicatif", &["cascade-cli"]);
    // Only the image crate writes tar, gzip and sha256 (OCI's digests); the bench gzips
    // the same bytes as a baseline.
    for dep in ["tar", "sha2"] {
        assert_only(&deps, dep, &["cascade-image"]);
    }
    assert_only(&deps, "flate2", &["cascade-image", "xtask"]);
    // The layer encoder: miniz_oxide itself, not whichever backend flate2 was built with.
    assert_only(&deps, "miniz_oxide", &["cascade-image"]);
    // SHA-1 only for what SPDX requires of a release bundle's file list.
    assert_only(&deps, "sha1", &["cascade"]);
}

#[test]
fn every_crate_has_a_header_and_an_architecture_section() {
    let root = xtask::workspace_root();
    let arch = std::fs::read_to_string(root.join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let packages = metadata();
    assert!(packages.len() >= 10, "{packages:?}");
    for (name, (dir, _)) in &packages {
        let lib = dir.join("src/lib.rs");
        let text = std::fs::read_to_string(&lib).unwrap_or_default();
        assert!(
            text.trim_start().starts_with("//!"),
            "{} has no //! header",
            lib.display()
        );
        assert!(
            arch.lines()
                .any(|l| l.starts_with('#') && l.contains(&format!("`{name}`"))),
            "ARCHITECTURE.md has no section for `{name}`"
        );
    }
}
