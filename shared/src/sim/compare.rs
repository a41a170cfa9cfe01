//! Measuring the local engine against the random baseline on the benchmark landscapes.
//!
//! The engine side runs the real local pipeline ([`crate::local`]): the stages, the in-process
//! bus, an in-memory SQLite store and the simulated clock, with [`LocalEngine`] in every role and
//! the simulated system as the evaluator, exactly as `evolve demo` runs. Both searches measure
//! the starting point once and then get the same number of measurements.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{Landscape, SafeRandomSearch, SimSystem};
use crate::domain::{EvaluationOutcome, FitnessScore, Genes, HistoryEntry};
use crate::engine::LocalEngine;
use crate::evaluator::{EvalError, Evaluator};
use crate::local::{LocalHome, RunOptions, Silent};
use crate::stages::PipelineConfig;
use crate::store::EvolutionStore;
use crate::store::sqlite::SqliteStore;

/// Where the simulated clock of a pipeline run starts (2026-01-01T00:00:00Z): fixed, so runs
/// are reproducible.
const EPOCH_SECONDS: i64 = 1_767_225_600;

/// One search run on one system.
#[derive(Debug, Clone, PartialEq)]
pub struct RunResult {
    /// Fitness of the starting genes.
    pub initial: f64,
    /// Best fitness kept.
    pub best: f64,
    /// Measurements spent after the initial one.
    pub evaluations: usize,
    /// Measurements whose workload failed.
    pub failures: usize,
    /// The genes of the best kept generation.
    pub genes: Genes,
    /// The closed evaluations, oldest first (empty for the baseline search).
    pub history: Vec<HistoryEntry>,
    /// Why the run ended before spending its budget, if it did.
    pub stopped: Option<String>,
}

impl RunResult {
    pub fn gain(&self) -> f64 {
        self.best - self.initial
    }
}

/// Engine against baseline on one landscape, over several seeds at equal evaluation counts.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub landscape: Landscape,
    pub seeds: usize,
    pub evaluations: usize,
    /// Mean of (best - initial) over the seeds.
    pub engine_gain: f64,
    pub random_gain: f64,
    pub engine_runs: Vec<RunResult>,
    pub random_runs: Vec<RunResult>,
}

impl Comparison {
    /// Engine gain over random gain.
    pub fn ratio(&self) -> f64 {
        if self.random_gain > 0.0 {
            self.engine_gain / self.random_gain
        } else if self.engine_gain > 0.0 {
            f64::INFINITY
        } else {
            0.0
        }
    }
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<12} engine gain {:>10.3}  random gain {:>10.3}  ratio {:>5.2}x  ({} seeds, {} \
             evaluations each)",
            self.landscape.name(),
            self.engine_gain,
            self.random_gain,
            self.ratio(),
            self.seeds,
            self.evaluations
        )
    }
}

/// Runs the engine (through the pipeline) and [`SafeRandomSearch`] on `landscape` for every
/// seed, `evaluations` measurements each after the initial one. Each seed seeds the engine, the
/// baseline and a small jitter of the starting point, so the figures do not hinge on one
/// trajectory.
pub fn compare_on(
    landscape: Landscape,
    seeds: &[u64],
    evaluations: usize,
) -> Result<Comparison, CompareError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CompareError::Runtime(e.to_string()))?;
    let mut engine_runs = Vec::with_capacity(seeds.len());
    let mut random_runs = Vec::with_capacity(seeds.len());
    for &seed in seeds {
        let system = landscape.system().with_jittered_start(seed);
        engine_runs.push(runtime.block_on(run_pipeline(&system, seed, evaluations))?);
        random_runs.push(SafeRandomSearch::new(seed).run(&system, evaluations));
    }
    let mean = |runs: &[RunResult]| {
        if runs.is_empty() {
            0.0
        } else {
            runs.iter().map(RunResult::gain).sum::<f64>() / runs.len() as f64
        }
    };
    Ok(Comparison {
        landscape,
        seeds: seeds.len(),
        evaluations,
        engine_gain: mean(&engine_runs),
        random_gain: mean(&random_runs),
        engine_runs,
        random_runs,
    })
}

/// Why a pipeline run could not complete.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CompareError {
    #[error("cannot start the async runtime: {0}")]
    Runtime(String),
    #[error("the local pipeline failed: {0}")]
    Pipeline(String),
}

fn pipeline_error(e: impl fmt::Display) -> CompareError {
    CompareError::Pipeline(e.to_string())
}

/// The simulated system, counting its measurements.
#[derive(Debug)]
struct Counting<'a> {
    system: &'a SimSystem,
    calls: AtomicUsize,
}

#[async_trait]
impl Evaluator for Counting<'_> {
    async fn evaluate(&self, genes: &Genes) -> Result<FitnessScore, EvalError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.system.measure(genes)
    }
}

/// Runs the real local pipeline (stages, bus, in-memory SQLite store, simulated clock) with
/// [`LocalEngine`] seeded by `seed` in every role, until `evaluations` mutation generations have
/// been measured after the baseline. One sample per generation, so one measurement each.
pub async fn run_pipeline(
    system: &SimSystem,
    seed: u64,
    evaluations: usize,
) -> Result<RunResult, CompareError> {
    let system_id = system.system_id();
    let store = Arc::new(SqliteStore::open_in_memory().map_err(pipeline_error)?);
    let start = DateTime::<Utc>::from_timestamp(EPOCH_SECONDS, 0).unwrap_or_default();
    let home = LocalHome::new(
        store.clone(),
        Arc::new(LocalEngine::new(seed)),
        start,
        PipelineConfig::default(),
    );
    system
        .init_in(&home.deps, home.bus.as_ref())
        .await
        .map_err(pipeline_error)?;
    let counting = Counting {
        system,
        calls: AtomicUsize::new(0),
    };
    let options = RunOptions {
        generations: u32::try_from(evaluations).unwrap_or(u32::MAX),
        // Empty plans are retried every 15 simulated minutes; six hours of them mean the engine
        // has nothing left to try.
        max_idle: chrono::Duration::hours(6),
        ..RunOptions::default()
    };
    let report = home
        .runner(&counting)
        .run(system_id, &options, &Silent)
        .await
        .map_err(pipeline_error)?;
    let history = store
        .list_history(system_id, usize::MAX)
        .await
        .map_err(pipeline_error)?;
    let head = store
        .get_head(system_id)
        .await
        .map_err(pipeline_error)?
        .ok_or_else(|| CompareError::Pipeline("the head is gone".into()))?;
    let genes = store
        .get_generation(system_id, head.stable_generation)
        .await
        .map_err(pipeline_error)?
        .map(|g| g.genes)
        .unwrap_or_default();
    Ok(RunResult {
        initial: report.initial_fitness.unwrap_or(f64::NAN),
        best: report.best_fitness.unwrap_or(f64::NAN),
        evaluations: counting.calls.load(Ordering::Relaxed).saturating_sub(1),
        failures: history
            .iter()
            .filter(|h| h.outcome == EvaluationOutcome::Inconclusive)
            .count(),
        genes,
        history,
        stopped: report.stopped,
    })
}
