//! The compatibility matrix against versions found by pinning, and unknown refs.

mod common;

use std::collections::BTreeMap;

use cascade_manifest::{check_compatibility, resolve, unknown_ref, Graph, SourceDb};
use semver::Version;

fn ecosystem() -> (SourceDb, Graph) {
    let (db, files) = common::load(&common::test_data().join("ok/ecosystem"));
    let graph =
        resolve(&db, &files).unwrap_or_else(|u| panic!("{}", common::render(&u.diagnostics)));
    (db, graph)
}

fn versions(list: &[(&str, &str)]) -> BTreeMap<String, Version> {
    list.iter()
        .map(|(c, v)| (c.to_string(), Version::parse(v).expect("test version")))
        .collect()
}

#[test]
fn branch_prereleases_satisfy_ranges() {
    let (db, graph) = ecosystem();
    // Branch-mode versions are pre-releases past the last tag.
    let v = versions(&[
        ("tessellation", "4.0.1-dev.2"),
        ("metakit", "0.2.1-dev.5"),
        ("ottochain", "0.6.1-dev.5"),
        ("sdk", "0.2.0"),
        ("services", "0.1.3-dev.1"),
        ("explorer", "0.3.0"),
    ]);
    if let Err(d) = check_compatibility(&db, &graph, &v) {
        panic!("{}", common::render(&d));
    }
}

#[test]
fn missing_versions_are_not_checked() {
    let (db, graph) = ecosystem();
    assert!(check_compatibility(&db, &graph, &BTreeMap::new()).is_ok());
}

#[test]
fn violations_name_the_rule_and_the_version() {
    let (db, graph) = ecosystem();
    let v = versions(&[
        ("ottochain", "1.0.0"),
        ("sdk", "0.2.0-dev.3"),
        ("services", "0.2.0"),
    ]);
    let diags = check_compatibility(&db, &graph, &v).expect_err("three rules are broken");
    let mut out = format!("{} diagnostic(s)\n", diags.0.len());
    for d in &diags.0 {
        out.push('\n');
        out.push_str(&common::render(d));
    }
    insta::assert_snapshot!(out);
}

#[test]
fn unknown_refs_point_at_the_ref() {
    let (db, graph) = ecosystem();
    let i = graph.index_of("metakit").expect("metakit is in the graph");
    let c = &graph.components[i];
    let e = unknown_ref(
        &db,
        &c.source,
        "branch `develop` does not exist in `../../target/ecosystem/metakit.git`".into(),
        vec!["develop-2".into(), "main".into()],
    );
    let e2 = unknown_ref(&db, &c.source, "no such ref".into(), vec![]);
    insta::assert_snapshot!(format!("{}\n{}", common::render(&e), common::render(&e2)));
}

#[test]
fn all_diagnostics_render_together() {
    let (db, files) = common::load(&common::test_data().join("err/many_errors"));
    let diags = resolve(&db, &files).expect_err("many errors").diagnostics;
    let text = common::render(&diags);
    assert!(text.starts_with("cascade::manifest"), "{text}");
    assert!(text.contains("7 problems in the manifests"), "{text}");
    for code in [
        "rev_mode",
        "bad_path",
        "unknown_input",
        "bad_timeout",
        "yaml",
        "missing_recipe",
        "bad_range",
    ] {
        assert!(
            text.contains(&format!("cascade::manifest::{code}")),
            "{code} missing:\n{text}"
        );
    }
}
