//! `cargo xtask …`: the tasks of this repository (the alias lives in `.cargo/config.toml`).

mod ecosystem;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Tasks for the cascade repository")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the example ecosystem's git repositories from ecosystem/history.yaml
    Ecosystem {
        /// Directory to (re)create the bare repositories in [default: target/ecosystem]
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let root = workspace_root();
    let result = match cli.command {
        Command::Ecosystem { out } => {
            let out = out.unwrap_or_else(|| root.join(ecosystem::DEFAULT_OUT));
            ecosystem::generate(&root, &out)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root: xtask's manifest sits one level below it. Taken from the build,
/// not the current directory, so `cargo xtask` works from any sub-directory.
fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}
