//! `rapctl`: the operator CLI of the RAP config/storage service.
//!
//! Human tables by default, `-o json` for scripts. Exit codes: 0 ok,
//! 1 error (including a refused envelope), 2 usage.

mod demo;
mod output;
mod snapshot;

use clap::{Parser, Subcommand};
use output::Format;
use std::process::ExitCode;

/// Operate the RAP config/storage service.
///
/// Commands that need the control plane (cluster, token, join-request,
/// node, role, group, service, audit, authority) arrive with the control
/// plane; today rapctl works offline on signed snapshot envelopes.
#[derive(Parser, Debug)]
#[command(name = "rapctl", version, about, long_about)]
struct Cli {
    /// Output format: `table` for people, `json` for scripts.
    #[arg(
        short = 'o',
        long = "output",
        global = true,
        value_enum,
        default_value = "table"
    )]
    output: Format,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create keys, sign, inspect and verify signed snapshot envelopes.
    #[command(subcommand)]
    Snapshot(snapshot::SnapshotCommand),
    /// A scripted tour of the signed-snapshot rules; exits 0 when every
    /// step behaved as the design says.
    Demo(demo::DemoArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Snapshot(command) => snapshot::run(command, cli.output),
        Command::Demo(args) => demo::run(args, cli.output),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(1)
        }
    }
}
