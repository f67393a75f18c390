//! Bad input never panics: every prefix of valid manifests, garbage spliced into them,
//! and inputs built to exhaust the parser all give diagnostics.

mod common;

use cascade_manifest::{resolve, ProjectFiles, SourceDb};

const ENV: &str = include_str!("../../../test_data/ok/ecosystem/graph/environments/test.yaml");
const COMPAT: &str = include_str!("../../../test_data/ok/ecosystem/graph/compatibility.yaml");
const RECIPE: &str = include_str!("../../../test_data/ok/ecosystem/recipes/ottochain.yaml");
const OTHER: &str = include_str!("../../../test_data/ok/ecosystem/recipes/monitoring.yaml");

/// The example project with ottochain's recipe replaced by `recipe`.
fn project(env: &str, compat: Option<&str>, recipe: &str) -> (SourceDb, ProjectFiles) {
    let mut db = SourceDb::new();
    let environment = db.add("graph/environments/test.yaml", env);
    let compatibility = compat.map(|c| db.add("graph/compatibility.yaml", c));
    let mut recipes = Vec::new();
    for name in [
        "explorer",
        "metakit",
        "monitoring",
        "ottochain",
        "sdk",
        "services",
        "tessellation",
    ] {
        let text = if name == "ottochain" { recipe } else { OTHER };
        recipes.push((
            name.to_string(),
            db.add(format!("recipes/{name}.yaml"), text),
        ));
    }
    let files = ProjectFiles {
        environment,
        compatibility,
        recipes,
    };
    (db, files)
}

/// Resolve a project where one of the files is replaced; must not panic.
fn run(env: &str, compat: &str, recipe: &str) -> bool {
    let (db, files) = project(env, Some(compat), recipe);
    match resolve(&db, &files) {
        Ok(_) => true,
        Err(d) => {
            // Rendering must not panic either (spans inside the text).
            let _ = common::render(&d.diagnostics);
            false
        }
    }
}

fn prefixes(s: &str) -> impl Iterator<Item = &str> {
    (0..=s.len())
        .filter(|&i| s.is_char_boundary(i))
        .map(move |i| &s[..i])
}

#[test]
fn valid_project_resolves() {
    assert!(run(ENV, COMPAT, RECIPE));
}

#[test]
fn every_prefix() {
    for p in prefixes(ENV) {
        run(p, COMPAT, RECIPE);
    }
    for p in prefixes(COMPAT) {
        run(ENV, p, RECIPE);
    }
    for p in prefixes(RECIPE) {
        run(ENV, COMPAT, p);
    }
}

#[test]
fn garbage_spliced_in() {
    let junk = [
        ":", "- ", "{", "}", "[", "\"", "&a ", "*a", "\t", "!x ", "\n  ", "\0", "é", "<<: *a\n",
    ];
    for (text, which) in [(ENV, 0), (RECIPE, 1)] {
        let cuts: Vec<usize> = (0..=text.len())
            .filter(|&i| text.is_char_boundary(i))
            .step_by(11)
            .collect();
        for &i in &cuts {
            for j in junk {
                let t = format!("{}{j}{}", &text[..i], &text[i..]);
                match which {
                    0 => run(&t, COMPAT, RECIPE),
                    _ => run(ENV, COMPAT, &t),
                };
            }
        }
    }
}

#[test]
fn hostile_inputs_are_refused_not_obeyed() {
    let deep = format!("inputs: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
    assert!(!run(ENV, COMPAT, &deep));
    let deep_block = (0..2_000)
        .map(|i| format!("{}a:\n", " ".repeat(i)))
        .collect::<String>();
    assert!(!run(ENV, COMPAT, &deep_block));
    // Billion laughs: each level aliases the previous one ten times.
    let mut laughs = String::from("env:\n  A: &l0 \"lol\"\n");
    for i in 1..10 {
        let prev = format!("*l{}", i - 1);
        let list = [prev.as_str(); 10].join(", ");
        laughs.push_str(&format!("x{i}: &l{i} [{list}]\n"));
    }
    laughs.push_str("inputs: *l9\n");
    assert!(!run(ENV, COMPAT, &laughs));
    let huge = format!("inputs: [{}]\n", "tessellation, ".repeat(100_000));
    assert!(!run(ENV, COMPAT, &huge));
    assert!(!run("\u{feff}\u{0}\u{1}", COMPAT, RECIPE));
    // A problem far along a very long line: the renderer cannot draw that far.
    let long = format!("inputs: [{}\"]\n", "tessellation, ".repeat(50_000));
    assert!(!run(ENV, COMPAT, &long));
    let long = format!("inputs: [{}nope]\n", "x".repeat(70_000));
    assert!(!run(ENV, COMPAT, &long));
    let long = format!("{}: 1\n", "x".repeat(70_000));
    assert!(!run(ENV, COMPAT, &long));
}

#[test]
fn many_problems_are_capped() {
    let recipe = format!("inputs:\n{}", "  - tessellation\n".repeat(20_000));
    let (db, files) = project(ENV, None, &recipe);
    let diags = resolve(&db, &files).expect_err("duplicates").diagnostics;
    assert_eq!(diags.0.len(), cascade_manifest::Diagnostics::LIMIT + 1);
    let last = common::render(diags.0.last().expect("a last problem"));
    assert!(last.contains("more problems, not shown"), "{last}");
}
