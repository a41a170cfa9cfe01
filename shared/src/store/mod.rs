//! The evolution store port, its transaction model, and its adapters.
//!
//! A stage never writes: it returns [`Write`]s. The pipeline commits them in one [`Transaction`]
//! together with the idempotency record that stores the outgoing messages (the outbox). Every
//! adapter must apply a transaction all-or-nothing and evaluate the conditions exactly as
//! DynamoDB's `TransactWriteItems` would, so the SQLite store behaves like the cloud one.

pub mod dynamo;
mod ledger;
#[cfg(any(test, feature = "test-support"))]
pub mod memory;
pub mod performance;

pub use ledger::{
    CostLedger, Hold, LedgerEntry, RESERVATION_HOLD, Reclaim, ReclaimOutcome, Reservation,
    ReserveOutcome, SettleOutcome, Settlement,
};
mod rules;
#[cfg(feature = "sqlite")]
pub mod sqlite;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::{
    Alert, AnalysisRecord, BudgetMode, DecisionRecord, EventQuery, EvolutionEvent, FitnessSample,
    GeneSchema, Generation, Head, HeadStatus, HistoryEntry, Outgoing, Plan, PlanCursor, Role,
    SystemId,
};
use crate::store::performance::PerformanceSnapshot;

/// Per-system settings kept in the registry, read by the stages and the tick.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SystemSettings {
    /// Valid fitness samples needed to close an evaluation window early.
    pub samples_required: u32,
    /// How long an evaluation window stays open before it closes with what it has.
    pub evaluation_window_seconds: u32,
    /// How often the tick requests a cycle for an idle system.
    pub cycle_interval_seconds: u32,
    /// The confidence, in percent, a significance verdict needs when `samples_required` is 2
    /// or more (see `stages::judge`).
    #[serde(default = "default_confidence")]
    pub confidence_percent: u32,
    /// The DNA file's requirements and constraints, for the prompts (boxed: most systems have
    /// none, and every registry write carries the settings).
    #[serde(default, skip_serializing_if = "no_constraints")]
    pub constraints: Box<crate::domain::Constraints>,
}

fn default_confidence() -> u32 {
    crate::domain::judging::DEFAULT_CONFIDENCE_PERCENT
}

fn no_constraints(c: &crate::domain::Constraints) -> bool {
    c.is_empty()
}

impl Default for SystemSettings {
    fn default() -> Self {
        Self {
            samples_required: 1,
            evaluation_window_seconds: 600,
            cycle_interval_seconds: 900,
            confidence_percent: default_confidence(),
            constraints: Box::default(),
        }
    }
}

/// A system's registry entry (DynamoDB `PK=SYSTEMS`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SystemRecord {
    pub system_id: SystemId,
    pub schema: GeneSchema,
    pub settings: SystemSettings,
    pub created_at: DateTime<Utc>,
    /// When the tick should next request a cycle.
    pub next_cycle_at: DateTime<Utc>,
    /// The open evaluation window's deadline, when one is open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluation_deadline: Option<DateTime<Utc>>,
    /// The budget mode whose cost action the tick last applied to this system's schedule.
    #[serde(default = "normal_mode")]
    pub cost_mode: BudgetMode,
    /// When a held approval expires, so the tick finds it from the registry alone (decide sets
    /// it; the tick's per-system step clears it once the head holds no approval).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_expires_at: Option<DateTime<Utc>>,
    /// The ledger periods (`COST#<day or month>`) whose per-system budget alert was raised, so
    /// the sweep raises one alert per system per crossing, not one a minute.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub budget_alerts: Vec<String>,
    /// Optimistic lock: `PutSystem` commits only while the stored entry is still at the version
    /// it was read at, and stores the next one, so two writers never overwrite each other.
    #[serde(default)]
    pub version: u64,
}

fn normal_mode() -> BudgetMode {
    BudgetMode::Normal
}

impl SystemRecord {
    /// The cycle interval the budget mode allows: the configured one in Normal, longer in
    /// Economy; `None` in Paused, where scheduled cycles stop.
    /// A cycle was just requested for a reason of its own (a window closed): the scheduled
    /// cycle moves an interval on from now, so the tick does not request a second cycle for
    /// the same moment while this one is in flight. One reason, one cycle.
    pub fn cycle_requested(&mut self, now: DateTime<Utc>) {
        if let Some(interval) = self.effective_cycle_interval(self.cost_mode) {
            let next = now + chrono::Duration::seconds(i64::from(interval));
            if self.next_cycle_at < next {
                self.next_cycle_at = next;
            }
        }
    }

