//! An in-process bus with SQS-like delivery: per-message delays, redelivery after a visibility
//! timeout, receive counts and a dead-letter list. Topic messages are delivered like queue
//! messages, to whoever the runner subscribes to them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};

use super::{Bus, BusError};
use crate::clock::Clock;
use crate::domain::{Destination, Outgoing};

/// A message taken off the bus, with how often it has been received.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub outgoing: Outgoing,
    pub receive_count: u32,
}

/// A message given up on, with the reason.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub outgoing: Outgoing,
    pub reason: String,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Default)]
struct Inner {
    seq: u64,
    pending: BTreeMap<(DateTime<Utc>, u64), Delivery>,
    dead: Vec<DeadLetter>,
    sent: u64,
}

impl Inner {
    /// Queues a delivery; the sequence number keeps equal visibility times in send order.
    fn push(&mut self, delivery: Delivery, visible_at: DateTime<Utc>) {
        self.seq += 1;
        self.pending.insert((visible_at, self.seq), delivery);
    }
}

#[derive(Debug)]
pub struct LocalBus {
    clock: Arc<dyn Clock>,
    inner: Mutex<Inner>,
    /// Sends to refuse before accepting again: lets tests crash a handler between commit and send.
    fail_sends: AtomicU32,
    refuse_sends: AtomicU32,
    /// Sends with a topic message in them to refuse, as SNS refuses a publish.
    refuse_publishes: AtomicU32,
}

impl LocalBus {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            inner: Mutex::default(),
            fail_sends: AtomicU32::new(0),
            refuse_sends: AtomicU32::new(0),
            refuse_publishes: AtomicU32::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The earliest message visible at `now`, if any.
    pub fn pop_due(&self, now: DateTime<Utc>) -> Option<Delivery> {
        let mut inner = self.lock();
        let key = *inner.pending.keys().next()?;
        if key.0 > now {
            return None;
        }
        inner.pending.remove(&key).map(|mut d| {
            d.receive_count += 1;
            d
        })
    }

    /// When the next message becomes visible.
    pub fn next_visible_at(&self) -> Option<DateTime<Utc>> {
        self.lock().pending.keys().next().map(|k| k.0)
    }

    pub fn pending(&self) -> usize {
        self.lock().pending.len()
    }

    /// Puts a message back to be received again after `visibility` (a failed attempt).
    pub fn redeliver_later(&self, delivery: Delivery, visibility: Duration) {
        let at = self.clock.now() + visibility;
        self.lock().push(delivery, at);
    }

    pub fn dead_letter(&self, delivery: Delivery, reason: impl Into<String>) {
        let at = self.clock.now();
        self.lock().dead.push(DeadLetter {
            outgoing: delivery.outgoing,
            reason: reason.into(),
            at,
        });
    }

    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.lock().dead.clone()
    }

    /// Messages accepted by `send` so far.
    pub fn sent_count(&self) -> u64 {
        self.lock().sent
    }

    /// Refuses the next `n` sends with a retryable error.
    pub fn fail_next_sends(&self, n: u32) {
        self.fail_sends.store(n, Ordering::SeqCst);
    }

    /// Refuses the next `n` sends as SNS or SQS refuse a message they will never take.
    pub fn refuse_next_sends(&self, n: u32) {
        self.refuse_sends.store(n, Ordering::SeqCst);
    }

    /// Refuses the next `n` sends that publish to a topic, as SNS refuses a message it will
    /// never take; queue-only sends go through.
    pub fn refuse_next_publishes(&self, n: u32) {
        self.refuse_publishes.store(n, Ordering::SeqCst);
    }

    /// Enqueues a raw delivery, for tests that send malformed or duplicate messages.
    pub fn inject(&self, outgoing: Outgoing) {
        let now = self.clock.now() + Duration::seconds(i64::from(outgoing.delay_seconds));
        self.lock().push(
            Delivery {
                outgoing,
                receive_count: 0,
            },
            now,
        );
    }
}

#[async_trait]
impl Bus for LocalBus {
    async fn send(&self, messages: &[Outgoing]) -> Result<(), BusError> {
        let refuse = self
            .fail_sends
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if refuse {
            return Err(BusError::Unavailable("injected send failure".into()));
        }
        if self
            .refuse_sends
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(BusError::Refused("injected refusal".into()));
        }
        let publishes = messages
            .iter()
            .any(|m| matches!(m.destination, Destination::Topic(_)));
        if publishes
            && self
                .refuse_publishes
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            return Err(BusError::Refused("injected publish refusal".into()));
        }
        let now = self.clock.now();
        let mut inner = self.lock();
        for m in messages {
            let at = now + Duration::seconds(i64::from(m.delay_seconds));
            inner.sent += 1;
            inner.push(
                Delivery {
                    outgoing: m.clone(),
                    receive_count: 0,
                },
                at,
            );
        }
        Ok(())
    }
}
