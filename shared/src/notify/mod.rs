//! The notify function: posts the alerts published on the `alerts` topic to Slack and/or
//! Microsoft Teams incoming webhooks.
//!
//! The topic delivers to the `notify` queue. Each record is decoded (an SNS notification whose
//! `Message` is the `AlertRaised` envelope, or the envelope itself under raw delivery), filtered
//! by level and kind, and posted once per configured webhook. Each (alert, webhook) pair is
//! claimed and completed through the store's idempotency records, so a redelivered record, or a
//! retry after one webhook failed, never posts twice to a webhook that already has the alert.
//! Errors split as everywhere else: 429, 5xx, timeouts and an unreadable secret leave the
//! record for redelivery; a malformed record or a 4xx (a deleted webhook) moves it to the
//! dead-letter queue with the reason, which never contains a webhook URL.

#[cfg(feature = "webhooks")]
mod hyper_poster;
pub mod secrets;
#[cfg(feature = "webhooks")]
mod secrets_manager;
pub mod webhook;
#[cfg(feature = "webhooks")]
mod wiring;

use std::sync::Arc;

use aws_lambda_events::sqs::{SqsBatchResponse, SqsMessage};
use chrono::{DateTime, Duration, Utc};
use serde_json::Value;
use tracing::{info, warn};

#[cfg(feature = "webhooks")]
pub use self::hyper_poster::HyperPoster;
pub use self::secrets::{CachedWebhooks, SecretError, WebhookSource, Webhooks};
#[cfg(feature = "webhooks")]
pub use self::secrets_manager::SecretsManagerWebhooks;
pub use self::webhook::{PostError, Target, WebhookPoster, WebhookUrl};
#[cfg(feature = "webhooks")]
pub use self::wiring::notifier;
use crate::clock::Clock;
use crate::consumer::{BatchCounts, DeadLetters, Handled, consume, dead_letter, deadline_of};
pub use crate::domain::AlertFilter;
use crate::domain::{Alert, Body, Envelope, sha256_hex};
use crate::lambda::batch_metrics;
use crate::lambda::metrics::{self, Metric};
use crate::store::{Claim, Completion, EvolutionStore, StoreError, Transaction};

/// The queue's name, in logs and on dead-lettered records.
pub const QUEUE: &str = "notify";

/// The alert kinds the suite raises (the `kind` strings of [`Alert`]); for documentation: the
/// default filter posts every kind, including ones added later.
pub const KINDS: &[&str] = &[
    "budget_mode",
    "system_budget",
    "conflict",
    "security",
    "approval",
    "rollback",
];

/// Timing of the function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotifySettings {
    /// The longest one webhook post may take (less when the invocation's deadline is nearer).
    pub post_timeout: std::time::Duration,
    /// How long a completed post is remembered (longer than any redelivery).
    pub idempotency_ttl_seconds: i64,
    /// How long a claim holds when the invocation's deadline is unknown.
    pub in_progress_seconds: i64,
}

impl Default for NotifySettings {
    fn default() -> Self {
        Self {
            post_timeout: std::time::Duration::from_secs(5),
            idempotency_ttl_seconds: 7 * 24 * 3600,
            in_progress_seconds: 60,
        }
    }
}

/// Why a record could not be posted, split by what SQS should do with it.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("malformed alert message ({bytes} bytes, sha256 {digest}): {reason}")]
    Malformed {
        bytes: usize,
        digest: String,
        reason: String,
    },
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error(transparent)]
    Post(#[from] PostError),
    #[error("idempotency store: {0}")]
    Store(#[from] StoreError),
    #[error("alert {0} was already used for a different payload")]
    PayloadMismatch(String),
    #[error("{key} is being posted elsewhere until {until}")]
    InProgress { key: String, until: DateTime<Utc> },
    #[error("too little time left before the invocation's deadline to post")]
    OutOfTime,
}

impl NotifyError {
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Malformed { .. } | Self::PayloadMismatch(_) => false,
            Self::Secret(_) | Self::InProgress { .. } | Self::OutOfTime => true,
            Self::Post(e) => e.is_retryable(),
            Self::Store(e) => e.is_retryable(),
        }
    }
}

/// Everything the notify handler needs, built once at cold start.
#[derive(Debug, Clone)]
pub struct Notifier {
    pub store: Arc<dyn EvolutionStore>,
    pub webhooks: Arc<dyn WebhookSource>,
    pub poster: Arc<dyn WebhookPoster>,
    pub dead_letters: Arc<dyn DeadLetters>,
    pub clock: Arc<dyn Clock>,
    pub filter: AlertFilter,
    pub settings: NotifySettings,
    /// The invocation's deadline: claims hold until then and posts must finish before it.
    pub deadline: Option<DateTime<Utc>>,
}