    pub fn effective_cycle_interval(&self, mode: BudgetMode) -> Option<u32> {
        let base = self.settings.cycle_interval_seconds;
        match mode {
            BudgetMode::Normal => Some(base),
            BudgetMode::Economy => Some(base.saturating_mul(ECONOMY_CYCLE_FACTOR)),
            BudgetMode::Paused => None,
        }
    }
}

/// How much longer the cycle interval is in Economy: a quarter of the cycles, so a quarter of
/// the LLM spend and of the compute the cycles drive.
pub const ECONOMY_CYCLE_FACTOR: u32 = 4;

/// Token usage of one LLM call, as Bedrock reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    #[serde(default)]
    pub cache_read_tokens: u64,
    #[serde(default)]
    pub cache_write_tokens: u64,
}

impl Usage {
    pub fn total(&self) -> u64 {
        self.input_tokens + self.output_tokens + self.cache_read_tokens + self.cache_write_tokens
    }
}

/// The audit record of one LLM role call, whichever engine answered it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlmCallRecord {
    pub call_id: String,
    pub system_id: SystemId,
    /// The envelope that caused the call.
    pub envelope_id: String,
    pub role: Role,
    pub model_id: String,
    pub usage: Usage,
    pub cost_nano_usd: u64,
    pub latency_ms: u64,
    /// HTTP requests sent to Bedrock for this call, retries included.
    pub bedrock_requests: u32,
    /// Why the local engine answered instead of the routed model, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
    pub at: DateTime<Utc>,
    /// Answered from the response cache (at zero cost, no request); `model_id` is the model
    /// whose stored answer was reused.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cache_hit: bool,
    /// The trace of the message that made the call (docs/architecture.md, "Tracing").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

/// The current budget mode with when and why it was set (control state).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BudgetState {
    pub mode: BudgetMode,
    pub changed_at: Option<DateTime<Utc>>,
    pub reason: String,
}

impl Default for BudgetState {
    fn default() -> Self {
        Self {
            mode: BudgetMode::Normal,
            changed_at: None,
            reason: "initial".into(),
        }
    }
}

/// A per-model circuit breaker, shared through control state so every function sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CircuitState {
    pub model_id: String,
    pub consecutive_failures: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_until: Option<DateTime<Utc>>,
    /// Bedrock throttled this model recently: until then, low-priority calls skip it without a
    /// request (see `domain::Priority`); other calls still try it with their retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttled_until: Option<DateTime<Utc>>,
}

/// A model's raw answer, stored before it is parsed so that a retry after a crash parses it
/// instead of paying for the call again (docs/architecture.md, "The LLM layer").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Envelope id and role.
    pub key: String,
    pub model_id: String,
    pub answer: serde_json::Value,
    pub usage: Usage,
    pub cost_nano_usd: u64,
    pub expires_at: DateTime<Utc>,
}

