//! Long seed sweeps over the named scenarios ([`crate::scenarios::NAMES`])
//! for `scripts/chaos.sh`: many seeds, a summary a person can read, and for
//! every failed seed its trace in a file and the command that replays it.
//!
//! A run that broke an invariant is a *violation*; a run that could not
//! finish (the client gave up, a host failed, the simulated clock ran out)
//! although its faults left a quorum that could form is *non-recoverable*
//! and reported apart: neither counts as a pass. A run that could not
//! finish because its faults left no quorum (a majority crashed for good)
//! had *recovery impossible* by construction: it is counted apart again
//! and is no failure unless it broke an invariant.

use crate::harness::RunReport;
use crate::mutants::Mutant;
use crate::{run, scenarios};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Most seeds one sweep runs per scenario.
pub const CHAOS_SEEDS_MAX: u64 = 1_000_000;

/// Most failed runs whose trace one sweep writes (the rest are counted).
pub const TRACES_MAX: usize = 100;

/// Environment variable naming the scenario the `replay` test runs.
pub const SCENARIO_ENV: &str = "RAP_SIM_SCENARIO";

/// Environment variable naming the mutant the `replay` test runs with
/// (unset: none).
pub const MUTANT_ENV: &str = "RAP_SIM_MUTANT";

/// What to sweep.
#[derive(Clone, Debug)]
pub struct ChaosPlan {
    /// Scenario names (each one of [`scenarios::NAMES`]).
    pub scenarios: Vec<String>,
    /// Seeds per scenario: `from`, `from + 1`, ...
    pub seeds: u64,
    /// The first seed.
    pub from: u64,
    /// Stop starting new runs after this much wall time.
    pub wall_budget: Option<Duration>,
    /// Where traces of failed runs go.
    pub trace_dir: PathBuf,
    /// A rule every run breaks on purpose (to see the oracle catch it).
    pub mutant: Mutant,
}

/// One failed run.
#[derive(Clone, Debug)]
pub struct ChaosFailure {
    /// The scenario's name.
    pub scenario: String,
    /// The seed.
    pub seed: u64,
    /// Whether it broke an invariant (else it could not finish).
    pub violated: bool,
    /// The rule it broke on purpose, if any.
    pub mutant: Mutant,
    /// Where its trace was written, if it was.
    pub trace: Option<PathBuf>,
}

/// What a sweep found.
#[derive(Clone, Debug, Default)]
pub struct ChaosSummary {
    /// Runs finished (scenario × seed).
    pub runs: u64,
    /// Simulated time over all runs.
    pub simulated: Duration,
    /// Wall time of the sweep.
    pub wall: Duration,
    /// Violations by invariant, over all runs.
    pub violations: BTreeMap<&'static str, u64>,
    /// Failed runs, in the order they ran.
    pub failures: Vec<ChaosFailure>,
    /// Whether the wall budget stopped the sweep early.
    pub stopped_early: bool,
    /// Runs whose recovery was impossible by construction and that broke
    /// no invariant (not failures).
    pub recovery_impossible: u64,
}

impl ChaosSummary {
    /// Runs that could not finish.
    pub fn non_recoverable(&self) -> usize {
        self.failures.iter().filter(|f| !f.violated).count()
    }

    /// Runs that broke an invariant.
    pub fn violating(&self) -> usize {
        self.failures.iter().filter(|f| f.violated).count()
    }
}

impl fmt::Display for ChaosSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let minutes = self.wall.as_secs_f64() / 60.0;
        let hours = self.simulated.as_secs_f64() / 3600.0;
        writeln!(
            f,
            "runs: {} in {:.1} s wall ({:.1} runs per minute){}",
            self.runs,
            self.wall.as_secs_f64(),
            if minutes > 0.0 {
                self.runs as f64 / minutes
            } else {
                0.0
            },
            if self.stopped_early {
                "; stopped at the time limit"
            } else {
                ""
            }
        )?;
        writeln!(
            f,
            "simulated: {hours:.2} h ({:.2} simulated hours per wall minute)",
            if minutes > 0.0 { hours / minutes } else { 0.0 }
        )?;
        writeln!(
            f,
            "runs that broke an invariant: {}; non-recoverable runs: {}; runs where recovery was impossible by construction: {}",
            self.violating(),
            self.non_recoverable(),
            self.recovery_impossible
        )?;
        for (invariant, count) in &self.violations {
            writeln!(f, "  violations of {invariant}: {count}")?;
        }
        for failure in &self.failures {
            writeln!(
                f,
                "{} seed={} {}: replay with {}{}",
                failure.scenario,
                failure.seed,
                if failure.violated {
                    "VIOLATION"
                } else {
                    "NON-RECOVERABLE"
                },
                replay_command(&failure.scenario, failure.seed, failure.mutant),
                failure
                    .trace
                    .as_ref()
                    .map(|p| format!("; trace {}", p.display()))
                    .unwrap_or_default()
            )?;
        }
        Ok(())
    }
}

