//! The command line: parses arguments, runs the subcommand, and turns every error into a
//! miette report and an exit code (0 ok, 1 error, 2 changes or findings where asked).

/// println! that never panics: after SIGHUP the terminal is gone, and a graceful stop must
/// go on to its end rather than die on a failed write.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

pub mod args;
mod apply;
mod evidence;
mod plan;
mod status;
mod validate;

use args::{Cli, Command};
use clap::Parser;
use is_terminal::IsTerminal as _;
use std::io::Write as _;
use std::process::ExitCode;

/// Outcome of a subcommand that ran without error.
pub enum Outcome {
    Ok,
    /// Changes present (plan with --detailed-exitcode) or error findings (validate).
    Attention,
}

/// Entry point of the binary; returns the process exit code.
pub fn main() -> ExitCode {
    // ssh starts each node's jump hop (ProxyCommand) with `$SHELL -c "exec ..."`, once per node:
    // an interactive user's bash costs several times what /bin/sh does there and adds nothing.
    // Set before any thread exists, so no other thread can be reading the environment.
    std::env::set_var("SHELL", "/bin/sh");
    if let Err(e) = crate::interrupt::install() {
        eprintln!("warning: cannot listen for Ctrl-C and SIGTERM ({e}): a stop signal will kill certrotate without closing its SSH connections");
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 1 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    if cli.debug {
        // Only certrotate's own events: the crates below log request bodies at debug.
        let _ = tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter("certrotate=debug").with_target(false).without_time().with_ansi(std::io::stderr().is_terminal()).try_init();
    }
    match run(cli) {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::Attention) => ExitCode::from(2),
        Err(report) => {
            // Not eprintln!: after SIGHUP the terminal is gone, and a failed write must not
            // turn exit code 1 into a panic.
            let _ = writeln!(std::io::stderr(), "{report:?}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> miette::Result<Outcome> {
    match cli.command {
        Command::Validate(a) => validate::run(&a),
        Command::Status(a) if a.offline => validate::status_offline(&a),
        Command::Status(a) => status::run(&a),
        Command::Plan(a) => plan::run_plan(&a),
        Command::Apply(a) => apply::run_apply(&a),
        Command::Show(a) => plan::run_show(&a),
        Command::Graph(a) => plan::run_graph(&a),
        Command::Rollback(a) => apply::run_rollback(&a),
        Command::Evidence(a) => evidence::run(&a),
    }
}
