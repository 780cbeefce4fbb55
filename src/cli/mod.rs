//! The command line: parses arguments, runs the subcommand, and turns every error into a
//! miette report and an exit code (0 ok, 1 error, 2 changes or findings where asked).

pub mod args;
mod status;
mod validate;

use args::{Cli, Command};
use clap::Parser;
use std::process::ExitCode;

/// Outcome of a subcommand that ran without error.
pub enum Outcome {
    Ok,
    /// Changes present (plan with --detailed-exitcode) or error findings (validate).
    Attention,
}

/// Entry point of the binary; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 1 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match run(cli) {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::Attention) => ExitCode::from(2),
        Err(report) => {
            eprintln!("{report:?}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> miette::Result<Outcome> {
    match cli.command {
        Command::Validate(a) => validate::run(&a),
        Command::Status(a) if a.offline => validate::status_offline(&a),
        Command::Status(a) => status::run(&a),
        Command::Plan(_) => not_built("plan", "planning against a live cluster comes with issue #4"),
        Command::Apply(_) => not_built("apply", "applying a plan comes with issue #5"),
        Command::Show(_) => not_built("show", "rendering saved plans comes with issue #4"),
        Command::Graph(_) => not_built("graph", "the action graph comes with issue #4"),
        Command::Rollback(_) => not_built("rollback", "rollback comes with issue #5"),
    }
}

/// Commands not built yet say so and fail; they never pretend to have done something.
fn not_built(command: &str, why: &str) -> miette::Result<Outcome> {
    Err(miette::miette!(
        code = "certrotate::not_built",
        help = why.to_string(),
        "`certrotate {command}` is not built yet in this version; nothing was read or changed"
    ))
}
