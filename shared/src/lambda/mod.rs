//! The Lambda side of the pipeline, free of `lambda_runtime` so it is unit-testable: SQS batches
//! with partial failures and dead-lettering, the scheduler's tick and cost-guard's sweep, typed
//! configuration, metrics and cold-start wiring. Event shapes come from `aws_lambda_events`
//! (features `sqs` and `eventbridge` only); each function binary only wires these together.

pub mod config;
pub mod dead_letters;
pub mod metrics;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;
pub mod wiring;

use std::any::Any;
use std::collections::BTreeMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use aws_lambda_events::eventbridge::EventBridgeEvent;
use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use chrono::{DateTime, Duration, DurationRound, Utc};
use futures_util::FutureExt as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::{Instrument, error, info, info_span, warn};

pub use self::dead_letters::{DeadLetters, SqsDeadLetters};
use self::metrics::Metric;
use crate::bus::Bus;
use crate::domain::{Body, BudgetMode, Envelope, Queue, SystemId, sha256_hex};
use crate::pipeline::{self, Handled, Observed, PipelineError};
use crate::stages::{Deps, FINISH_MARGIN};

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

/// What became of the records of one SQS batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchCounts {
    pub processed: u32,
    pub duplicates: u32,
    /// Left on the queue for redelivery (batch item failures), including the two below.
    pub retried: u32,
    pub dead_lettered: u32,
    /// Of the retried: never started, the invocation's deadline being too near.
    pub not_started: u32,
    /// Of the retried: their handling panicked.
    pub panicked: u32,
}

impl BatchCounts {
    pub fn metrics(&self) -> [Metric; 6] {
        [
            Metric::count(metrics::MESSAGES_PROCESSED, self.processed),
            Metric::count(metrics::DUPLICATES, self.duplicates),
            Metric::count(metrics::MESSAGES_RETRIED, self.retried),
            Metric::count(metrics::MESSAGES_DEAD_LETTERED, self.dead_lettered),
            Metric::count(metrics::MESSAGES_NOT_STARTED, self.not_started),
            Metric::count(metrics::MESSAGES_PANICKED, self.panicked),
        ]
    }

    /// Records left for redelivery unstarted because the deadline is near: a batch item failure
    /// each, neither processed nor dead-lettered.
    pub(crate) fn not_started(&mut self, failures: &mut Vec<String>, ids: Vec<String>) {
        let n = u32::try_from(ids.len()).unwrap_or(u32::MAX);
        self.retried += n;
        self.not_started += n;
        failures.extend(ids);
    }
}

/// Whether one more record may be started: the invocation's deadline, when there is one, is at
/// least [`FINISH_MARGIN`] away. A record started later might be cut off by the timeout, which
/// fails the whole invocation and brings back the records already done; left unstarted, it only
/// comes back itself.
pub(crate) fn time_for_a_record(deadline: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
    deadline.is_none_or(|d| d - now >= FINISH_MARGIN)
}

/// Runs one record's handling so that a panic in it fails that record only: without this the
/// panic ends the invocation, and SQS redelivers the whole batch, records already done
/// included. Caught on the same task rather than in a spawned one, so the handling can keep
/// borrowing the invocation's ports and stays in its record's span.
///
/// Unwind safety is asserted: what a record shares with the next one is the ports, whose
/// remote state a half-done record cannot corrupt (its writes commit all or nothing, and its
/// idempotency claim expires with the deadline), and whose few in-process locks recover from
/// poisoning. Returns the panic's message on a panic.
pub(crate) fn isolated<F: Future>(work: F) -> impl Future<Output = Result<F::Output, String>> {
    AssertUnwindSafe(work)
        .catch_unwind()
        .map(|caught| caught.map_err(|payload| panic_message(payload.as_ref())))
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

/// The outcome of a batch: the message ids SQS must redeliver, and the counts for metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatchResponse {
    pub batch_item_failures: Vec<String>,
    pub counts: BatchCounts,
    /// What the processed records changed, for the batch's metrics.
    pub observed: Vec<Observed>,
}

impl From<BatchResponse> for SqsBatchResponse {
    fn from(batch: BatchResponse) -> Self {
        let mut response = SqsBatchResponse::default();
        response.set_failures(batch.batch_item_failures);
        response
    }
}

/// What became of one record.
enum Outcome {
    Processed(Observed),
    Duplicate,
    Retry,
    DeadLettered,
    /// Its handling panicked: left for redelivery like a retryable failure (a redelivery may
    /// succeed; after `maxReceiveCount` receives SQS moves it to the dead-letter queue).
    Panicked,
}

