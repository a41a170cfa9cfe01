//! The five stages (analyze, strategize, decide, snapshot, cost-guard) and the tick.
//!
//! A stage reads through the ports and *returns* the writes and messages its input calls for;
//! it never writes or sends itself. `crate::pipeline` commits the writes together with the
//! idempotency record (the outbox) and then sends, so every stage is idempotent under
//! redelivery and a crash between commit and send loses nothing (docs/architecture.md, "Exactly once").

pub mod analyze;
pub mod cost_guard;
pub mod decide;
pub mod judge;
pub mod replay;
pub mod rollback;
pub mod snapshot;
pub mod strategize;
pub mod tick;

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::clock::Clock;
use crate::cost::Budgets;
use crate::domain::{
    Body, Complexity, Envelope, Generation, Head, HistoryEntry, Outgoing, Role, SystemId,
    TaskContext, derive_id,
};
use crate::llm::{CallContext, DnaView, LanguageModel, LlmAnswer, LlmError};
use crate::store::CostLedger;
use crate::store::{ControlState, EvolutionStore, LlmCallRecord, StoreError, SystemRecord, Write};

/// Fifteen days: a day longer than SQS keeps a message at most (the dead-letter queues' 14).
pub const OUTBOX_RETENTION_SECONDS: i64 = 15 * 86_400;

/// How long one message needs to finish once started, LLM calls aside: its reads, the commit of
/// its writes with the idempotency record, and the sends of its outbox. Those are a DynamoDB
/// transaction and a few SQS or SNS calls, well under a second each; the rest is room for the
/// SDK's retries of a throttled call. A batch starts no record with less time than this left
/// before the invocation's deadline (Lambda would kill the invocation mid-record, and every
/// record of the batch would come back), and an LLM call must answer this long before the
/// deadline, so that a record whose call ran to its limit can still commit. Kept well under the
/// shortest function timeout the stack allows (10 s), so every batch starts its first record.
pub const FINISH_MARGIN: chrono::Duration = chrono::Duration::seconds(5);

/// Tunables of the pipeline. Defaults are what a production deployment starts with.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineConfig {
    /// At or below this local risk a valid mutation is approved by policy, without an LLM.
    pub auto_approve_risk: f64,
    /// Above this risk nothing may approve a mutation.
    pub risk_ceiling: f64,
    /// Above this risk an approval is held for a human (`PENDING_APPROVAL`); `None` turns the
    /// gate off.
    pub approval_threshold: Option<f64>,
    /// How long a pending approval waits before the tick rejects it.
    pub approval_ttl_seconds: u32,
    /// The plan-length cap.
    pub max_plan_steps: u32,
    /// A proposal deferred this many times is rejected.
    pub max_deferrals: u32,
    pub defer_delay_seconds: u32,
    /// Consecutive rollbacks that raise a `RollbackStreak` conflict.
    pub rollback_streak_conflict: u32,
    /// A plan step or analysis in flight for longer is considered lost.
    pub in_flight_timeout_seconds: i64,
    /// How long an in-progress idempotency claim holds (the Lambda timeout, on AWS).
    pub in_progress_seconds: i64,
    /// How long completed idempotency records are kept once their messages were sent (the
    /// dedup window for redeliveries).
    pub idempotency_ttl_seconds: i64,
    /// How long a completed record whose messages were not sent yet is kept: longer than a
    /// dead-letter queue keeps a message (14 days), so a redrive however late still finds the
    /// committed messages to send.
    pub outbox_retention_seconds: i64,
    /// A candidate is kept when its fitness is at least the parent's minus this.
    pub keep_tolerance: f64,
    /// When strategize yields no usable step, ask again after this long.
    pub empty_plan_retry_seconds: u32,
    /// Closed evaluations passed to the LLM roles.
    pub history_window: usize,
    pub budgets: Budgets,
    /// The invocation's deadline (a Lambda's): in-progress claims expire with it and LLM calls
    /// must answer before it. Set per invocation; `None` locally.
    pub deadline: Option<DateTime<Utc>>,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            auto_approve_risk: 0.3,
            risk_ceiling: 0.8,
            approval_threshold: None,
            approval_ttl_seconds: 86_400,
            max_plan_steps: 8,
            max_deferrals: 3,
            defer_delay_seconds: 300,
            rollback_streak_conflict: 4,
            in_flight_timeout_seconds: 3600,
            in_progress_seconds: 300,
            idempotency_ttl_seconds: 86_400,
            outbox_retention_seconds: OUTBOX_RETENTION_SECONDS,
            keep_tolerance: 0.0,
            empty_plan_retry_seconds: 900,
            history_window: 50,
            budgets: Budgets {
                economy_percent: 80,
                ..Budgets::default()
            },
            deadline: None,
        }
    }
}