/// What a record that was done did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivered {
    /// Posted to these webhooks (the others already had it).
    Posted(Vec<Target>),
    /// Not posted: below the level, another kind, or no webhook configured.
    Filtered,
}

/// What became of one record: done ([`Delivered`]), a duplicate (every configured webhook
/// already had it), left for redelivery or dead-lettered.
pub type Outcome = Handled<Delivered>;

/// The outcome of a batch: the message ids SQS must redeliver, and the counts for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NotifyBatch {
    pub batch_item_failures: Vec<String>,
    pub counts: BatchCounts,
    /// Webhook posts made by the records that completed.
    pub posted: u32,
    /// Alerts acknowledged without a post (filtered out, or no webhook configured).
    pub filtered: u32,
}

impl From<NotifyBatch> for SqsBatchResponse {
    fn from(batch: NotifyBatch) -> Self {
        let mut response = SqsBatchResponse::default();
        response.set_failures(batch.batch_item_failures);
        response
    }
}

/// Decodes a record body into its alert: an SNS notification (`Type` `Notification`) whose
/// `Message` is the envelope, or the envelope itself (raw message delivery).
pub fn decode(body: &str) -> Result<Alert, NotifyError> {
    let malformed = |reason: String| NotifyError::Malformed {
        bytes: body.len(),
        digest: sha256_hex(body.as_bytes())[..16].to_owned(),
        reason,
    };
    let value: Value = serde_json::from_str(body).map_err(|e| malformed(e.to_string()))?;
    let envelope = if value.get("Type").and_then(Value::as_str) == Some("Notification") {
        let message = value
            .get("Message")
            .and_then(Value::as_str)
            .ok_or_else(|| malformed("SNS notification without a Message".into()))?;
        serde_json::from_str::<Envelope>(message)
    } else {
        serde_json::from_value::<Envelope>(value)
    }
    .map_err(|e| malformed(format!("not an envelope: {e}")))?;
    match envelope.body {
        Body::AlertRaised { alert } => Ok(alert),
        other => Err(malformed(format!("{} is not an alert", other.type_name()))),
    }
}

/// The idempotency key of posting `alert_id` to `target`.
pub fn delivery_key(alert_id: &str, target: Target) -> String {
    format!("notify:{alert_id}:{}", target.as_str())
}

impl Notifier {
    /// This notifier for one invocation ending at `deadline_ms` (milliseconds since the epoch,
    /// from the Lambda context; 0 means unknown). A deadline already past when the invocation
    /// starts is not a real one (Lambda's is always ahead; the local Runtime API emulator sends
    /// a duration instead) and counts as unknown, so it cannot turn every post into a retry.
    #[must_use]
    pub fn until(&self, deadline_ms: u64) -> Self {
        let mut notifier = self.clone();
        notifier.deadline = deadline_of(deadline_ms, self.clock.now());
        notifier
    }

    /// Handles an SQS batch, one record at a time in its own span, and emits its counts as
    /// one metrics line. As in the pipeline's batches (`lambda::handle_sqs_batch`), no record
    /// is started too near the deadline and a panic fails its own record only; both are left
    /// for redelivery.
    pub async fn handle_batch(&self, records: &[SqsMessage]) -> NotifyBatch {
        let consumed = consume(
            self.deadline,
            || self.clock.now(),
            records,
            |record| {
                let body = record.body.as_deref().unwrap_or_default();
                Some((QUEUE, self.handle_record(body)))
            },
        )
        .await;
        let mut batch = NotifyBatch {
            batch_item_failures: consumed.batch_item_failures,
            counts: consumed.counts,
            posted: 0,
            filtered: 0,
        };
        for delivered in consumed.done {
            match delivered {
                Delivered::Posted(targets) => {
                    batch.posted += u32::try_from(targets.len()).unwrap_or(u32::MAX);
                }
                Delivered::Filtered => batch.filtered += 1,
            }
        }
        let mut emitted = batch_metrics(&batch.counts).to_vec();
        emitted.push(Metric::count(metrics::ALERTS_POSTED, batch.posted));
        emitted.push(Metric::count(metrics::ALERTS_FILTERED, batch.filtered));
        metrics::emit("notify", self.clock.now(), &emitted);
        batch
    }

