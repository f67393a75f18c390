//! `cargo xtask …`: the tasks of this repository (the alias lives in `.cargo/config.toml`).

use std::path::PathBuf;
use std::process::ExitCode;

use xtask::{bench, build, ecosystem, workspace_root};

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
    /// Build the example ecosystem (generating its repositories first if missing):
    /// `cargo xtask build --env scratch [cascade build flags…]`
    Build {
        /// Flags passed to `cascade build` (e.g. `--env scratch --jobs 4`)
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Benchmark synthetic graphs: cold, no-op and one-leaf-change builds
    /// (`--sizes 1000,10000 --shapes chain,wide,diamond --jobs N`)
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The store's stress tests with the large counts: 1,000 injected corruptions,
    /// 500 kills at random moments and 20 rounds of 8 concurrent build processes (CI
    /// runs 200, 50 and 3), in release mode.
    Stress,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let root = workspace_root();
    let result = match cli.command {
        Command::Ecosystem { out } => {
            let out = out.unwrap_or_else(|| root.join(ecosystem::DEFAULT_OUT));
            ecosystem::generate(&root, &out)
        }
        Command::Build { args } => {
            let code = build::run(&root, &args);
            return ExitCode::from(u8::try_from(code).unwrap_or(1));
        }
        Command::Bench { args } => {
            // Figures from a debug build mean nothing: rerun ourselves optimized.
            if cfg!(debug_assertions) {
                let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
                let status = std::process::Command::new(cargo)
                    .args([
                        "run",
                        "--quiet",
                        "--release",
                        "--package",
                        "xtask",
                        "--",
                        "bench",
                    ])
                    .args(&args)
                    .current_dir(&root)
                    .status();
                return match status {
                    Ok(s) if s.success() => ExitCode::SUCCESS,
                    Ok(_) => ExitCode::FAILURE,
                    Err(e) => {
                        eprintln!("error: could not run the release build of xtask: {e}");
                        ExitCode::FAILURE
                    }
                };
            }
            bench::run(&args).map_err(|e| e.to_string().into())
        }
        Command::Stress => {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = std::process::Command::new(cargo)
                .current_dir(&root)
                .env("CASCADE_STRESS_CORRUPTIONS", "1000")
                .env("CASCADE_STRESS_KILLS", "500")
                .env("CASCADE_STRESS_ROUNDS", "20")
                .args([
                    "test",
                    "--release",
                    "--locked",
                    "-p",
                    "cascade-tests",
                    "--test",
                    "store_stress",
                    "-p",
                    "cascade-cli",
                    "--test",
                    "crash",
                    "--test",
                    "processes",
                ])
                .status();
            match status {
                Ok(s) if s.success() => Ok(()),
                Ok(s) => Err(format!("the stress tests failed ({s})").into()),
                Err(e) => Err(format!("could not run cargo: {e}").into()),
            }
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
