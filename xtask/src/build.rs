//! `cargo xtask build --env ENV [cascade build flags…]`: the example ecosystem end to
//! end. Generates the example's git repositories first when they are missing, then
//! runs the same code as `cascade build` on this repository. The example's C components
//! build in containers, so without a Docker Engine it stops first and says how to start
//! one.

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
    // The C components build in the toolchain's image, and the images have smoke tests.
    if let Err(e) = cascade_docker::Docker::connect() {
        eprintln!(
            "xtask: the example's C components build in containers, and no Docker Engine answers: {e}\n\
             xtask: run .ci/services/docker.sh to install and start one"
        );
        return 3;
    }
    cascade_cli::run(full)
}
