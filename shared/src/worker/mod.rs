//! The worker: the pipeline's queues consumed by a long-running process (`evolve worker`, e.g.
//! an ECS Fargate task) instead of Lambda event source mappings, for work that outlasts a Lambda
//! timeout or a fleet that prefers containers.
//!
//! Each consumed queue has its own loop: it long-polls `ReceiveMessage` while it has room (a
//! bounded number of messages in flight per queue) and hands each message to the very code a
//! Lambda runs ([`FunctionDeps::sqs`] on a one-record batch: `shared::pipeline`, the same
//! retryable/permanent split, the same dead-lettering with the reason, the same metrics under
//! the consuming function's name). Around it, the worker does what the event source mapping
//! does for a Lambda:
//! - a message stays hidden while it is worked on: a heartbeat renews its visibility every
//!   third of the visibility timeout, and stops when the work is done;
//! - a message is deleted only after the pipeline returned (its transaction committed and its
//!   outbox sent, or it was moved to its dead-letter queue); a retryable failure leaves it for
//!   redelivery, hidden for the message timeout so the failed attempt's idempotency claim has
//!   expired when it comes back;
//! - a stop signal stops the receiving, lets the in-flight messages finish (bounded by the
//!   drain timeout) and returns. A worker that dies instead loses nothing: its messages come
//!   back when their visibility lapses, and the idempotency record makes the redelivery either
//!   the first completed run or an acknowledged duplicate.

pub mod config;
pub mod sqs;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aws_lambda_events::sqs::{SqsEvent, SqsMessage};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tracing::{Instrument, error, info, info_span, warn};

pub use self::config::{Timing, WorkerConfig, WorkerConfigError};
use self::sqs::{Inbox, Received, SqsInbox};
use crate::bus::BusError;
use crate::clock::{Clock, Sleeper, SystemClock};
use crate::domain::Queue;
use crate::lambda::{FunctionDeps, QueueSources, wiring};
use crate::topology::consumer_of;

/// Why the worker could not run.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Fix the configuration; retrying cannot help.
    #[error(transparent)]
    Config(#[from] WorkerConfigError),
    /// A consumed queue cannot be read at startup (missing, denied, or unreachable).
    #[error("cannot consume the {queue} queue: {source}")]
    Queue {
        queue: &'static str,
        #[source]
        source: BusError,
    },
}

impl WorkerError {
    /// Whether starting again later can help (an unreachable endpoint, throttling).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Queue { source, .. } if source.is_retryable())
    }
}

/// What became of the messages a worker received, for its exit log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerReport {
    /// Processed, acknowledged duplicates and dead-lettered: deleted from their queue.
    pub deleted: u64,
    /// Left on their queue for redelivery (retryable failures, timeouts, failed deletes).
    pub retried: u64,
    /// Still in flight when the drain timeout ran out: they come back after their visibility.
    pub abandoned: u64,
}

#[derive(Debug, Default)]
struct Counts {
    deleted: AtomicU64,
    retried: AtomicU64,
    in_flight: AtomicU64,
}

/// The SDK clients the worker is wired with, built once by the binary.
#[derive(Debug, Clone)]
pub struct Clients {
    pub dynamo: aws_sdk_dynamodb::Client,
    pub s3: aws_sdk_s3::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub sns: aws_sdk_sns::Client,
    pub bedrock: aws_sdk_bedrockruntime::config::Builder,
}

/// Everything a worker needs, shared by its queue loops and message tasks.
#[derive(Debug)]
struct Context {
    inbox: Arc<dyn Inbox>,
    timing: Timing,
    clock: Arc<dyn Clock>,
    sleeper: Arc<dyn Sleeper>,
    counts: Counts,
}

/// A worker ready to run: one [`FunctionDeps`] per consumed queue.
#[derive(Debug)]
pub struct Worker {
    consumers: BTreeMap<Queue, FunctionDeps>,
    context: Arc<Context>,
}

impl Worker {
    pub fn new(
        consumers: BTreeMap<Queue, FunctionDeps>,
        inbox: Arc<dyn Inbox>,
        timing: Timing,
        clock: Arc<dyn Clock>,
        sleeper: Arc<dyn Sleeper>,
    ) -> Self {
        Self {
            consumers,
            context: Arc::new(Context {
                inbox,
                timing,
                clock,
                sleeper,
                counts: Counts::default(),
            }),
        }
    }

