//! The tasks of this repository as a library, so integration tests can generate the
//! example ecosystem the same way `cargo xtask ecosystem` does.

pub mod bench;
pub mod build;
pub mod ecosystem;
mod peers;
mod remote_exec;

use std::path::{Path, PathBuf};

/// The workspace root: xtask's manifest sits one level below it. Taken from the build,
/// not the current directory, so `cargo xtask` works from any sub-directory.
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}
