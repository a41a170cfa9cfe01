//! The Lambda side of the pipeline, free of `lambda_runtime` so it is unit-testable: SQS batches
//! with partial failures and dead-lettering, the scheduler's tick and cost-guard's sweep, typed
//! configuration, metrics and cold-start wiring. Event shapes come from `aws_lambda_events`
//! (features `sqs` and `eventbridge` only); each function binary only wires these together.

pub mod config;
pub mod metrics;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;
pub mod wiring;

use std::collections::BTreeMap;
use std::sync::Arc;

use aws_lambda_events::eventbridge::EventBridgeEvent;
use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use chrono::{DateTime, Duration, DurationRound, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::{Instrument, error, info, info_span, warn};

use self::metrics::Metric;
use crate::bus::Bus;
use crate::consumer::{
    self, BatchCounts, Consumed, DeadLetters, consume, dead_letter, deadline_of,
};
use crate::domain::{Body, BudgetMode, Envelope, Queue, SystemId};
use crate::pipeline::{self, Handled, Observed, PipelineError};
use crate::stages::Deps;

/// Everything a function's handler needs, built once at cold start.
#[derive(Debug, Clone)]
pub struct FunctionDeps {
    pub pipeline: Deps,
    pub bus: Arc<dyn Bus>,
    pub dead_letters: Arc<dyn DeadLetters>,
    /// The queues the function consumes.
    pub sources: QueueSources,
    /// The function's name: the `Function` dimension of its metrics.
    pub function: &'static str,
    /// Where the invocation's spans go when an OTLP endpoint is configured
    /// (docs/architecture.md, "Tracing"); flushed at the end of each invocation.
    pub traces: Option<crate::telemetry::export::TraceExport>,
}

/// Which queue a record came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueSources {
    /// The function consumes one queue: every record is from it.
    Only(Queue),
    /// The function consumes several queues, told apart by the record's event source ARN.
    ByArn(BTreeMap<String, Queue>),
}

impl QueueSources {
    pub fn queue_of(&self, event_source_arn: &str) -> Option<Queue> {
        match self {
            Self::Only(queue) => Some(*queue),
            Self::ByArn(arns) => arns.get(event_source_arn).copied(),
        }
    }
}

/// The counts of one batch as metrics.
pub fn batch_metrics(counts: &BatchCounts) -> [Metric; 6] {
    [
        Metric::count(metrics::MESSAGES_PROCESSED, counts.processed),
        Metric::count(metrics::DUPLICATES, counts.duplicates),
        Metric::count(metrics::MESSAGES_RETRIED, counts.retried),
        Metric::count(metrics::MESSAGES_DEAD_LETTERED, counts.dead_lettered),
        Metric::count(metrics::MESSAGES_NOT_STARTED, counts.not_started),
        Metric::count(metrics::MESSAGES_PANICKED, counts.panicked),
    ]
}

/// The outcome of a pipeline batch: the message ids SQS must redeliver, the counts for
/// metrics, and what the processed records changed.
pub type BatchResponse = Consumed<Observed>;

/// Handles the records of one SQS batch through the pipeline, with the one consumer's rules
/// ([`consume`]): one record at a time in its own span, a retryable failure left on the queue,
/// a permanent one moved to the dead-letter queue of the record's queue with the reason.
pub async fn handle_sqs_batch(
    deps: &Deps,
    bus: &dyn Bus,
    dlq: &dyn DeadLetters,
    queue_of: impl Fn(&str) -> Option<Queue>,
    records: &[SqsMessage],
) -> BatchResponse {
    consume(
        deps.config.deadline,
        || deps.clock.now(),
        records,
        |record| {
            let source = record.event_source_arn.as_deref().unwrap_or_default();
            let queue = queue_of(source)?;
            let body = record.body.as_deref().unwrap_or_default();
            Some((queue.as_str(), handle_record(deps, bus, dlq, queue, body)))
        },
    )
    .await
}

async fn handle_record(
    deps: &Deps,
    bus: &dyn Bus,
    dlq: &dyn DeadLetters,
    queue: Queue,
    body: &str,
) -> consumer::Handled<Observed> {
    match pipeline::handle_raw(deps, bus, queue, body).await {
        Ok(Handled::Processed {
            summary,
            sent,
            observed,
        }) => {
            info!(%summary, sent, "processed");
            consumer::Handled::Done(observed)
        }
        Ok(Handled::Duplicate { resent }) => {
            info!(resent, "duplicate delivery acknowledged");
            consumer::Handled::Duplicate
        }
        Err(PipelineError::Retryable(reason)) => {
            warn!(%reason, "left for redelivery");
            consumer::Handled::Retry
        }
        Err(PipelineError::Permanent(reason)) => {
            dead_letter(dlq, queue.as_str(), body, &reason.text).await
        }
    }
}

