//! Data-driven manifest tests: every directory under `test_data/ok` must resolve (the
//! snapshot is a summary of the graph), every one under `test_data/err` must not (the
//! snapshot is every diagnostic, rendered as a user sees it).

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use cascade_manifest::resolve;

fn check(kind: &str, name: &str, dir: &Path) {
    let (db, files) = common::load(dir);
    let text = match (kind, resolve(&db, &files).map_err(|u| u.diagnostics)) {
        ("ok", Ok(graph)) => common::summary(&db, &graph),
        ("ok", Err(diags)) => panic!("{name} should resolve:\n{}", common::render(&diags)),
        (_, Ok(graph)) => panic!("{name} should fail:\n{}", common::summary(&db, &graph)),
        (_, Err(diags)) => {
            let mut out = format!("{} diagnostic(s)\n", diags.0.len());
            for d in &diags.0 {
                out.push('\n');
                out.push_str(&common::render(d));
            }
            out
        }
    };
    insta::with_settings!({
        description => format!("test_data/{kind}/{name}"),
        omit_expression => true,
    }, {
        insta::assert_snapshot!(format!("{kind}__{name}"), text);
    });
}

#[test]
fn fixtures() {
    let mut failed = Vec::new();
    let mut count = 0;
    for kind in ["ok", "err"] {
        for (name, dir) in common::fixtures(kind) {
            count += 1;
            if catch_unwind(AssertUnwindSafe(|| check(kind, &name, &dir))).is_err() {
                failed.push(format!("{kind}/{name}"));
            }
        }
    }
    assert!(count > 0, "no fixtures found in test_data/");
    assert!(failed.is_empty(), "failing fixtures: {failed:?}");
}