/// The ports a stage reads through.
#[derive(Debug, Clone)]
pub struct Deps {
    pub store: Arc<dyn EvolutionStore>,
    pub control: Arc<dyn ControlState>,
    pub ledger: Arc<dyn CostLedger>,
    pub llm: Arc<dyn LanguageModel>,
    pub clock: Arc<dyn Clock>,
    /// The clock the ledger's days and months are counted by. Money is spent in real time, so
    /// a local run whose stages follow a simulated clock still checks the budgets of the real
    /// day (the Bedrock adapter reserves by the real date); on AWS both clocks are the wall
    /// clock.
    pub money_clock: Arc<dyn Clock>,
    pub config: PipelineConfig,
}

/// What a stage wants done.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StageOutput {
    pub writes: Vec<Write>,
    pub messages: Vec<Outgoing>,
    /// Messages sent before the commit and not kept in the outbox: a fan-out too large for one
    /// idempotency record (the tick's per-system messages). Each has an id derived from what
    /// caused it, and the stage derives them again from state when it runs again, so they may
    /// arrive twice and their consumers deduplicate them like any redelivery.
    pub fanout: Vec<Outgoing>,
    /// A short human account of what happened, for logs (`no-op: ...` when nothing).
    pub summary: String,
}

impl StageOutput {
    pub fn noop(reason: impl Into<String>) -> Self {
        Self {
            summary: format!("no-op: {}", reason.into()),
            ..Self::default()
        }
    }

    /// Records `alert` and publishes it with the outbox, so it is raised exactly when the
    /// stage's writes commit. `stage` and `index` keep the message's id apart from the stage's
    /// other messages.
    pub(crate) fn raise(
        &mut self,
        env: &Envelope,
        stage: &str,
        index: usize,
        generation: u64,
        at: DateTime<Utc>,
        alert: crate::domain::Alert,
    ) {
        self.writes.push(Write::PutAlert {
            alert: alert.clone(),
        });
        self.messages.push(reply(
            env,
            stage,
            index,
            generation,
            at,
            Body::AlertRaised { alert },
        ));
    }

    pub fn is_noop(&self) -> bool {
        self.writes.is_empty() && self.messages.is_empty() && self.fanout.is_empty()
    }
}

/// Stage failures, split by whether a redelivery can help.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Llm(#[from] LlmError),
    #[error("unknown system {0}")]
    UnknownSystem(SystemId),
    /// The message names a record that does not exist or contradicts the stored state.
    #[error("inconsistent message: {0}")]
    Inconsistent(String),
    /// A message of a type this stage does not consume.
    #[error("{0} is not consumed by this stage")]
    WrongStage(&'static str),
}

impl StageError {
    /// A stable name for the failure (see `pipeline::Reason`).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Store(e) => e.kind(),
            Self::Llm(crate::llm::LlmError::Unavailable(_)) => "LlmUnavailable",
            Self::Llm(crate::llm::LlmError::Invalid(_)) => "LlmRequestInvalid",
            Self::UnknownSystem(_) => "UnknownSystem",
            Self::Inconsistent(_) => "InconsistentMessage",
            Self::WrongStage(_) => "WrongStage",
        }
    }

    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Store(e) => e.is_retryable(),
            Self::Llm(e) => e.is_retryable(),
            Self::UnknownSystem(_) | Self::Inconsistent(_) | Self::WrongStage(_) => false,
        }
    }
}

