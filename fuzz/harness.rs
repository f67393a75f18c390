//! What each fuzz target does with its input, shared word for word by the libFuzzer
//! targets (`fuzz/fuzz_targets/*.rs`) and the stable replay of the saved corpus
//! (`tests/tests/fuzz_corpus.rs`), both through `#[path]`. Everything here must hold
//! for any input; a panic is a bug.
//!
//! - [`manifest`]: the input is split at [`SEPARATOR`] lines into an environment file,
//!   one recipe (`app`) and optionally `graph/compatibility.yaml`, and resolved as
//!   cascade's load stage would (plus a fixed recipe `lib`); diagnostics are rendered;
//!   a graph that resolves is checked against fixed versions, and its recipes' canonical
//!   encodings must decode back to the same bytes.
//! - [`lockfile`]: `cascade_lock::read`; a lockfile that reads must write and read back
//!   to the same value, and go on through what `lock diff` computes and prints: against
//!   itself (every node unchanged) and as the first lockfile (every node added), each
//!   node's summary line, and the CLI's text (in the stable replay).
//! - [`decoders`]: the four canonical decoders; whatever decodes must encode and decode
//!   again to the same bytes.

use std::collections::BTreeMap;

use cascade_core::{KeyIngredients, Tree};
use cascade_manifest::{ImageDecl, ProjectFiles, Recipe, SourceDb};

/// Separates the environment, the recipe and the compatibility matrix in a manifest input.
pub const SEPARATOR: &str = "\n%%\n";

/// The recipe used when a manifest input has no separator.
pub const DEFAULT_RECIPE: &str = "inputs: [lib]\nrunner: { host: { tools: [sh] } }\nsteps: [{ name: build, run: echo > out }]\noutputs: [out]\n";

/// A second component, always present, so inputs and ranges have something to name.
const LIB_RECIPE: &str =
    "runner: { host: { tools: [sh] } }\nsteps: [{ name: build, run: echo > out }]\noutputs: [out]\n";

/// How a caller renders diagnostics (the CLI's `render` in the tests; miette's graphical
/// handler, configured the same way, in the fuzz targets). Rendering must not panic.
pub trait Render {
    fn manifest(&self, d: &cascade_manifest::Diagnostics);
    fn lock(&self, e: &cascade_lock::LockError);
    /// A lock diff as `cascade lock diff` prints it (the fuzz targets build no CLI).
    fn diff(&self, _d: &cascade::LockDiff) {}
}

pub fn manifest(data: &[u8], render: &dyn Render) {
    let Ok(text) = std::str::from_utf8(data) else {
        return; // load reads files as UTF-8: such a file never reaches resolve
    };
    let mut parts = text.splitn(3, SEPARATOR);
    let env = parts.next().unwrap_or_default();
    let recipe = parts.next().unwrap_or(DEFAULT_RECIPE);
    let compat = parts.next();

    let mut db = SourceDb::new();
    let environment = db.add("graph/environments/test.yaml", env);
    let compatibility = compat.map(|c| db.add("graph/compatibility.yaml", c));
    let app = db.add("recipes/app.yaml", recipe);
    let lib = db.add("recipes/lib.yaml", LIB_RECIPE);
    let files = ProjectFiles {
        environment,
        compatibility,
        recipes: vec![("app".to_string(), app), ("lib".to_string(), lib)],
    };
    // A recipe on its own, as a replay reads one from the project's history.
    let _ = cascade_manifest::recipe_alone(&db, app, "app");
    match cascade_manifest::resolve(&db, &files) {
        Err(u) => render.manifest(&u.diagnostics),
        Ok(graph) => {
            for c in &graph.components {
                let bytes = c.recipe.canonical();
                let back = Recipe::decode_canonical(&bytes)
                    .unwrap_or_else(|e| panic!("recipe `{}` does not decode: {e}", c.name));
                assert_eq!(back.canonical(), bytes, "recipe `{}` round trip", c.name);
                if let Some(image) = &c.recipe.image {
                    let bytes = image.canonical();
                    let back = ImageDecl::decode_canonical(&bytes)
                        .unwrap_or_else(|e| panic!("image of `{}` does not decode: {e}", c.name));
                    assert_eq!(back.canonical(), bytes, "image of `{}` round trip", c.name);
                }
            }
            for version in ["1.0.1-dev.1", "0.0.0-dev.3", "2.0.0"] {
                let mut versions = BTreeMap::new();
                for c in &graph.components {
                    versions.insert(c.name.clone(), version.parse().expect("a version"));
                }
                if let Err(d) = cascade_manifest::check_compatibility(&db, &graph, &versions) {
                    render.manifest(&d);
                }
            }
        }
    }
}

pub fn lockfile(data: &[u8], render: &dyn Render) {
    let Ok(text) = std::str::from_utf8(data) else {
        return; // read as UTF-8 by the engine
    };
    match cascade_lock::read("lockfile.yaml", text) {
        Err(e) => render.lock(&e),
        Ok(lock) => {
            let written = cascade_lock::write(&lock);
            let again = cascade_lock::read("lockfile.yaml", &written).unwrap_or_else(|e| {
                panic!("what write() wrote does not read back: {e:?}\n{written}")
            });
            assert_eq!(
                again, lock,
                "write then read changed the lockfile:\n{written}"
            );
            assert_eq!(cascade_lock::write(&again), written, "write is not stable");
            past_read(&lock, render);
        }
    }
}

/// What `lock diff` does with a lockfile that reads (no repository: no distances).
fn past_read(lock: &cascade_lock::Lockfile, render: &dyn Render) {
    let none: &cascade::DistanceFn<'_> = &|_, _, _| None;
    let same = cascade::diff_lockfiles(Some(("a.yaml", lock)), ("b.yaml", lock), none);
    assert_eq!(
        same.unchanged,
        lock.nodes.len(),
        "a lockfile differs from itself"
    );
    render.diff(&same);
    let first = cascade::diff_lockfiles(None, ("b.yaml", lock), none);
    assert_eq!(
        first.added,
        lock.nodes.len(),
        "a first lockfile adds every node"
    );
    render.diff(&first);
    for node in lock.nodes.values() {
        let _ = cascade::NodeState::of(node).summary();
    }
}

pub fn decoders(data: &[u8]) {
    if let Ok(k) = KeyIngredients::decode(data) {
        let bytes = k.encode();
        let back = KeyIngredients::decode(&bytes).expect("re-encoded key ingredients decode");
        assert_eq!(back.encode(), bytes, "key ingredients round trip");
        let _ = k.key();
    }
    if let Ok(t) = Tree::decode(data) {
        let bytes = t.encode();
        let back = Tree::decode(&bytes).expect("a re-encoded tree decodes");
        assert_eq!(back.encode(), bytes, "tree round trip");
    }
    if let Ok(r) = Recipe::decode_canonical(data) {
        let bytes = r.canonical();
        let back = Recipe::decode_canonical(&bytes).expect("a re-encoded recipe decodes");
        assert_eq!(back.canonical(), bytes, "recipe round trip");
    }
    if let Ok(i) = ImageDecl::decode_canonical(data) {
        let bytes = i.canonical();
        let back = ImageDecl::decode_canonical(&bytes).expect("a re-encoded image decodes");
        assert_eq!(back.canonical(), bytes, "image declaration round trip");
    }
}