/// Runs the tick for the minute of `scheduled_at` (idempotent per minute).
pub async fn handle_tick(
    deps: &Deps,
    bus: &dyn Bus,
    scheduled_at: DateTime<Utc>,
) -> Result<Handled, PipelineError> {
    let span = info_span!("tick", scheduled_at = %scheduled_at.to_rfc3339());
    pipeline::tick(deps, bus, scheduled_at)
        .instrument(span)
        .await
}

/// The budget sweep envelope of the minute of `at`: its id and its payload are the same for
/// any instant of that minute, so a retried or repeated sweep is a duplicate, not a conflict.
pub fn sweep_envelope(at: DateTime<Utc>) -> Envelope {
    let at = at.duration_trunc(Duration::minutes(1)).unwrap_or(at);
    Envelope {
        id: format!("sweep:{}", at.format("%Y-%m-%dT%H:%M")),
        causation_id: String::new(),
        system_id: SystemId::global(),
        base_generation: 0,
        sent_at: at,
        traceparent: None,
        body: Body::BudgetSweep {},
    }
}

/// Runs cost-guard's budget sweep for the minute of `at` (idempotent per minute).
pub async fn handle_sweep(
    deps: &Deps,
    bus: &dyn Bus,
    at: DateTime<Utc>,
) -> Result<Handled, PipelineError> {
    pipeline::handle(deps, bus, &sweep_envelope(at)).await
}

/// Which scheduled job an invocation asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    Tick,
    Sweep,
}

/// A scheduled invocation: the EventBridge Scheduler target input
/// `{"kind":"tick","scheduled_at":"<aws.scheduler.scheduled-time>"}`, an EventBridge
/// "Scheduled Event", or an empty object (the time is then the invocation's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Schedule {
    pub kind: Option<ScheduleKind>,
    pub scheduled_at: Option<DateTime<Utc>>,
}

/// The payloads a function can be invoked with.
#[derive(Debug, Clone, PartialEq)]
pub enum Invocation {
    Sqs(SqsEvent),
    Schedule(Schedule),
}

/// Why an invocation failed. Its [`InvocationError::kind`] is the `errorType` Lambda reports
/// for a failed scheduled run (`StoreUnavailable`, `MalformedEvent`, ...), so the console, the
/// scheduler's dead-letter queue and the logs name the error, not a Rust type.
#[derive(Debug, thiserror::Error)]
pub enum InvocationError {
    #[error("unrecognised event: {0}")]
    Unrecognised(&'static str),
    #[error("malformed {what} event: {source}")]
    Malformed {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("this function runs the {expected:?} schedule, not {got:?}")]
    WrongSchedule {
        expected: ScheduleKind,
        got: ScheduleKind,
    },
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
}

impl InvocationError {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Unrecognised(_) => "UnrecognisedEvent",
            Self::Malformed { .. } => "MalformedEvent",
            Self::WrongSchedule { .. } => "WrongSchedule",
            Self::Pipeline(e) => e.kind(),
        }
    }
}

