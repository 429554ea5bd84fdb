//! `rap-chaos`: long seed sweeps of the simulator (`scripts/chaos.sh`).
//! Prints one line per failed run as it happens and a summary at the end;
//! exits 1 when a run broke an invariant, 2 when only runs that could not
//! finish were found, 0 otherwise.

use clap::Parser;
use rap_sim::chaos::{ChaosPlan, replay_command};
use rap_sim::mutants::Mutant;
use rap_sim::scenarios::NAMES;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// A progress line every this many runs.
const PROGRESS_EVERY: u64 = 50;

/// Sweeps seeds over the simulator's named scenarios.
#[derive(Parser, Debug)]
#[command(name = "rap-chaos", version)]
struct Args {
    /// Seeds per scenario.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 1)]
    from: u64,
    /// Only this scenario (repeatable); default: all of them.
    #[arg(long)]
    scenario: Vec<String>,
    /// Stop starting runs after this many minutes of wall time.
    #[arg(long)]
    minutes: Option<u64>,
    /// Where the traces of failed runs go.
    #[arg(long, default_value = "target/chaos")]
    trace_dir: PathBuf,
    /// Break a rule on purpose (grant-without-quorum,
    /// believe-unproven-term): the sweep must then find violations.
    #[arg(long, default_value = "none")]
    mutant: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let scenarios = if args.scenario.is_empty() {
        NAMES.iter().map(|s| s.to_string()).collect()
    } else {
        args.scenario
    };
    let Some(mutant) = Mutant::by_name(&args.mutant) else {
        let known: Vec<&str> = Mutant::ALL.iter().map(|m| m.name()).collect();
        eprintln!(
            "rap-chaos: unknown mutant {:?}; known: none, {}",
            args.mutant,
            known.join(", ")
        );
        return ExitCode::from(64);
    };
    let plan = ChaosPlan {
        scenarios,
        seeds: args.seeds,
        from: args.from,
        wall_budget: args
            .minutes
            .map(|m| Duration::from_secs(m.saturating_mul(60))),
        trace_dir: args.trace_dir,
        mutant,
    };
    println!(
        "rap-chaos: {} scenario(s) × {} seed(s) from {}{}{}",
        plan.scenarios.len(),
        plan.seeds,
        plan.from,
        if mutant == Mutant::None {
            String::new()
        } else {
            format!(", rule broken on purpose: {}", mutant.name())
        },
        plan.wall_budget
            .map(|b| format!(", at most {} min", b.as_secs() / 60))
            .unwrap_or_default()
    );
    let mut done = 0u64;
    let summary = plan.run(|report| {
        done += 1;
        if report.recovery_impossible && report.acceptable() {
            println!(
                "{} seed={} recovery impossible by construction (no quorum left): {}",
                report.scenario,
                report.seed,
                report.aborted.clone().unwrap_or_default()
            );
        } else if !report.passed() {
            println!(
                "{} seed={} failed: {}",
                report.scenario,
                report.seed,
                report
                    .violations
                    .first()
                    .map(|v| v.to_string())
                    .or_else(|| report.aborted.clone())
                    .unwrap_or_default()
            );
        } else if done.is_multiple_of(PROGRESS_EVERY) {
            println!("... {done} runs");
        }
    });
    match summary {
        Err(error) => {
            eprintln!("rap-chaos: {error}");
            ExitCode::from(64)
        }
        Ok(summary) => {
            print!("\n{summary}");
            if let Some(first) = summary.failures.first() {
                println!(
                    "first failure: {}",
                    replay_command(&first.scenario, first.seed, first.mutant)
                );
            }
            if summary.violating() > 0 {
                ExitCode::from(1)
            } else if summary.non_recoverable() > 0 {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            }
        }
    }
}
