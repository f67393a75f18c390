//! Shared by the integration tests: load a fixture project, render diagnostics.

#![allow(dead_code)]

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use cascade_manifest::{Graph, ProjectFiles, Rev, SourceDb};
use miette::{Diagnostic, GraphicalReportHandler, GraphicalTheme};

/// `test_data/` at the workspace root.
pub fn test_data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../test_data")
}

/// The fixture directories of one kind (`ok` or `err`), sorted.
pub fn fixtures(kind: &str) -> Vec<(String, PathBuf)> {
    let mut out: Vec<(String, PathBuf)> = fs::read_dir(test_data().join(kind))
        .unwrap_or_else(|e| panic!("test_data/{kind}: {e}"))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_dir())
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), p))
        .collect();
    out.sort();
    out
}

/// Load a project directory the way the CLI does: the environment `test`, the
/// compatibility matrix if any, every `recipes/*.yaml` by stem.
pub fn load(dir: &Path) -> (SourceDb, ProjectFiles) {
    let mut db = SourceDb::new();
    let read = |rel: &str| {
        fs::read_to_string(dir.join(rel))
            .unwrap_or_else(|e| panic!("{}: {e}", dir.join(rel).display()))
    };
    let env_path = "graph/environments/test.yaml";
    let environment = db.add(env_path, read(env_path));
    let compat_path = "graph/compatibility.yaml";
    let compatibility = dir
        .join(compat_path)
        .exists()
        .then(|| db.add(compat_path, read(compat_path)));
    let mut recipes = Vec::new();
    if let Ok(entries) = fs::read_dir(dir.join("recipes")) {
        let mut names: Vec<String> = entries
            .map(|e| {
                e.expect("directory entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .filter(|n| n.ends_with(".yaml"))
            .collect();
        names.sort();
        for name in names {
            let rel = format!("recipes/{name}");
            let id = db.add(rel.clone(), read(&rel));
            recipes.push((name.trim_end_matches(".yaml").to_string(), id));
        }
    }
    (
        db,
        ProjectFiles {
            environment,
            compatibility,
            recipes,
        },
    )
}

/// A diagnostic as a user sees it without colour.
pub fn render(d: &dyn Diagnostic) -> String {
    let mut out = String::new();
    GraphicalReportHandler::new_themed(GraphicalTheme::unicode_nocolor())
        .with_width(100)
        .render_report(&mut out, d)
        .expect("rendering into a string");
    out
}

/// A short text summary of a resolved graph.
pub fn summary(db: &SourceDb, g: &Graph) -> String {
    let mut s = String::new();
    let e = &g.environment;
    let _ = writeln!(
        s,
        "environment `{}` ({} mode) in {}; registry: {}; tag: {}",
        e.name,
        e.mode,
        db.path(e.file),
        e.registry.as_deref().unwrap_or("-"),
        e.tag.as_deref().unwrap_or("-"),
    );
    for (i, c) in g.components.iter().enumerate() {
        let inputs: Vec<&str> = c
            .inputs
            .iter()
            .map(|&j| g.components[j].name.as_str())
            .collect();
        let rev = match &c.source.rev {
            Rev::Ref(r) => format!("ref {r}"),
            Rev::Version(v) => format!("version {v}"),
        };
        let r = &c.recipe;
        let _ = writeln!(s, "{i}. {} <- [{}]", c.name, inputs.join(", "));
        let _ = writeln!(
            s,
            "   source: {} @ {rev}{}",
            c.source.repo,
            c.source
                .dir
                .as_deref()
                .map(|d| format!(", dir {d}"))
                .unwrap_or_default()
        );
        let _ = writeln!(
            s,
            "   recipe: {} ({})",
            db.path(c.recipe_file),
            r.digest().short(16)
        );
        match &r.runner {
            cascade_manifest::RunnerDecl::Host { tools, sets } => {
                let _ = writeln!(s, "   tools: [{}]", tools.join(", "));
                if !sets.is_empty() {
                    let _ = writeln!(s, "   sets: [{}]", sets.join(", "));
                }
            }
            cascade_manifest::RunnerDecl::Container { image } => {
                let after = c
                    .runner_image
                    .map(|b| format!(" (after {})", g.components[b].name))
                    .unwrap_or_default();
                let _ = writeln!(s, "   container: {image}{after}");
            }
        }
        if !r.env.is_empty() {
            let env: Vec<String> = r.env.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
            let _ = writeln!(s, "   env: {}", env.join(" "));
        }
        if let Some(t) = r.timeout {
            let _ = writeln!(s, "   timeout: {}s", t.as_secs());
        }
        let steps: Vec<&str> = r.steps.iter().map(|st| st.name.as_str()).collect();
        let _ = writeln!(s, "   steps: [{}]", steps.join(", "));
        let _ = writeln!(s, "   outputs: [{}]", r.outputs.join(", "));
        if let Some(i) = &r.image {
            let base = c
                .image_base
                .map(|b| format!(" (after {})", g.components[b].name))
                .unwrap_or_default();
            let _ = writeln!(s, "   image: {:?}{base}", i);
        }
        for t in &r.tests {
            let _ = writeln!(s, "   test: {:?}", t);
        }
    }
    if let Some(d) = &e.deploy {
        let _ = writeln!(s, "deploy (engine {}):", d.engine.as_deref().unwrap_or("-"));
        for c in &d.components {
            let _ = writeln!(s, "   {c:?}");
        }
    }
    for c in &g.compatibility {
        let _ = writeln!(
            s,
            "compatibility: `{}` needs `{}` {}",
            c.component, c.upstream, c.range
        );
    }
    s
}
