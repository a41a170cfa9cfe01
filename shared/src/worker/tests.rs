//! The worker's loop on an in-memory inbox and the in-memory function wiring: what it deletes,
//! what it leaves for redelivery, and how it stops.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;

use super::sqs::{Inbox, Received};
use super::{Timing, Worker, WorkerReport};
use crate::bus::BusError;
use crate::clock::SystemClock;
use crate::domain::{Body, Queue};
use crate::lambda::QueueSources;
use crate::lambda::testing::TestFunction;

/// Queues in memory: what is waiting, and what the worker deleted or hid (receipt, seconds).
#[derive(Debug, Default)]
struct MemoryInbox {
    waiting: Mutex<VecDeque<Received>>,
    deleted: Mutex<Vec<String>>,
    hidden: Mutex<Vec<(String, Duration)>>,
}

impl MemoryInbox {
    fn with(bodies: &[&str]) -> Arc<Self> {
        let inbox = Self::default();
        for (i, body) in bodies.iter().enumerate() {
            inbox.lock_waiting().push_back(Received {
                message_id: format!("m{i}"),
                receipt_handle: format!("r{i}"),
                body: (*body).to_owned(),
                receive_count: 1,
            });
        }
        Arc::new(inbox)
    }

    fn lock_waiting(&self) -> std::sync::MutexGuard<'_, VecDeque<Received>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn deleted(&self) -> Vec<String> {
        self.deleted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Final visibility changes (heartbeats renew with the visibility timeout; retries hide for
    /// the message timeout).
    fn hidden(&self) -> Vec<(String, Duration)> {
        self.hidden
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[async_trait]
impl Inbox for MemoryInbox {
    async fn check(&self, _queue: Queue) -> Result<(), BusError> {
        Ok(())
    }

    async fn receive(
        &self,
        _queue: Queue,
        max: usize,
        _wait: Duration,
        _visibility: Duration,
    ) -> Result<Vec<Received>, BusError> {
        let taken: Vec<Received> = {
            let mut waiting = self.lock_waiting();
            let n = max.min(waiting.len());
            waiting.drain(..n).collect()
        };
        if taken.is_empty() {
            // A short long poll.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(taken)
    }

    async fn delete(&self, _queue: Queue, receipt_handle: &str) -> Result<(), BusError> {
        self.deleted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(receipt_handle.to_owned());
        Ok(())
    }

    async fn hide(
        &self,
        _queue: Queue,
        receipt_handle: &str,
        visibility: Duration,
    ) -> Result<(), BusError> {
        self.hidden
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((receipt_handle.to_owned(), visibility));
        Ok(())
    }
}

const TIMING: Timing = Timing {
    concurrency: 2,
    visibility: Duration::from_secs(30),
    message_timeout: Duration::from_secs(120),
    drain_timeout: Duration::from_secs(5),
    wait: Duration::from_secs(1),
};

/// Runs a worker on the fitness queue until `done` messages were deleted or hidden.
async fn run_until(t: &TestFunction, inbox: &Arc<MemoryInbox>, done: usize) -> WorkerReport {
    let worker = Worker::new(
        BTreeMap::from([(Queue::Fitness, t.deps.clone())]),
        inbox.clone(),
        TIMING,
        t.clock.clone(),
        Arc::new(SystemClock),
    );
    let watched = inbox.clone();
    let stop = async move {
        while watched.deleted().len() + watched.hidden().len() < done {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), worker.run(stop))
        .await
        .expect("the worker stops")
        .expect("the worker runs")
}

async fn world() -> TestFunction {
    TestFunction::new("snapshot", QueueSources::Only(Queue::Fitness))
        .await
        .expect("test world")
}

#[tokio::test]
async fn a_processed_message_is_deleted_once_its_work_is_committed_and_sent() {
    let t = world().await;
    let report =
        serde_json::to_string(&t.baseline_report(0.5).await.expect("report")).expect("JSON");
    let inbox = MemoryInbox::with(&[&report]);
    let done = run_until(&t, &inbox, 1).await;
    assert_eq!(
        done,
        WorkerReport {
            deleted: 1,
            retried: 0,
            abandoned: 0
        }
    );
    assert_eq!(inbox.deleted(), ["r0"]);
    // The baseline closed and the next cycle went out before the delete.
    let sent = t.drain();
    assert!(
        sent.iter()
            .any(|m| matches!(m.envelope.body, Body::CycleRequested { .. })),
        "{sent:?}"
    );
}

#[tokio::test]
async fn a_malformed_message_is_dead_lettered_with_its_reason_and_deleted() {
    let t = world().await;
    let inbox = MemoryInbox::with(&["{\"id\": 7"]);
    let done = run_until(&t, &inbox, 1).await;
    assert_eq!(done.deleted, 1);
    let dead = t.dead_letters.sent();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].queue, Queue::Fitness.as_str());
    assert!(dead[0].reason.contains("malformed message"), "{dead:?}");
}

#[tokio::test]
async fn a_retryable_failure_is_not_deleted_but_hidden_for_the_message_timeout() {
    let t = world().await;
    let report =
        serde_json::to_string(&t.baseline_report(0.5).await.expect("report")).expect("JSON");
    // Committed, then the send fails: the redelivery must re-send from the outbox.
    t.bus.fail_next_sends(1);
    let inbox = MemoryInbox::with(&[&report]);
    let done = run_until(&t, &inbox, 1).await;
    assert_eq!(done.retried, 1);
    assert!(inbox.deleted().is_empty());
    assert_eq!(inbox.hidden(), [("r0".to_owned(), TIMING.message_timeout)]);
    assert!(t.dead_letters.sent().is_empty());
}

#[tokio::test]
async fn a_stopped_worker_returns_with_nothing_in_flight() {
    let t = world().await;
    let inbox = MemoryInbox::with(&[]);
    let worker = Worker::new(
        BTreeMap::from([(Queue::Fitness, t.deps.clone())]),
        inbox.clone(),
        TIMING,
        t.clock.clone(),
        Arc::new(SystemClock),
    );
    let report = tokio::time::timeout(
        Duration::from_secs(5),
        worker.run(tokio::time::sleep(Duration::from_millis(50))),
    )
    .await
    .expect("stops at once")
    .expect("runs");
    assert_eq!(report, WorkerReport::default());
}
