//! `pixeldit-export`: see [`pixeldit_cli::export_cli`].

fn main() -> std::process::ExitCode {
    pixeldit_cli::export_cli::main()
}
