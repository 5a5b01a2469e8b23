//! `pixeldit-run`: see [`pixeldit_cli::run_cli`].

fn main() -> std::process::ExitCode {
    pixeldit_cli::run_cli::main()
}
