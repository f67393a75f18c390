//! The fuzzers' saved corpus, replayed on stable Rust as ordinary tests (issue #7):
//! every file under `fuzz/corpus/<target>/`, `fuzz/seeds/<target>/` and (a crash input
//! kept with its fix) `fuzz/artifacts/<target>/` goes through the same code as the cargo-fuzz target
//! (`fuzz/harness.rs`, included here word for word), and must not panic. Diagnostics
//! are rendered with the CLI's own `render`.

use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

#[path = "../../fuzz/harness.rs"]
mod harness;

struct Cli;

impl harness::Render for Cli {
    fn manifest(&self, d: &cascade_manifest::Diagnostics) {
        let _ = cascade_cli::render(d, false);
    }
    fn lock(&self, e: &cascade_lock::LockError) {
        let _ = cascade_cli::render(e, false);
    }
    fn diff(&self, d: &cascade::LockDiff) {
        let _ = cascade_cli::lock_diff_text(d);
    }
}

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The inputs saved for `target`, sorted by name.
fn inputs(target: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for kind in ["corpus", "seeds", "artifacts"] {
        let dir = fuzz_dir().join(kind).join(target);
        let Ok(rd) = fs::read_dir(&dir) else { continue };
        out.extend(rd.flatten().map(|e| e.path()).filter(|p| p.is_file()));
    }
    out.sort();
    out
}

/// Runs every input of `target` through `run`, then fails with the list of those that
/// panicked (each with its panic message).
fn replay(target: &str, min: usize, run: impl Fn(&[u8])) {
    let files = inputs(target);
    assert!(
        files.len() >= min,
        "only {} inputs in fuzz/corpus/{target}",
        files.len()
    );
    let mut panicked = Vec::new();
    for f in &files {
        let data = fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        if let Err(e) = catch_unwind(AssertUnwindSafe(|| run(&data))) {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panicked.push(format!("{}: {msg}", f.display()));
        }
    }
    assert!(
        panicked.is_empty(),
        "{} of {} inputs of `{target}` panicked:\n{}",
        panicked.len(),
        files.len(),
        panicked.join("\n")
    );
}

#[test]
fn manifest_corpus_does_not_panic() {
    replay("manifest", 50, |d| harness::manifest(d, &Cli));
}

#[test]
fn lockfile_corpus_does_not_panic() {
    replay("lockfile", 20, |d| harness::lockfile(d, &Cli));
}

#[test]
fn decoders_corpus_does_not_panic() {
    replay("decoders", 20, harness::decoders);
}

/// The separator really splits: a two-part input is an environment and a recipe that
/// resolve (so the corpus is not all environments with the default recipe).
#[test]
fn the_manifest_harness_resolves_a_valid_project() {
    let env = "name: test\nmode: branch\nsources:\n  lib: { repo: ../l, ref: main }\n  app: { repo: ../a, ref: main }\n";
    let input = format!("{env}{}{}", harness::SEPARATOR, harness::DEFAULT_RECIPE);
    struct Fail;
    impl harness::Render for Fail {
        fn manifest(&self, d: &cascade_manifest::Diagnostics) {
            panic!("{}", cascade_cli::render(d, false));
        }
        fn lock(&self, e: &cascade_lock::LockError) {
            panic!("{}", cascade_cli::render(e, false));
        }
    }
    harness::manifest(input.as_bytes(), &Fail);
}
