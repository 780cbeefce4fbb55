//! The command line: clap definitions and dispatch of each subcommand.

/// Entry point of the binary; returns the process exit code.
pub fn main() -> std::process::ExitCode {
    eprintln!("certrotate: the command line is being built");
    std::process::ExitCode::FAILURE
}