/// A validated model answer kept for reuse by an identical request (the response cache): same
/// model, role, system prompt, messages, output schema and inference settings. Only answers that
/// passed validation are stored, and a hit is validated again before it is used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CachedAnswer {
    /// SHA-256 (hex) of the model id, the role and the exact request.
    pub key: String,
    pub model_id: String,
    pub role: Role,
    /// The raw answer as the model gave it (before extraction), like a checkpoint's.
    pub answer: serde_json::Value,
    /// What the answer cost when it was paid for (a hit costs nothing).
    pub usage: Usage,
    pub cost_nano_usd: u64,
    pub stored_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// One state change, with the condition DynamoDB would check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Write {
    /// A new system: registry entry, head and generation 0. Fails if the system exists.
    CreateSystem {
        system: SystemRecord,
        head: Head,
        generation: Generation,
    },
    /// Replaces the registry entry. The system must exist (else `Invalid`) and its stored entry
    /// must still be at `system.version` (else `ConditionFailed`); the stored entry gets
    /// `version + 1`.
    PutSystem { system: SystemRecord },
    /// A new immutable generation. Fails if that generation exists.
    PutGeneration { generation: Generation },
    /// Moves the head. Fails unless the stored head is at `expected_generation` with
    /// `expected_status`.
    UpdateHead {
        expected_generation: u64,
        expected_status: HeadStatus,
        head: Head,
    },
    /// Moves the head out of `AwaitingApproval` for the verdict on `decision_id`. Fails unless
    /// the stored head is at `expected_generation`, awaiting approval of exactly that decision:
    /// generation and status alone would let a late verdict on an answered decision move a head
    /// that now holds another decision of the same generation.
    ResolveApproval {
        expected_generation: u64,
        decision_id: String,
        head: Head,
    },
    /// Counts one more fitness report into the open window: `head` is the stored head with its
    /// evaluation's `samples_seen` moved on. Fails unless the stored head is evaluating
    /// `expected_generation` with `expected_samples` seen, so of two reports read together one
    /// fails, reads again, and counts both.
    CountSample {
        expected_generation: u64,
        expected_samples: u32,
        head: Head,
    },
    /// Upsert by event id (a retry rewrites the same event).
    PutEvent { event: EvolutionEvent },
    /// An audit record. Fails if the decision id exists: decisions are written once.
    PutDecision { decision: DecisionRecord },
    /// Upsert by sample id.
    PutFitnessSample { sample: FitnessSample },
    /// Upsert by (system, generation): the record of a closed evaluation.
    PutHistory {
        system_id: SystemId,
        entry: HistoryEntry,
    },
    /// A new plan. Fails if the plan id exists.
    PutPlan { plan: Plan },
    /// The plan cursor. `expected_version: None` means it must not exist yet; otherwise the
    /// stored cursor must have that version.
    PutCursor {
        expected_version: Option<u64>,
        cursor: PlanCursor,
    },
    /// Upsert by analysis id.
    PutAnalysis { analysis: AnalysisRecord },
    /// Upsert by call id.
    PutLlmCall { call: LlmCallRecord },
    /// Upsert by alert id.
    PutAlert { alert: Alert },
    /// Changes the budget mode. Fails unless the stored mode is `expected`.
    SetBudgetMode {
        expected: BudgetMode,
        state: BudgetState,
    },
    /// The bill's reconciliation of a day. Fails when the day is reconciled already, or when
    /// it was found not billed yet by a run on the same UTC day (see
    /// [`Reconciliation::refused_over`](crate::cost::reconcile::Reconciliation::refused_over)).
    PutReconciliation {
        record: crate::cost::reconcile::Reconciliation,
    },
    /// Feeds a closed evaluation's prediction error (|predicted - actual| fitness impact) into
    /// the performance record of the model that predicted it. No condition.
    RecordPrediction {
        model_id: String,
        role: Role,
        predicted: f64,
        actual: f64,
    },
}

/// The idempotency record written with a transaction: the outbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    pub key: String,
    pub payload_hash: String,
    pub outgoing: Vec<Outgoing>,
    pub completed_at: DateTime<Utc>,
    /// After this the record is ignored (DynamoDB TTL).
    pub expires_at: DateTime<Utc>,
}

/// Writes applied all-or-nothing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Transaction {
    pub writes: Vec<Write>,
    pub completion: Option<Completion>,
}

/// The result of claiming an idempotency key (Powertools for AWS Lambda semantics).
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// Ours to process.
    Claimed,
    /// Already processed: re-send the stored messages and acknowledge.
    Completed { outgoing: Vec<Outgoing> },
    /// Another invocation holds it until `until`: retry later.
    InProgress { until: DateTime<Utc> },
    /// The key was used for a different payload: a producer bug, never retried.
    PayloadMismatch,
}

/// The arguments of [`EvolutionStore::claim`] as one value, with the decision and the
/// in-progress record every store derives from them in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimRequest<'a> {
    pub key: &'a str,
    pub payload_hash: &'a str,
    pub now: DateTime<Utc>,
    pub in_progress_until: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StoreError {
    /// A condition failed: another writer got there first. Retrying re-reads and decides again.
    #[error("condition failed: {0}")]
    ConditionFailed(String),
    /// The backend is unreachable, throttling, or timed out.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A stored record cannot be read back.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// The request itself is wrong (missing system for an update, oversized item).
    #[error("invalid store request: {0}")]
    Invalid(String),
    /// The backend refused our credentials or a key policy (`AccessDenied`, KMS): a security
    /// event, and permanent, because a redelivery runs with the same role.
    #[error("store access denied: {}", .0.summary())]
    Denied(Box<crate::security::SecurityEvent>),
    /// This region is not the writer: the writer moved (or is moving) to another region
    /// (docs/architecture.md, "Region failover"). Retryable: the message waits in its queue,
    /// and is taken up again if the writer moves back.
    #[error("writer fenced: {0}")]
    Fenced(String),
}