/// Why a plan cannot run.
#[derive(Debug, PartialEq, Eq)]
pub enum PlanError {
    /// A scenario name that [`scenarios::by_name`] does not know.
    UnknownScenario(String),
    /// No seeds, or more than [`CHAOS_SEEDS_MAX`], or seeds past `u64`.
    Seeds(String),
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanError::UnknownScenario(name) => write!(
                f,
                "unknown scenario {name:?}; known: {}",
                scenarios::NAMES.join(", ")
            ),
            PlanError::Seeds(why) => write!(f, "seeds: {why}"),
        }
    }
}

impl std::error::Error for PlanError {}

/// The command that replays one seed of one named scenario (with
/// `mutant`) alone, with its whole event log.
pub fn replay_command(scenario: &str, seed: u64, mutant: Mutant) -> String {
    let mutant = match mutant {
        Mutant::None => String::new(),
        other => format!("{MUTANT_ENV}={} ", other.name()),
    };
    format!(
        "{mutant}{SCENARIO_ENV}={scenario} {}={seed} cargo test -p rap-sim --test it replay -- --exact --nocapture",
        crate::seed::SEED_ENV
    )
}

impl ChaosPlan {
    /// Refuses unknown scenarios and seed counts out of range.
    pub fn validate(&self) -> Result<(), PlanError> {
        if let Some(unknown) = self
            .scenarios
            .iter()
            .find(|name| !scenarios::NAMES.contains(&name.as_str()))
        {
            return Err(PlanError::UnknownScenario(unknown.clone()));
        }
        if self.seeds == 0 || self.seeds > CHAOS_SEEDS_MAX {
            return Err(PlanError::Seeds(format!(
                "{} per scenario is outside 1..={CHAOS_SEEDS_MAX}",
                self.seeds
            )));
        }
        if self.from.checked_add(self.seeds).is_none() {
            return Err(PlanError::Seeds(format!(
                "{} seeds from {} run past the largest seed",
                self.seeds, self.from
            )));
        }
        Ok(())
    }

    /// Runs the sweep: seed by seed, every scenario per seed, until the
    /// seeds or the wall budget run out; `progress` sees every report.
    pub fn run(&self, mut progress: impl FnMut(&RunReport)) -> Result<ChaosSummary, PlanError> {
        self.validate()?;
        let started = Instant::now();
        let mut summary = ChaosSummary::default();
        'seeds: for seed in self.from..self.from + self.seeds {
            for name in &self.scenarios {
                if self
                    .wall_budget
                    .is_some_and(|budget| started.elapsed() >= budget)
                {
                    summary.stopped_early = true;
                    break 'seeds;
                }
                let mut scenario = scenarios::by_name(name, seed)
                    .ok_or_else(|| PlanError::UnknownScenario(name.clone()))?;
                scenario.mutant = self.mutant;
                let report = run(seed, &scenario);
                progress(&report);
                summary.record(name, self.mutant, &report, &self.trace_dir);
            }
        }
        summary.wall = started.elapsed();
        Ok(summary)
    }
}

impl ChaosSummary {
    /// Counts one run; writes its trace when it failed (at most
    /// [`TRACES_MAX`] per sweep).
    pub fn record(&mut self, scenario: &str, mutant: Mutant, report: &RunReport, trace_dir: &Path) {
        self.runs += 1;
        self.simulated += report.sim_time;
        for violation in &report.violations {
            *self.violations.entry(violation.invariant).or_default() += 1;
        }
        if report.passed() {
            return;
        }
        if report.acceptable() {
            self.recovery_impossible += 1;
            return;
        }
        let trace = (self.failures.len() < TRACES_MAX)
            .then(|| write_trace(trace_dir, scenario, mutant, report))
            .flatten();
        self.failures.push(ChaosFailure {
            scenario: scenario.to_string(),
            seed: report.seed,
            violated: !report.violations.is_empty(),
            mutant,
            trace,
        });
    }
}