#[cfg(feature = "runtime")]
impl From<InvocationError> for lambda_runtime::Diagnostic {
    fn from(e: InvocationError) -> Self {
        Self {
            error_type: e.kind().to_owned(),
            error_message: crate::telemetry::error_chain(&e),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SchedulePayload {
    kind: ScheduleKind,
    #[serde(default)]
    scheduled_at: Option<DateTime<Utc>>,
}

impl Invocation {
    /// Tells the payload shapes apart: SQS (`Records`), our schedule input (`kind`), an
    /// EventBridge event (`detail-type`), or `{}`.
    pub fn parse(event: Value) -> Result<Self, InvocationError> {
        let malformed = |what| move |source| InvocationError::Malformed { what, source };
        let Value::Object(fields) = &event else {
            return Err(InvocationError::Unrecognised("not a JSON object"));
        };
        if fields.contains_key("Records") {
            return serde_json::from_value(event)
                .map(Invocation::Sqs)
                .map_err(malformed("SQS"));
        }
        if fields.contains_key("kind") {
            let p: SchedulePayload =
                serde_json::from_value(event).map_err(malformed("schedule"))?;
            return Ok(Invocation::Schedule(Schedule {
                kind: Some(p.kind),
                scheduled_at: p.scheduled_at,
            }));
        }
        if fields.contains_key("detail-type") {
            let e: EventBridgeEvent<Value> =
                serde_json::from_value(event).map_err(malformed("EventBridge"))?;
            return Ok(Invocation::Schedule(Schedule {
                kind: None,
                scheduled_at: e.time,
            }));
        }
        if fields.is_empty() {
            return Ok(Invocation::Schedule(Schedule::default()));
        }
        Err(InvocationError::Unrecognised(
            "neither an SQS event nor a schedule",
        ))
    }
}

/// The answer to a scheduled invocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScheduleResponse {
    pub kind: ScheduleKind,
    pub id: String,
    /// `processed` or `duplicate`.
    pub outcome: &'static str,
    pub sent: usize,
}

/// What a function returns: a batch response to SQS, or the outcome of a scheduled run.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Response {
    Batch(SqsBatchResponse),
    Schedule(ScheduleResponse),
}

impl FunctionDeps {
    /// These dependencies for one invocation ending at `deadline_ms` (milliseconds since the
    /// epoch, from the Lambda context; 0 means unknown): claims expire, LLM calls must answer
    /// and records must start before then. A deadline already past when the invocation starts
    /// is not a real one (Lambda's is always ahead; a local Runtime API emulator may send a
    /// duration instead) and counts as unknown, so it cannot leave every record unstarted.
    #[must_use]
    pub fn until(&self, deadline_ms: u64) -> Self {
        let mut deps = self.clone();
        deps.pipeline.config.deadline = deadline_of(deadline_ms, self.pipeline.clock.now());
        deps
    }

    /// Handles an SQS batch and emits its counts as one metrics line.
    pub async fn sqs(&self, event: &SqsEvent) -> SqsBatchResponse {
        let batch = handle_sqs_batch(
            &self.pipeline,
            self.bus.as_ref(),
            self.dead_letters.as_ref(),
            |arn| self.sources.queue_of(arn),
            &event.records,
        )
        .await;
        let now = self.pipeline.clock.now();
        metrics::emit(self.function, now, &batch_metrics(&batch.counts));
        metrics::emit_observed(self.function, now, &batch.done);
        self.flush_traces().await;
        batch.into()
    }

    /// Sends the spans of the invocation, if tracing is exported; never fails.
    pub async fn flush_traces(&self) {
        if let Some(traces) = &self.traces {
            traces.flush().await;
        }
    }

    /// Runs `expected` for a scheduled invocation. A failure is returned (the invocation fails,
    /// so the scheduler's retry policy applies); the next minute runs regardless.
    pub async fn schedule(
        &self,
        expected: ScheduleKind,
        schedule: Schedule,
    ) -> Result<ScheduleResponse, InvocationError> {
        if let Some(got) = schedule.kind.filter(|k| *k != expected) {
            return Err(InvocationError::WrongSchedule { expected, got });
        }
        let at = schedule
            .scheduled_at
            .unwrap_or_else(|| self.pipeline.clock.now());
        let (id, result) = match expected {
            ScheduleKind::Tick => (
                crate::stages::tick::tick_id(at),
                handle_tick(&self.pipeline, self.bus.as_ref(), at).await,
            ),
            ScheduleKind::Sweep => (
                sweep_envelope(at).id,
                handle_sweep(&self.pipeline, self.bus.as_ref(), at).await,
            ),
        };
        self.flush_traces().await;
        let handled = result.inspect_err(|e| error!(%id, error = %e, "scheduled run failed"))?;
        let mut emitted = vec![Metric::count(metrics::SCHEDULED_RUNS, 1)];
        if expected == ScheduleKind::Sweep {
            emitted.extend(self.budget_mode_metric().await);
        }
        metrics::emit(self.function, self.pipeline.clock.now(), &emitted);
        let (outcome, sent) = match handled {
            Handled::Processed { summary, sent, .. } => {
                info!(%id, %summary, sent, "scheduled run processed");
                ("processed", sent)
            }
            Handled::Duplicate { resent } => ("duplicate", resent),
        };
        Ok(ScheduleResponse {
            kind: expected,
            id,
            outcome,
            sent,
        })
    }

    /// The budget mode after a sweep, as a gauge (0 normal, 1 economy, 2 paused).
    async fn budget_mode_metric(&self) -> Option<Metric> {
        match self.pipeline.control.budget_state().await {
            Ok(state) => Some(Metric::gauge(
                metrics::BUDGET_MODE,
                match state.mode {
                    BudgetMode::Normal => 0.0,
                    BudgetMode::Economy => 1.0,
                    BudgetMode::Paused => 2.0,
                },
            )),
            Err(e) => {
                warn!(error = %e, "could not read the budget mode for metrics");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests;