pub type StageResult = Result<StageOutput, StageError>;

/// Registry entries read per page.
pub const REGISTRY_PAGE: usize = 200;

/// The registry a page at a time, in id order, so that the tick and the sweep never hold a
/// fleet whole.
#[derive(Debug, Default)]
pub(crate) struct RegistryPages {
    after: Option<SystemId>,
    done: bool,
}

impl RegistryPages {
    /// The next page, or `None` once every entry was read.
    pub(crate) async fn next(
        &mut self,
        deps: &Deps,
    ) -> Result<Option<Vec<SystemRecord>>, StoreError> {
        if self.done {
            return Ok(None);
        }
        let page = deps
            .store
            .list_systems_page(self.after.as_ref(), REGISTRY_PAGE)
            .await?;
        match page.last() {
            Some(last) if page.len() == REGISTRY_PAGE => self.after = Some(last.system_id.clone()),
            _ => self.done = true,
        }
        Ok((!page.is_empty()).then_some(page))
    }
}

/// Registry entry and head of a system, or `UnknownSystem`.
pub(crate) async fn load_system(
    deps: &Deps,
    id: &SystemId,
) -> Result<(SystemRecord, Head), StageError> {
    let system = deps
        .store
        .get_system(id)
        .await?
        .ok_or_else(|| StageError::UnknownSystem(id.clone()))?;
    let head = deps
        .store
        .get_head(id)
        .await?
        .ok_or_else(|| StageError::UnknownSystem(id.clone()))?;
    Ok((system, head))
}

pub(crate) async fn load_generation(
    deps: &Deps,
    id: &SystemId,
    generation: u64,
) -> Result<Generation, StageError> {
    deps.store
        .get_generation(id, generation)
        .await?
        .ok_or_else(|| {
            StageError::Inconsistent(format!("generation {generation} of {id} is missing"))
        })
}

/// The DNA view and recent history handed to the LLM roles.
pub(crate) async fn dna_view(
    deps: &Deps,
    system: &SystemRecord,
    head: &Head,
) -> Result<(DnaView, Vec<HistoryEntry>), StageError> {
    let current = load_generation(deps, &system.system_id, head.generation).await?;
    let history = deps
        .store
        .list_history(&system.system_id, deps.config.history_window)
        .await?;
    Ok((
        DnaView {
            system_id: system.system_id.clone(),
            generation: head.generation,
            schema: system.schema.clone(),
            genes: current.genes,
            stable_fitness: head.stable_fitness,
            constraints: (*system.settings.constraints).clone(),
        },
        history,
    ))
}

/// The call context of one role call.
pub(crate) async fn call_context(
    deps: &Deps,
    env: &Envelope,
    role: Role,
    complexity: Complexity,
    critical: bool,
) -> Result<CallContext, StageError> {
    let budget_mode = deps.control.budget_state().await?.mode;
    let (estimated_tokens, max_latency_ms) = match role {
        Role::Analyze => (2_000, None),
        Role::Strategize => (3_000, None),
        Role::Decide => (2_000, Some(10_000)),
        Role::Resolve => (2_500, Some(10_000)),
    };
    Ok(CallContext {
        system_id: env.system_id.clone(),
        envelope_id: env.id.clone(),
        task: TaskContext {
            role,
            complexity,
            estimated_tokens,
            max_latency_ms,
            accuracy_requirements: if critical { 0.9 } else { 0.7 },
            cost_sensitivity: if critical { 0.3 } else { 0.7 },
            critical,
        },
        budget_mode,
        // The call leaves the record its time to commit and send (`FINISH_MARGIN`).
        deadline: deps.config.deadline.map(|d| d - FINISH_MARGIN),
    })
}

