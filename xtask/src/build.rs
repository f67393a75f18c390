//! `cargo xtask build --env ENV [cascade build flags…]`: the example ecosystem end to
//! end. Generates the example's git repositories first when they are missing, then
//! runs the same code as `cascade build` on this repository (with `--skip-tests`, said
//! out loud, when no Docker Engine answers).

use std::path::Path;

pub fn run(root: &Path, args: &[String]) -> i32 {
    let eco = root.join("target/ecosystem");
    if !eco.is_dir() {
        eprintln!(
            "xtask: the example repositories are missing; generating them in target/ecosystem"
        );
        if let Err(e) = crate::ecosystem::generate(root, &eco) {
            eprintln!("xtask: could not generate the example ecosystem: {e}");
            return 3;
        }
    }
    let mut full = vec![
        "cascade".to_string(),
        "--project".to_string(),
        root.display().to_string(),
        "build".to_string(),
    ];
    full.extend(args.iter().cloned());
    // The example's images have smoke tests, which need Docker. On a machine without an
    // engine the example still builds (images included), and says loudly what it skipped.
    if !args.iter().any(|a| a == "--skip-tests") && cascade_docker::Docker::connect().is_err() {
        eprintln!(
            "xtask: no Docker Engine answers, so the smoke tests are skipped (--skip-tests);\n\
             xtask: run .ci/services/docker.sh to start one and run them"
        );
        full.push("--skip-tests".to_string());
    }
    cascade_cli::run(full)
}
