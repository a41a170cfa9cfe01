//! What the user sees: logs and progress on stderr, listings and `--json` on stdout.

use std::process::ExitCode;

use indicatif::{ProgressBar, ProgressStyle};
use shared::domain::{Alert, AlertLevel};
use shared::local::{Observer, RunReport};
use shared::telemetry::SpanCollector;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Input the user can fix: one line naming the problem, exit code 2, nothing written.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);

pub fn bad_input(msg: impl Into<String>) -> anyhow::Error {
    BadInput(msg.into()).into()
}

pub fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let collector = spans();
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_target(false)
                .compact()
                .with_filter(filter),
        )
        .with(collector.with_filter(shared::telemetry::spans_only()))
        .init();
}

/// The collector the subscriber feeds, idle until `evolve demo --trace` or the worker's trace
/// export starts it.
pub fn spans() -> SpanCollector {
    shared::telemetry::export::collector()
}

pub fn report_error(e: &anyhow::Error) -> ExitCode {
    if let Some(bad) = e.downcast_ref::<BadInput>() {
        eprintln!("error: {bad}");
        return ExitCode::from(2);
    }
    eprintln!("error: {e:#}");
    ExitCode::FAILURE
}

/// Progress bar and alerts on stderr while a run goes on.
#[derive(Debug)]
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    pub fn new(generations: u32) -> Self {
        let bar = ProgressBar::new(u64::from(generations));
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} generations {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_prefix("evolving");
        Self { bar }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Observer for Progress {
    fn generation_closed(&self, done: u32, generation: u64, fitness: Option<f64>, kept: bool) {
        self.bar.set_position(u64::from(done));
        self.bar.set_message(format!(
            "gen {generation}: {} {}",
            fitness.map_or("failed".into(), |f| format!("{f:.3}")),
            if kept { "kept" } else { "rolled back" }
        ));
    }

    fn alert(&self, alert: &Alert) {
        let level = match alert.level {
            AlertLevel::Info => "info",
            AlertLevel::Warning => "warning",
            AlertLevel::Critical => "CRITICAL",
        };
        self.bar
            .suspend(|| eprintln!("alert [{level}] {}: {}", alert.kind, alert.message));
    }

    fn dead_letter(&self, reason: &str) {
        self.bar.suspend(|| eprintln!("dead-lettered: {reason}"));
    }
}

pub fn fmt_fitness(f: Option<f64>) -> String {
    f.map_or_else(|| "-".into(), |v| format!("{v:.4}"))
}

/// The human summary of a run, on stderr.
pub fn print_summary(report: &RunReport) {
    let gain = match (report.initial_fitness, report.final_fitness) {
        (Some(a), Some(b)) if a.abs() > f64::EPSILON => {
            format!(" ({:+.1}%)", (b - a) / a.abs() * 100.0)
        }
        _ => String::new(),
    };
    eprintln!(
        "system {}: {} generation(s) evaluated",
        report.system_id, report.generations
    );
    eprintln!(
        "  fitness {} -> {}{gain}, best {}",
        fmt_fitness(report.initial_fitness),
        fmt_fitness(report.final_fitness),
        fmt_fitness(report.best_fitness)
    );
    eprintln!(
        "  mutations applied {}, rollbacks {}; decisions: {} approved, {} rejected, {} deferred, {} pending",
        report.mutations_applied,
        report.rollbacks,
        report.decisions.approve,
        report.decisions.reject,
        report.decisions.defer,
        report.decisions.pending
    );
    let r = &report.llm_calls_by_role;
    eprintln!(
        "  LLM role calls {} (analyze {}, strategize {}, decide {}, resolve {}), Bedrock requests {}, cost {}",
        report.llm_calls,
        r.analyze,
        r.strategize,
        r.decide,
        r.resolve,
        report.bedrock_requests,
        shared::cost::format_usd(report.cost_nano_usd)
    );
    if let Some(why) = &report.stopped {
        eprintln!("  stopped early: {why}");
    }
    for d in &report.dead_letters {
        eprintln!("  dead-lettered: {d}");
    }
}

pub fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}
