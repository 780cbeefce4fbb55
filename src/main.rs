//! The certrotate binary: parses the command line and reports errors through miette.

fn main() -> std::process::ExitCode {
    certrotate::cli::main()
}
