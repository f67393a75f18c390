//! The `cascade` binary: everything lives in the library so xtask and tests share it.

fn main() {
    std::process::exit(cascade_cli::run(std::env::args_os()));
}
