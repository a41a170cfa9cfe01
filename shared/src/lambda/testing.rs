//! In-memory function wiring for the unit tests of the function crates: the in-memory store, the
//! local bus on a simulated clock, the recording dead-letter queues and the local engine, with
//! one system initialised (its baseline evaluation open, waiting for a fitness report).

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};

use super::{FunctionDeps, QueueSources};
use crate::bus::local::LocalBus;
use crate::clock::Clock;
use crate::clock::SimClock;
use crate::consumer::dead_letters::RecordingDeadLetters;
use crate::domain::{Body, DnaFile, Envelope, Outgoing, SystemId};
use crate::engine::LocalEngine;
use crate::local::{InitError, LocalHome, init_system};
use crate::stages::PipelineConfig;
use crate::store::memory::MemoryStore;
use crate::store::{EvolutionStore, SystemSettings};

/// The system the sample events in `infra/events/` address.
pub const SYSTEM: &str = "checkout-api";
/// When the test world starts; the sample events are dated from here.
pub const START: &str = "2026-03-01T12:00:00Z";
/// The DNA of [`SYSTEM`]: the example DNA file of `docs/architecture.md`, "Data model".
pub const DNA: &str = r#"{
  "system_id": "checkout-api",
  "genes": {
    "cache_size_mb": {"type": "int", "value": 256, "min": 16, "max": 4096, "max_step": 512,
                      "risk_weight": 0.3, "description": "in-process LRU size"},
    "timeout_s":     {"type": "float", "value": 2.5, "min": 0.1, "max": 30.0, "max_step": 2.0},
    "compression":   {"type": "choice", "value": "lz4", "choices": ["none", "lz4", "zstd"]},
    "prefetch":      {"type": "bool", "value": false},
    "region":        {"type": "choice", "value": "eu-west-1", "choices": ["eu-west-1"], "frozen": true}
  }
}"#;

#[derive(Debug, thiserror::Error)]
pub enum TestWorldError {
    #[error("bad test DNA: {0}")]
    Dna(#[from] crate::domain::DnaFileError),
    #[error(transparent)]
    Init(#[from] InitError),
    #[error("bad start time: {0}")]
    Time(#[from] chrono::ParseError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Pipeline(#[from] crate::pipeline::PipelineError),
    #[error("generation 0 of the test system is missing")]
    NoBaseline,
}

/// A function wired on in-memory adapters, with handles on each of them.
#[derive(Debug)]
pub struct TestFunction {
    pub deps: FunctionDeps,
    pub store: Arc<MemoryStore>,
    pub bus: Arc<LocalBus>,
    pub dead_letters: Arc<RecordingDeadLetters>,
    pub clock: Arc<SimClock>,
}

impl TestFunction {
    pub async fn new(
        function: &'static str,
        sources: QueueSources,
    ) -> Result<Self, TestWorldError> {
        let start = DateTime::parse_from_rfc3339(START)?.with_timezone(&Utc);
        let store = Arc::new(MemoryStore::new());
        let home = LocalHome::new(
            store.clone(),
            Arc::new(LocalEngine::new(0)),
            start,
            PipelineConfig::default(),
        );
        let (system_id, schema, genes) = DnaFile::parse(DNA)?;
        init_system(
            &home.deps,
            home.bus.as_ref(),
            &system_id,
            schema,
            genes,
            SystemSettings::default(),
        )
        .await?;
        // Generation 0's `DnaUpdated` is the running system's: each test looks at what its
        // own messages send.
        let far = start + Duration::days(365);
        while home.bus.pop_due(far).is_some() {}
        let dead_letters = Arc::new(RecordingDeadLetters::new());
        Ok(Self {
            deps: FunctionDeps {
                pipeline: home.deps,
                bus: home.bus.clone(),
                dead_letters: dead_letters.clone(),
                sources,
                function,
                traces: None,
            },
            store,
            bus: home.bus,
            dead_letters,
            clock: home.clock,
        })
    }

    pub fn system_id() -> SystemId {
        SystemId::parse(SYSTEM).unwrap_or_else(|_| SystemId::global())
    }

    /// Takes every message sent so far off the bus, delays included.
    pub fn drain(&self) -> Vec<Outgoing> {
        let far = self.clock.now() + Duration::days(365);
        std::iter::from_fn(|| self.bus.pop_due(far))
            .map(|d| d.outgoing)
            .collect()
    }

    /// The fitness report that closes the baseline evaluation of generation 0.
    pub async fn baseline_report(&self, score: f64) -> Result<Envelope, TestWorldError> {
        let system_id = Self::system_id();
        let generation = self
            .store
            .get_generation(&system_id, 0)
            .await?
            .ok_or(TestWorldError::NoBaseline)?;
        Ok(Envelope {
            id: "msg-baseline-fitness".into(),
            causation_id: String::new(),
            system_id,
            base_generation: 0,
            sent_at: self.clock.now(),
            traceparent: None,
            body: Body::FitnessReported {
                generation: 0,
                checksum: generation.checksum,
                score: Some(score),
                metrics: std::collections::BTreeMap::new(),
                error: None,
                cohort: None,
            },
        })
    }

    /// Closes the baseline evaluation, so the head is stable at generation 0 and cycles run;
    /// the messages it causes are taken off the bus.
    pub async fn close_baseline(&self) -> Result<(), TestWorldError> {
        let report = self.baseline_report(0.5).await?;
        crate::pipeline::handle(&self.deps.pipeline, self.deps.bus.as_ref(), &report).await?;
        self.drain();
        Ok(())
    }
}