    /// Wires a worker on AWS the way the functions' `main.rs` wire themselves: the DynamoDB/S3
    /// store, Bedrock (or the local engine) for the LLM-calling stages and the local engine for
    /// the others, the SQS/SNS bus and the dead-letter queues, on the wall clock.
    pub fn on_aws(config: &WorkerConfig, clients: Clients) -> Result<Self, WorkerError> {
        config.check()?;
        let common = config.common();
        let store = wiring::dynamo_store(&common, clients.dynamo, clients.s3);
        let engine = if config.consumes.iter().any(|&q| consumer_of(q).calls_llm) {
            wiring::language_model(&config.llm, config.budgets, clients.bedrock, store.clone())
                .map_err(|e| WorkerConfigError::Invalid(e.to_string()))?
        } else {
            wiring::no_llm()
        };
        let with_llm = wiring::deps(store.clone(), engine, config.pipeline());
        let without_llm = wiring::deps(store, wiring::no_llm(), config.pipeline());
        let mut consumers = BTreeMap::new();
        let mut urls = BTreeMap::new();
        // docs/architecture.md, "Tracing": one export for the process, flushed after each
        // message by whichever consumer handled it.
        #[cfg(feature = "otlp")]
        let traces = crate::telemetry::http::from_env("evolve-worker");
        #[cfg(not(feature = "otlp"))]
        let traces = None;
        for &queue in &config.consumes {
            // The stages that call an LLM get the configured engine; the others the local
            // engine, as their Lambdas do.
            let pipeline = if consumer_of(queue).calls_llm {
                with_llm.clone()
            } else {
                without_llm.clone()
            };
            let mut deps = wiring::function(
                consumer_of(queue).function,
                &common,
                QueueSources::Only(queue),
                pipeline,
                clients.sqs.clone(),
                clients.sns.clone(),
            );
            deps.traces.clone_from(&traces);
            consumers.insert(queue, deps);
            urls.insert(queue, config.queue_urls[&queue].clone());
        }
        Ok(Self::new(
            consumers,
            Arc::new(SqsInbox::new(clients.sqs, urls)),
            config.timing,
            Arc::new(SystemClock),
            Arc::new(SystemClock),
        ))
    }

    /// Consumes until `stop` completes, then drains: no more receives, in-flight messages
    /// finish within the drain timeout (the rest are abandoned to their visibility timeout).
    pub async fn run(
        self,
        stop: impl std::future::Future<Output = ()> + Send,
    ) -> Result<WorkerReport, WorkerError> {
        for &queue in self.consumers.keys() {
            self.context
                .inbox
                .check(queue)
                .await
                .map_err(|source| WorkerError::Queue {
                    queue: queue.as_str(),
                    source,
                })?;
        }
        let (stopping, stop_rx) = watch::channel(false);
        let mut loops = JoinSet::new();
        let names: Vec<&str> = self.consumers.keys().map(|q| q.as_str()).collect();
        for (queue, deps) in self.consumers {
            loops.spawn(consume(
                Arc::clone(&self.context),
                queue,
                deps,
                stop_rx.clone(),
            ));
        }
        let t = self.context.timing;
        info!(
            queues = %names.join(","),
            concurrency = t.concurrency,
            visibility_s = t.visibility.as_secs(),
            message_timeout_s = t.message_timeout.as_secs(),
            "worker started"
        );
        stop.await;
        info!(
            in_flight = self.context.counts.in_flight.load(Ordering::SeqCst),
            "stopping: no more receives, draining the messages in flight"
        );
        let _ = stopping.send(true);
        let drained = tokio::select! {
            () = async { while loops.join_next().await.is_some() {} } => true,
            () = self.context.sleeper.sleep(t.drain_timeout) => false,
        };
        let counts = &self.context.counts;
        let abandoned = if drained {
            0
        } else {
            let n = counts.in_flight.load(Ordering::SeqCst);
            warn!(
                abandoned = n,
                drain_timeout_s = t.drain_timeout.as_secs(),
                "drain timeout: messages still in flight come back after their visibility timeout"
            );
            loops.abort_all();
            n
        };
        let report = WorkerReport {
            deleted: counts.deleted.load(Ordering::SeqCst),
            retried: counts.retried.load(Ordering::SeqCst),
            abandoned,
        };
        info!(
            deleted = report.deleted,
            retried = report.retried,
            abandoned = report.abandoned,
            "worker stopped"
        );
        Ok(report)
    }
}

/// One queue's loop: receive while there is room, one task per message; on stop, wait for the
/// tasks (the caller bounds the wait).
async fn consume(
    context: Arc<Context>,
    queue: Queue,
    deps: FunctionDeps,
    mut stop: watch::Receiver<bool>,
) {
    let timing = context.timing;
    let room = Arc::new(Semaphore::new(timing.concurrency));
    let mut tasks = JoinSet::new();
    let mut failures: u32 = 0;
    loop {
        while tasks.try_join_next().is_some() {}
        if *stop.borrow() {
            break;
        }
        // Hold the room before receiving: a received message is worked on at once, so its
        // visibility never runs out while it waits for a slot.
        let first = tokio::select! {
            permit = Arc::clone(&room).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            _ = stop.changed() => break,
        };
        let mut held = vec![first];
        while held.len() < 10 {
            match Arc::clone(&room).try_acquire_owned() {
                Ok(permit) => held.push(permit),
                Err(_) => break,
            }
        }
        // A stop abandons the long poll: a message SQS handed to it meanwhile comes back after
        // the visibility timeout.
        let received = tokio::select! {
            received = context.inbox.receive(queue, held.len(), timing.wait, timing.visibility) => received,
            _ = stop.changed() => break,
        };
        match received {
            Ok(messages) => {
                failures = 0;
                for message in messages {
                    let Some(permit) = held.pop() else { break };
                    context.counts.in_flight.fetch_add(1, Ordering::SeqCst);
                    let context = Arc::clone(&context);
                    let deps = deps.clone();
                    tasks.spawn(async move {
                        process(&context, queue, &deps, message).await;
                        context.counts.in_flight.fetch_sub(1, Ordering::SeqCst);
                        drop(permit);
                    });
                }
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let backoff = Duration::from_secs(1u64 << failures.min(5));
                error!(
                    queue = queue.as_str(),
                    error = %e,
                    backoff_s = backoff.as_secs(),
                    "receive failed"
                );
                tokio::select! {
                    () = context.sleeper.sleep(backoff) => {}
                    _ = stop.changed() => break,
                }
            }
        }
    }
    while tasks.join_next().await.is_some() {}
}

