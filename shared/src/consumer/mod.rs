//! The one SQS batch consumer: every function's handler, notify's and the worker's records go
//! through [`consume`], so there is one batch loop, one deadline rule, one panic rule and one
//! dead-letter port. What a record *means* is the caller's; what happens to a record that
//! cannot be done (left for redelivery, or moved to its dead-letter queue with the reason) is
//! decided here. See `docs/architecture.md`, "Exactly once".

pub mod dead_letters;

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;

use aws_lambda_events::sqs::{SqsBatchResponse, SqsMessage};
use chrono::{DateTime, Utc};
use futures_util::FutureExt as _;
use tracing::{Instrument, error, info_span, warn};

pub use self::dead_letters::{DeadLetters, SqsDeadLetters};
use crate::domain::sha256_hex;
use crate::stages::FINISH_MARGIN;

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

/// What became of one record, as its handler tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled<T> {
    /// Done, with what the caller wants to know of it (for its metrics).
    Done(T),
    /// Already done by an earlier delivery: acknowledged.
    Duplicate,
    /// Failed for now: left on the queue for redelivery.
    Retry,
    /// Failed for good: moved to the dead-letter queue (see [`dead_letter`]) and acknowledged.
    DeadLettered,
}

/// The outcome of a batch: the message ids SQS must redeliver, the counts for metrics, and
/// what the records that were done reported.
#[derive(Debug, Clone, PartialEq)]
pub struct Consumed<T> {
    pub batch_item_failures: Vec<String>,
    pub counts: BatchCounts,
    pub done: Vec<T>,
}

impl<T> Default for Consumed<T> {
    fn default() -> Self {
        Self {
            batch_item_failures: Vec::new(),
            counts: BatchCounts::default(),
            done: Vec::new(),
        }
    }
}

impl<T> From<Consumed<T>> for SqsBatchResponse {
    fn from(batch: Consumed<T>) -> Self {
        let mut response = SqsBatchResponse::default();
        response.set_failures(batch.batch_item_failures);
        response
    }
}

/// Handles the records of one SQS batch, one at a time, each in its own `record` span.
///
/// `route` names the record's queue and starts its handling, or returns `None` for a record
/// from a queue the consumer does not know (a deployment error: left for redelivery). Two
/// failures stay with their records instead of failing the invocation (which would bring back
/// the whole batch): no record is started with less than [`FINISH_MARGIN`] left before
/// `deadline` (the rest are left for redelivery, unread), and a record whose handling panics is
/// left for redelivery while the others go on.
pub async fn consume<'r, T, F, Fut>(
    deadline: Option<DateTime<Utc>>,
    now: impl Fn() -> DateTime<Utc>,
    records: &'r [SqsMessage],
    mut route: F,
) -> Consumed<T>
where
    F: FnMut(&'r SqsMessage) -> Option<(&'static str, Fut)>,
    Fut: Future<Output = Handled<T>>,
{
    let mut batch = Consumed::default();
    // SQS always sets the id; an empty identifier makes Lambda retry the whole batch, the safe
    // choice should one ever be missing.
    let id_of = |record: &SqsMessage| record.message_id.clone().unwrap_or_default();
    for (index, record) in records.iter().enumerate() {
        if !time_for_a_record(deadline, now()) {
            let left: Vec<String> = records[index..].iter().map(id_of).collect();
            warn!(
                not_started = left.len(),
                margin_ms = FINISH_MARGIN.num_milliseconds(),
                "too little time left before the deadline: the remaining records are left for \
                 redelivery"
            );
            let n = u32::try_from(left.len()).unwrap_or(u32::MAX);
            batch.counts.retried += n;
            batch.counts.not_started += n;
            batch.batch_item_failures.extend(left);
            break;
        }
        let message_id = id_of(record);
        let Some((queue, work)) = route(record) else {
            error!(
                message_id = %message_id,
                event_source_arn = record.event_source_arn.as_deref().unwrap_or_default(),
                "record from a queue this function does not consume; left for redelivery"
            );
            batch.counts.retried += 1;
            batch.batch_item_failures.push(message_id);
            continue;
        };
        // `trace_id` and `system_id` are filled in once the body is read
        // (docs/architecture.md, "Tracing").
        let span = info_span!(
            "record",
            message_id = %message_id,
            queue,
            trace_id = tracing::field::Empty,
            system_id = tracing::field::Empty,
        );
        let handled = isolated(work)
            .instrument(span.clone())
            .await
            .map_err(|panic| {
                span.in_scope(|| {
                    error!(%panic, "the record's handling panicked; left for redelivery");
                });
            });
        match handled {
            Ok(Handled::Done(done)) => {
                batch.counts.processed += 1;
                batch.done.push(done);
            }
            Ok(Handled::Duplicate) => batch.counts.duplicates += 1,
            Ok(Handled::DeadLettered) => batch.counts.dead_lettered += 1,
            Ok(Handled::Retry) => {
                batch.counts.retried += 1;
                batch.batch_item_failures.push(message_id);
            }
            // Left for redelivery like a retryable failure (a redelivery may succeed; after
            // `maxReceiveCount` receives SQS moves it to the dead-letter queue).
            Err(()) => {
                batch.counts.retried += 1;
                batch.counts.panicked += 1;
                batch.batch_item_failures.push(message_id);
            }
        }
    }
    batch
}

/// A record that failed for good: its raw body moves to the dead-letter queue of `queue` with
/// the reason attached, and it is acknowledged. If the move fails, it is left for redelivery so
/// nothing is lost (after `maxReceiveCount` receives SQS moves it to the DLQ itself).
pub async fn dead_letter<T>(
    dlq: &dyn DeadLetters,
    queue: &str,
    body: &str,
    reason: &str,
) -> Handled<T> {
    let digest = sha256_hex(body.as_bytes());
    let body_sha256 = &digest[..16];
    match dlq.send(queue, body, reason).await {
        Ok(()) => {
            warn!(%reason, body_sha256, body_bytes = body.len(), "moved to the dead-letter queue");
            Handled::DeadLettered
        }
        Err(e) => {
            error!(
                %reason,
                error = %e,
                body_sha256,
                body_bytes = body.len(),
                "could not move to the dead-letter queue; left for redelivery"
            );
            Handled::Retry
        }
    }
}

/// The deadline of an invocation ending at `deadline_ms` (milliseconds since the epoch, from
/// the Lambda context; 0 means unknown). A deadline already past when the invocation starts is
/// not a real one (Lambda's is always ahead; the local Runtime API emulator sends a duration
/// instead) and counts as unknown, so it cannot turn every record into a retry.
pub fn deadline_of(deadline_ms: u64, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    i64::try_from(deadline_ms)
        .ok()
        .filter(|ms| *ms > 0)
        .and_then(DateTime::<Utc>::from_timestamp_millis)
        .filter(|deadline| *deadline > now)
}

/// Whether one more record may be started: the invocation's deadline, when there is one, is at
/// least [`FINISH_MARGIN`] away. A record started later might be cut off by the timeout, which
/// fails the whole invocation and brings back the records already done; left unstarted, it only
/// comes back itself.
fn time_for_a_record(deadline: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
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
fn isolated<F: Future>(work: F) -> impl Future<Output = Result<F::Output, String>> {
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
