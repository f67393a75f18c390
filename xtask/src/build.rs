//! `cargo xtask build --env ENV [cascade build flags…]`: the example ecosystem end to
//! end. Generates the example's git repositories first when they are missing, then
//! runs the same code as `cascade build` on this repository: on the embedded defaults
//! (the local store, cascade's own sandbox), so no Docker Engine is needed.

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
    cascade_cli::run(full)
}