/// The one-record batch a Lambda would receive for `message`.
fn event_of(queue: Queue, message: &Received) -> SqsEvent {
    let mut record = SqsMessage::default();
    record.message_id = Some(message.message_id.clone());
    record.receipt_handle = Some(message.receipt_handle.clone());
    record.body = Some(message.body.clone());
    // The worker's consumers take one queue each (`QueueSources::Only`); the name stands in for
    // the ARN a Lambda record carries.
    record.event_source_arn = Some(queue.as_str().to_owned());
    let mut event = SqsEvent::default();
    event.records = vec![record];
    event
}

/// Works on one message under a heartbeat; deletes it only once the pipeline has returned.
async fn process(context: &Context, queue: Queue, deps: &FunctionDeps, message: Received) {
    // The envelope is read here too (the pipeline reads it again), so that the heartbeat's and
    // the deletion's log lines carry the trace and the system (docs/architecture.md, "Tracing").
    let envelope = serde_json::from_str::<crate::domain::Envelope>(&message.body).ok();
    let span = info_span!(
        "received",
        queue = queue.as_str(),
        message_id = %message.message_id,
        receive_count = message.receive_count,
        trace_id = envelope.as_ref().map(|e| e.trace().trace_id_hex()),
        system_id = envelope.as_ref().map(|e| e.system_id.to_string()),
    );
    async {
        let timing = context.timing;
        let deadline = context.clock.now()
            + chrono::Duration::from_std(timing.message_timeout)
                .unwrap_or_else(|_| chrono::Duration::minutes(5));
        let deps = deps.until(u64::try_from(deadline.timestamp_millis()).unwrap_or(0));
        let event = event_of(queue, &message);
        let outcome = {
            let work = deps.sqs(&event);
            let heartbeat = heartbeat(context, queue, &message.receipt_handle);
            tokio::pin!(work, heartbeat);
            tokio::select! {
                response = &mut work => Some(response),
                () = &mut heartbeat => None,
                () = context.sleeper.sleep(timing.message_timeout) => None,
            }
        };
        let acknowledged = if let Some(response) = outcome {
            response.batch_item_failures.is_empty()
        } else {
            warn!(
                message_timeout_s = timing.message_timeout.as_secs(),
                "message timeout: left for redelivery"
            );
            false
        };
        if acknowledged {
            match context.inbox.delete(queue, &message.receipt_handle).await {
                Ok(()) => {
                    context.counts.deleted.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                // The work is committed: the redelivery is acknowledged as a duplicate.
                Err(e) => warn!(error = %e, "could not delete the message; it will come back"),
            }
        } else if let Err(e) = context
            .inbox
            .hide(queue, &message.receipt_handle, timing.message_timeout)
            .await
        {
            warn!(error = %e, "could not delay the redelivery");
        }
        context.counts.retried.fetch_add(1, Ordering::SeqCst);
    }
    .instrument(span)
    .await;
}

/// Renews the message's visibility every third of the visibility timeout; never completes (the
/// caller drops it when the work is done). A refused renewal (an expired receipt handle) stops
/// the beats but not the work: finishing it is harmless, the pipeline being idempotent.
async fn heartbeat(context: &Context, queue: Queue, receipt_handle: &str) {
    let timing = context.timing;
    loop {
        context.sleeper.sleep(timing.heartbeat()).await;
        match context
            .inbox
            .hide(queue, receipt_handle, timing.visibility)
            .await
        {
            Ok(()) => {}
            Err(BusError::Unavailable(e)) => {
                warn!(error = %e, "visibility not renewed; trying again at the next beat");
            }
            Err(e @ (BusError::Refused(_) | BusError::Denied(_))) => {
                error!(error = %e, "the message's visibility can no longer be renewed");
                return std::future::pending().await;
            }
        }
    }
}

/// Completes on SIGTERM (what ECS sends to stop a task) or Ctrl-C.
pub async fn stop_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => info!("Ctrl-C received"),
        () = terminate => info!("SIGTERM received"),
    }
}