/// Writes the failure report of `report` (violations and the whole event
/// log) to `<dir>/<scenario>-<seed>.trace`; `None` (after saying why on
/// stderr) when it cannot.
fn write_trace(dir: &Path, scenario: &str, mutant: Mutant, report: &RunReport) -> Option<PathBuf> {
    let path = dir.join(format!("{scenario}-{}.trace", report.seed));
    let text = format!(
        "{scenario} seed={}\nreplay: {}\n{}",
        report.seed,
        replay_command(scenario, report.seed, mutant),
        report.failure_report()
    );
    match std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&path, text)) {
        Ok(()) => Some(path),
        Err(error) => {
            eprintln!("cannot write the trace {}: {error}", path.display());
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkers::Violation;

    fn report(seed: u64, violations: Vec<Violation>, aborted: Option<&str>) -> RunReport {
        RunReport {
            seed,
            scenario: "isolated leader".into(),
            events: Vec::new(),
            aborted: aborted.map(String::from),
            violations,
            sim_time: Duration::from_secs(10),
            recovery_impossible: false,
        }
    }

    // Goal: a sweep's summary counts runs, simulated time and violations
    // by invariant, tells a broken invariant from a run that could not
    // finish, and writes each failed run's trace with its replay command.
    // A run whose recovery was impossible by construction is counted
    // apart and is no failure. Method: record four synthetic reports
    // (passed, violating, aborted, aborted with recovery impossible) into
    // a temporary trace directory.
    #[test]
    fn the_summary_counts_and_keeps_traces() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut summary = ChaosSummary::default();
        summary.record(
            "isolated-leader",
            Mutant::None,
            &report(1, Vec::new(), None),
            dir.path(),
        );
        let violation = Violation {
            invariant: "one leader per term",
            at: Duration::from_secs(3),
            detail: "two".into(),
        };
        summary.record(
            "isolated-leader",
            Mutant::None,
            &report(2, vec![violation.clone(), violation], None),
            dir.path(),
        );
        summary.record(
            "isolated-leader",
            Mutant::GrantWithoutQuorum,
            &report(3, Vec::new(), Some("the client gave up")),
            dir.path(),
        );
        let mut impossible = report(4, Vec::new(), Some("nodes did not converge"));
        impossible.recovery_impossible = true;
        summary.record("crash-storm-5", Mutant::None, &impossible, dir.path());
        assert_eq!(summary.runs, 4);
        assert_eq!(summary.simulated, Duration::from_secs(40));
        assert_eq!(summary.violations.get("one leader per term"), Some(&2));
        assert_eq!((summary.violating(), summary.non_recoverable()), (1, 1));
        assert_eq!(summary.recovery_impossible, 1);
        assert_eq!(summary.failures.len(), 2, "{:?}", summary.failures);
        let trace = summary.failures[0].trace.clone().expect("trace written");
        let text = std::fs::read_to_string(trace).expect("trace");
        assert!(text.contains("RAP_SIM_SCENARIO=isolated-leader RAP_SIM_SEED=2"));
        assert!(text.contains("violation: "));
        let shown = summary.to_string();
        assert!(
            shown.contains("isolated-leader seed=3 NON-RECOVERABLE"),
            "{shown}"
        );
        assert!(
            shown.contains("recovery was impossible by construction: 1"),
            "{shown}"
        );
    }

    // Goal: bad plans are refused before anything runs. Method: an unknown
    // scenario, zero seeds, too many seeds, seeds past u64.
    #[test]
    fn bad_plans_are_refused() {
        let plan = |scenarios: &[&str], seeds, from| ChaosPlan {
            scenarios: scenarios.iter().map(|s| s.to_string()).collect(),
            seeds,
            from,
            wall_budget: None,
            trace_dir: PathBuf::from("unused"),
            mutant: Mutant::None,
        };
        assert!(matches!(
            plan(&["no-such"], 1, 0).validate(),
            Err(PlanError::UnknownScenario(_))
        ));
        assert!(matches!(
            plan(&["isolated-leader"], 0, 0).validate(),
            Err(PlanError::Seeds(_))
        ));
        assert!(matches!(
            plan(&["isolated-leader"], CHAOS_SEEDS_MAX + 1, 0).validate(),
            Err(PlanError::Seeds(_))
        ));
        assert!(matches!(
            plan(&["isolated-leader"], 2, u64::MAX).validate(),
            Err(PlanError::Seeds(_))
        ));
        assert_eq!(plan(&["isolated-leader"], 2, 7).validate(), Ok(()));
    }
}