/// Handles the records of one SQS batch, one at a time, each in its own span.
///
/// A retryable failure leaves the record on the queue (a batch item failure). A permanent one
/// moves the raw body to the dead-letter queue of the record's queue with the reason attached
/// and acknowledges the record; if that move fails, the record is left for redelivery so nothing
/// is lost (after `maxReceiveCount` receives SQS moves it to the DLQ itself). A record from a
/// queue `queue_of` does not know is a deployment error and is also left for redelivery.
///
/// Two failures stay with their records instead of failing the invocation (which would bring
/// back the whole batch): no record is started with less than [`FINISH_MARGIN`] left before
/// the deadline (the rest are left for redelivery, unread), and a record whose handling panics
/// is left for redelivery while the others go on.
pub async fn handle_sqs_batch(
    deps: &Deps,
    bus: &dyn Bus,
    dlq: &dyn DeadLetters,
    queue_of: impl Fn(&str) -> Option<Queue>,
    records: &[SqsMessage],
) -> BatchResponse {
    let mut batch = BatchResponse::default();
    // SQS always sets the id; an empty identifier makes Lambda retry the whole batch, the safe
    // choice should one ever be missing.
    let id_of = |record: &SqsMessage| record.message_id.clone().unwrap_or_default();
    for (index, record) in records.iter().enumerate() {
        if !time_for_a_record(deps.config.deadline, deps.clock.now()) {
            let left: Vec<String> = records[index..].iter().map(id_of).collect();
            warn!(
                not_started = left.len(),
                margin_ms = FINISH_MARGIN.num_milliseconds(),
                "too little time left before the deadline: the remaining records are left for \
                 redelivery"
            );
            batch
                .counts
                .not_started(&mut batch.batch_item_failures, left);
            break;
        }
        let message_id = id_of(record);
        let source = record.event_source_arn.as_deref().unwrap_or_default();
        let outcome = if let Some(queue) = queue_of(source) {
            let span = info_span!("record", message_id = %message_id, queue = queue.as_str());
            let body = record.body.as_deref().unwrap_or_default();
            async {
                isolated(handle_record(deps, bus, dlq, queue, body))
                    .await
                    .unwrap_or_else(|panic| {
                        error!(%panic, "the record's handling panicked; left for redelivery");
                        Outcome::Panicked
                    })
            }
            .instrument(span)
            .await
        } else {
            error!(
                message_id = %message_id,
                event_source_arn = %source,
                "record from a queue this function does not consume; left for redelivery"
            );
            Outcome::Retry
        };
        match outcome {
            Outcome::Processed(observed) => {
                batch.counts.processed += 1;
                batch.observed.push(observed);
            }
            Outcome::Duplicate => batch.counts.duplicates += 1,
            Outcome::DeadLettered => batch.counts.dead_lettered += 1,
            Outcome::Retry => {
                batch.counts.retried += 1;
                batch.batch_item_failures.push(message_id);
            }
            Outcome::Panicked => {
                batch.counts.retried += 1;
                batch.counts.panicked += 1;
                batch.batch_item_failures.push(message_id);
            }
        }
    }
    batch
}

async fn handle_record(
    deps: &Deps,
    bus: &dyn Bus,
    dlq: &dyn DeadLetters,
    queue: Queue,
    body: &str,
) -> Outcome {
    match pipeline::handle_raw(deps, bus, queue, body).await {
        Ok(Handled::Processed {
            summary,
            sent,
            observed,
        }) => {
            info!(%summary, sent, "processed");
            Outcome::Processed(observed)
        }
        Ok(Handled::Duplicate { resent }) => {
            info!(resent, "duplicate delivery acknowledged");
            Outcome::Duplicate
        }
        Err(PipelineError::Retryable(reason)) => {
            warn!(%reason, "left for redelivery");
            Outcome::Retry
        }
        Err(PipelineError::Permanent(reason)) => {
            let digest = sha256_hex(body.as_bytes());
            let body_sha256 = &digest[..16];
            match dlq.send(queue, body, &reason).await {
                Ok(()) => {
                    warn!(%reason, body_sha256, body_bytes = body.len(), "moved to the dead-letter queue");
                    Outcome::DeadLettered
                }
                Err(e) => {
                    error!(
                        %reason,
                        error = %e,
                        body_sha256,
                        body_bytes = body.len(),
                        "could not move to the dead-letter queue; left for redelivery"
                    );
                    Outcome::Retry
                }
            }
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
        let now = self.pipeline.clock.now();
        let mut deps = self.clone();
        deps.pipeline.config.deadline = i64::try_from(deadline_ms)
            .ok()
            .filter(|ms| *ms > 0)
            .and_then(DateTime::<Utc>::from_timestamp_millis)
            .filter(|deadline| *deadline > now);
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
        metrics::emit(self.function, now, &batch.counts.metrics());
        metrics::emit_observed(self.function, now, &batch.observed);
        batch.into()
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