    /// One record: decoded, filtered, posted; a failure retried or dead-lettered.
    pub async fn handle_record(&self, body: &str) -> Outcome {
        match self.notify(body).await {
            Ok(outcome) => outcome,
            Err(e) if e.is_retryable() => {
                warn!(reason = %e, "left for redelivery");
                Handled::Retry
            }
            Err(e) => {
                let reason = crate::telemetry::error_chain(&e);
                dead_letter(self.dead_letters.as_ref(), QUEUE, body, &reason).await
            }
        }
    }

    async fn notify(&self, body: &str) -> Result<Outcome, NotifyError> {
        let alert = decode(body)?;
        if !self.filter.admits(&alert) {
            info!(alert_id = %alert.id, kind = %alert.kind, level = ?alert.level, "filtered out");
            return Ok(Handled::Done(Delivered::Filtered));
        }
        let webhooks = self.webhooks.webhooks().await?;
        let targets = webhooks.targets();
        if targets.is_empty() {
            warn!(alert_id = %alert.id, "no webhook configured in the secret; alert not posted");
            return Ok(Handled::Done(Delivered::Filtered));
        }
        let hash = sha256_hex(&serde_json::to_vec(&alert).unwrap_or_default());
        // Every target is attempted even when one fails, so one broken webhook does not hold
        // the other's alerts back; the record's fate is then the worst failure: retryable
        // before permanent (the redelivery may still land the retryable one).
        let mut posted = Vec::new();
        let mut failures = Vec::new();
        for (target, url) in targets {
            match self.deliver(&alert, &hash, target, url).await {
                Ok(true) => posted.push(target),
                Ok(false) => {}
                Err(e) => {
                    warn!(alert_id = %alert.id, %target, error = %e, retryable = e.is_retryable(), "post failed");
                    failures.push(e);
                }
            }
        }
        if let Some(i) = failures
            .iter()
            .position(NotifyError::is_retryable)
            .or(if failures.is_empty() { None } else { Some(0) })
        {
            return Err(failures.swap_remove(i));
        }
        info!(alert_id = %alert.id, kind = %alert.kind, posted = ?posted, "alert delivered");
        Ok(if posted.is_empty() {
            Handled::Duplicate
        } else {
            Handled::Done(Delivered::Posted(posted))
        })
    }

    /// Posts `alert` to one webhook exactly once in effect: claim, post, complete. `false`
    /// when it was already posted. A post that fails releases the claim so the redelivery can
    /// try again at once; a post that landed but could not be recorded keeps its claim until
    /// the deadline (a later redelivery may then post it a second time: at least once, never
    /// lost).
    async fn deliver(
        &self,
        alert: &Alert,
        hash: &str,
        target: Target,
        url: &WebhookUrl,
    ) -> Result<bool, NotifyError> {
        let key = delivery_key(&alert.id, target);
        let now = self.clock.now();
        let timeout = self.post_timeout(now)?;
        match self
            .store
            .claim(&key, hash, now, self.claim_until(now))
            .await?
        {
            Claim::Claimed => {}
            Claim::Completed { .. } => return Ok(false),
            Claim::InProgress { until } => return Err(NotifyError::InProgress { key, until }),
            Claim::PayloadMismatch => return Err(NotifyError::PayloadMismatch(alert.id.clone())),
        }
        let payload = webhook::payload(target, alert);
        if let Err(e) = self.poster.post(target, url, &payload, timeout).await {
            if let Err(release) = self.store.release(&key).await {
                warn!(error = %release, "could not release the delivery claim");
            }
            return Err(e.into());
        }
        let now = self.clock.now();
        self.store
            .commit(Transaction {
                writes: Vec::new(),
                completion: Some(Completion {
                    key,
                    payload_hash: hash.to_owned(),
                    outgoing: Vec::new(),
                    completed_at: now,
                    expires_at: now + Duration::seconds(self.settings.idempotency_ttl_seconds),
                }),
            })
            .await?;
        Ok(true)
    }

    fn claim_until(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        self.deadline
            .filter(|d| *d > now)
            .unwrap_or_else(|| now + Duration::seconds(self.settings.in_progress_seconds))
    }

    /// The configured timeout, cut to leave a second before the deadline for the bookkeeping.
    fn post_timeout(&self, now: DateTime<Utc>) -> Result<std::time::Duration, NotifyError> {
        let Some(deadline) = self.deadline else {
            return Ok(self.settings.post_timeout);
        };
        let left = (deadline - now - Duration::seconds(1))
            .to_std()
            .map_err(|_| NotifyError::OutOfTime)?;
        if left < std::time::Duration::from_millis(100) {
            return Err(NotifyError::OutOfTime);
        }
        Ok(left.min(self.settings.post_timeout))
    }
}

#[cfg(any(test, feature = "test-support"))]
pub mod testing;

#[cfg(test)]
mod tests;