/// Records a role call (whichever engine answered) in the audit trail, and reports at once any
/// budget threshold its spend crossed, so cost-guard can change the mode within the minute.
pub(crate) fn record_call<T>(
    out: &mut StageOutput,
    env: &Envelope,
    role: Role,
    answer: &LlmAnswer<T>,
    at: DateTime<Utc>,
) {
    // The call has returned by now: its span marks it in the message's trace with what it cost
    // (docs/architecture.md, "Tracing"); its duration is `latency_ms`.
    tracing::info_span!(
        "llm_call",
        otel.name = %format!("llm {}", role.as_str()),
        otel.kind = "client",
        role = role.as_str(),
        model = %answer.model_id,
        input_tokens = answer.usage.input_tokens,
        output_tokens = answer.usage.output_tokens,
        cost_nano_usd = answer.cost_nano_usd,
        latency_ms = answer.latency_ms,
        cache_hit = answer.cache_hit,
        fallback_reason = answer.fallback.as_deref(),
    )
    .in_scope(|| tracing::debug!("LLM call recorded"));
    out.writes.push(Write::PutLlmCall {
        call: LlmCallRecord {
            trace_id: None,
            call_id: derive_id("call", &[&env.id, role.as_str()]),
            system_id: env.system_id.clone(),
            envelope_id: env.id.clone(),
            role,
            model_id: answer.model_id.clone(),
            usage: answer.usage,
            cost_nano_usd: answer.cost_nano_usd,
            latency_ms: answer.latency_ms,
            bedrock_requests: answer.bedrock_requests,
            fallback: answer.fallback.clone(),
            at,
            cache_hit: answer.cache_hit,
        },
    });
    // Authorization failures met by the call: a critical security alert each, in the audit
    // trail and on the alerts topic, sent with the outbox so it cannot be lost.
    for (i, event) in answer.security_events.iter().enumerate() {
        let alert = event.alert(
            derive_id(
                "alert",
                &[&env.id, role.as_str(), "security", &i.to_string()],
            ),
            Some(env.system_id.clone()),
            at,
        );
        out.writes.push(Write::PutAlert {
            alert: alert.clone(),
        });
        out.messages.push(reply(
            env,
            &format!("security-{}", role.as_str()),
            i,
            env.base_generation,
            at,
            Body::AlertRaised { alert },
        ));
    }
    for (i, c) in answer.budget_crossings.iter().enumerate() {
        out.messages.push(reply(
            env,
            &format!("budget-{}", role.as_str()),
            i,
            env.base_generation,
            at,
            Body::BudgetThresholdCrossed {
                scope: c.scope,
                period: c.period,
                percent: c.percent,
            },
        ));
    }
}

/// A message caused by `env`; `index` keeps several messages of one stage apart.
pub(crate) fn reply(
    env: &Envelope,
    stage: &str,
    index: usize,
    base_generation: u64,
    at: DateTime<Utc>,
    body: Body,
) -> Outgoing {
    Outgoing::new(Envelope::caused_by(
        &env.id,
        Some(&env.trace()),
        stage,
        index,
        env.system_id.clone(),
        base_generation,
        at,
        body,
    ))
}

/// Complexity of the evolution task from the history: more genes and more rollbacks are harder.
pub(crate) fn complexity_of(genes: usize, history: &[HistoryEntry]) -> Complexity {
    let rollbacks = history
        .iter()
        .filter(|h| h.outcome != crate::domain::EvaluationOutcome::Keep)
        .count();
    if genes > 12 || rollbacks * 2 > history.len().max(1) {
        Complexity::High
    } else if genes > 5 || rollbacks > 0 {
        Complexity::Medium
    } else {
        Complexity::Low
    }
}

/// Caps free text from an LLM before it is stored or shown.
pub(crate) fn cap(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        text.to_owned()
    } else {
        let mut s: String = text.chars().take(max_chars).collect();
        s.push('…');
        s
    }
}