impl StoreError {
    /// A stable name for the failure (see `pipeline::Reason`).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::ConditionFailed(_) => "ConditionFailed",
            Self::Unavailable(_) => "StoreUnavailable",
            Self::Corrupt(_) => "CorruptRecord",
            Self::Invalid(_) => "InvalidStoreRequest",
            Self::Denied(_) => "AccessDenied",
            Self::Fenced(_) => "WriterFenced",
        }
    }

    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::ConditionFailed(_) | Self::Unavailable(_) | Self::Fenced(_)
        )
    }

    /// The security event behind an authorization failure.
    pub fn security_event(&self) -> Option<&crate::security::SecurityEvent> {
        match self {
            Self::Denied(event) => Some(event),
            _ => None,
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// The evolution store port.
#[async_trait]
pub trait EvolutionStore: Send + Sync + std::fmt::Debug {
    async fn get_system(&self, id: &SystemId) -> StoreResult<Option<SystemRecord>>;
    async fn list_systems(&self) -> StoreResult<Vec<SystemRecord>>;
    /// Registry entries in id order after `after` (from the first when `None`), at most
    /// `limit`: the tick and the sweep page through a fleet instead of holding it whole.
    async fn list_systems_page(
        &self,
        after: Option<&SystemId>,
        limit: usize,
    ) -> StoreResult<Vec<SystemRecord>>;
    async fn get_head(&self, id: &SystemId) -> StoreResult<Option<Head>>;
    async fn get_generation(
        &self,
        id: &SystemId,
        generation: u64,
    ) -> StoreResult<Option<Generation>>;
    /// Generations in ascending order, starting after `after` (all when `None`), at most `limit`.
    async fn list_generations(
        &self,
        id: &SystemId,
        after: Option<u64>,
        limit: usize,
    ) -> StoreResult<Vec<Generation>>;
    /// Events in ascending time order at or after `since`, at most `limit`, each with its
    /// `storage_metadata` (where its body is stored, its size and storage class).
    async fn list_events(
        &self,
        id: &SystemId,
        since: Option<DateTime<Utc>>,
        limit: usize,
    ) -> StoreResult<Vec<EvolutionEvent>>;
    /// The seed's history query: the events of `id` that match `query` (by id, by type, in a
    /// time range), in time order, at most `query.limit`. Reads from `since` on through
    /// [`EvolutionStore::list_events`], so old events come from wherever the store keeps them
    /// (DynamoDB's recent window, then the S3 archive).
    async fn query_events(
        &self,
        id: &SystemId,
        query: &EventQuery,
    ) -> StoreResult<Vec<EvolutionEvent>> {
        let mut events = self.list_events(id, query.since, usize::MAX).await?;
        events.retain(|e| query.matches(e));
        events.truncate(query.limit);
        Ok(events)
    }
    async fn get_decision(
        &self,
        id: &SystemId,
        decision_id: &str,
    ) -> StoreResult<Option<DecisionRecord>>;
    /// Decisions in ascending time order at or after `since`, at most `limit`.
    async fn list_decisions(
        &self,
        id: &SystemId,
        since: Option<DateTime<Utc>>,
        limit: usize,
    ) -> StoreResult<Vec<DecisionRecord>>;
    async fn list_fitness(&self, id: &SystemId, generation: u64)
    -> StoreResult<Vec<FitnessSample>>;
    /// The most recent closed evaluations, in ascending generation order, at most `limit`.
    async fn list_history(&self, id: &SystemId, limit: usize) -> StoreResult<Vec<HistoryEntry>>;
    async fn get_plan(&self, id: &SystemId, plan_id: &str) -> StoreResult<Option<Plan>>;
    async fn get_cursor(&self, id: &SystemId) -> StoreResult<Option<PlanCursor>>;
    async fn get_analysis(
        &self,
        id: &SystemId,
        analysis_id: &str,
    ) -> StoreResult<Option<AnalysisRecord>>;
    /// LLM call records in ascending time order; all systems when `id` is `None`.
    async fn list_llm_calls(
        &self,
        id: Option<&SystemId>,
        since: Option<DateTime<Utc>>,
    ) -> StoreResult<Vec<LlmCallRecord>>;
    /// Alerts in ascending time order.
    async fn list_alerts(
        &self,
        since: Option<DateTime<Utc>>,
        limit: usize,
    ) -> StoreResult<Vec<Alert>>;

    /// The bill's reconciliations of the days from `since` on (all when `None`), in day order.
    async fn reconciliations(
        &self,
        since: Option<chrono::NaiveDate>,
    ) -> StoreResult<Vec<crate::cost::reconcile::Reconciliation>>;

    /// Claims `key` for processing until `in_progress_until`; see [`Claim`].
    async fn claim(
        &self,
        key: &str,
        payload_hash: &str,
        now: DateTime<Utc>,
        in_progress_until: DateTime<Utc>,
    ) -> StoreResult<Claim>;
    /// Drops an in-progress claim after a failure so the redelivery can claim it at once.
    async fn release(&self, key: &str) -> StoreResult<()>;
    /// Records that a completed record's outgoing messages were sent, so a later duplicate is
    /// acknowledged without re-sending them (`Claim::Completed` then carries none), and keeps
    /// the record only until `expires_at`: an unsent outbox is kept as long as a dead-letter
    /// queue keeps the message that will re-send it; a sent one only as long as the dedup window.
    async fn mark_sent(&self, key: &str, expires_at: DateTime<Utc>) -> StoreResult<()>;
    /// Applies a transaction all-or-nothing. A failed condition is `ConditionFailed` naming it.
    async fn commit(&self, tx: Transaction) -> StoreResult<()>;

    /// Deletes every record of a system, its LLM call records included (not the ledger, whose
    /// money stays counted). Used by
    /// the local demo to start over; never called by a stage.
    async fn purge_system(&self, id: &SystemId) -> StoreResult<()> {
        Err(StoreError::Invalid(format!(
            "purging system {id} is not supported by this store"
        )))
    }
}

/// Everything a home keeps: the evolution records, control state and the cost ledger. The
/// SQLite, in-memory and DynamoDB stores are each all three.
pub trait FullStore: EvolutionStore + ControlState + crate::store::CostLedger {}

impl<T: EvolutionStore + ControlState + crate::store::CostLedger + ?Sized> FullStore for T {}

/// Control state: budget mode, circuit breakers and model performance (DynamoDB `PK=CTRL`).
#[async_trait]
pub trait ControlState: Send + Sync + std::fmt::Debug {
    async fn budget_state(&self) -> StoreResult<BudgetState>;
    async fn circuit(&self, model_id: &str) -> StoreResult<Option<CircuitState>>;
    async fn put_circuit(&self, state: &CircuitState) -> StoreResult<()>;
    /// Applies `change` to the model's circuit state as stored (`None` when there is none) and
    /// stores the result, atomically: every function updates the same breaker, and concurrent
    /// updates each build on the others' results instead of overwriting them.
    async fn update_circuit(
        &self,
        model_id: &str,
        change: &(dyn Fn(Option<CircuitState>) -> CircuitState + Sync),
    ) -> StoreResult<()>;
    /// The model performance record the router reads; empty until one is stored.
    async fn performance(&self) -> StoreResult<PerformanceSnapshot>;
    /// Replaces the stored performance record (last writer wins: it is a moving average, so a
    /// lost update only drops a few samples' weight).
    async fn put_performance(&self, snapshot: &PerformanceSnapshot) -> StoreResult<()>;
    /// Applies `change` to the stored performance record and stores it, atomically, like
    /// [`ControlState::update_circuit`].
    async fn update_performance(
        &self,
        change: &(dyn for<'p> Fn(&'p mut PerformanceSnapshot) + Sync),
    ) -> StoreResult<()>;
    /// The checkpoint stored under `key`, unless it expired by `now`.
    async fn checkpoint(&self, key: &str, now: DateTime<Utc>) -> StoreResult<Option<Checkpoint>>;
    async fn put_checkpoint(&self, checkpoint: &Checkpoint) -> StoreResult<()>;
    /// The response-cache entry under `key`, unless it expired by `now` (the clock port's time;
    /// the store's own TTL deletes late and is never relied on).
    async fn cached_answer(
        &self,
        key: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<CachedAnswer>>;
    /// Stores (or replaces) a response-cache entry.
    async fn put_cached_answer(&self, entry: &CachedAnswer) -> StoreResult<()>;
}
