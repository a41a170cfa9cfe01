//! Where permanently failed records go: the dead-letter queue of the queue they came from, with
//! the reason as a message attribute, so an operator can inspect and redrive them.

use std::collections::BTreeMap;

use async_trait::async_trait;
use aws_sdk_sqs::types::MessageAttributeValue;

use crate::bus::BusError;
use crate::bus::aws::classify;
use crate::domain::Queue;

/// Message attribute carrying why a record was dead-lettered.
pub const REASON_ATTRIBUTE: &str = "reason";
/// Message attribute naming the queue the record was received on.
pub const QUEUE_ATTRIBUTE: &str = "queue";
/// Reasons are cut to this many characters (attributes count towards the message size).
pub const MAX_REASON_CHARS: usize = 1024;

/// Moves a raw record body to the dead-letter queue of the queue named `queue` (a pipeline
/// queue's name, or notify's).
#[async_trait]
pub trait DeadLetters: Send + Sync + std::fmt::Debug {
    async fn send(&self, queue: &str, body: &str, reason: &str) -> Result<(), BusError>;
}

/// `reason` as a message attribute value: cut to [`MAX_REASON_CHARS`] characters, and any
/// character SQS does not accept in attributes (control characters, U+FFFE, U+FFFF) replaced,
/// so an odd reason can never keep a record out of its dead-letter queue.
pub fn attribute_reason(reason: &str) -> String {
    reason
        .chars()
        .take(MAX_REASON_CHARS)
        .map(|c| {
            let allowed = matches!(c, '\t' | '\n' | '\r')
                || (c >= ' ' && !matches!(c, '\u{fffe}' | '\u{ffff}'));
            if allowed {
                c
            } else {
                char::REPLACEMENT_CHARACTER
            }
        })
        .collect()
}

/// Dead-letter queues on SQS, one URL per consumed queue's name.
#[derive(Debug, Clone)]
pub struct SqsDeadLetters {
    sqs: aws_sdk_sqs::Client,
    urls: BTreeMap<String, String>,
}

impl SqsDeadLetters {
    /// The dead-letter queues of the pipeline queues a function consumes.
    pub fn new(sqs: aws_sdk_sqs::Client, urls: &BTreeMap<Queue, String>) -> Self {
        let urls = urls
            .iter()
            .map(|(queue, url)| (queue.as_str().to_owned(), url.clone()))
            .collect();
        Self { sqs, urls }
    }

    /// The dead-letter queue of the one queue named `queue`.
    pub fn single(sqs: aws_sdk_sqs::Client, queue: &str, url: impl Into<String>) -> Self {
        Self {
            sqs,
            urls: BTreeMap::from([(queue.to_owned(), url.into())]),
        }
    }
}

#[async_trait]
impl DeadLetters for SqsDeadLetters {
    async fn send(&self, queue: &str, body: &str, reason: &str) -> Result<(), BusError> {
        let url = self.urls.get(queue).ok_or_else(|| {
            BusError::Refused(format!("no dead-letter queue configured for {queue}"))
        })?;
        let attribute = |value: &str| {
            MessageAttributeValue::builder()
                .data_type("String")
                .string_value(value)
                .build()
                .map_err(|e| BusError::Refused(format!("message attribute: {e}")))
        };
        self.sqs
            .send_message()
            .queue_url(url)
            .message_body(body)
            .message_attributes(REASON_ATTRIBUTE, attribute(&attribute_reason(reason))?)
            .message_attributes(QUEUE_ATTRIBUTE, attribute(queue)?)
            .send()
            .await
            .map_err(|e| classify("SendMessage", &e))?;
        Ok(())
    }
}

#[cfg(any(test, feature = "test-support"))]
pub use recording::{DeadLetter, RecordingDeadLetters};

#[cfg(any(test, feature = "test-support"))]
mod recording {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::{Mutex, PoisonError};

    use async_trait::async_trait;

    use super::{DeadLetters, attribute_reason};
    use crate::bus::BusError;

    /// A record moved to a dead-letter queue.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct DeadLetter {
        /// The name of the queue it was received on.
        pub queue: String,
        pub body: String,
        pub reason: String,
    }

    /// Dead-letter queues in memory, for unit tests: records what was moved and can refuse.
    #[derive(Debug, Default)]
    pub struct RecordingDeadLetters {
        sent: Mutex<Vec<DeadLetter>>,
        fail: AtomicU32,
    }

    impl RecordingDeadLetters {
        pub fn new() -> Self {
            Self::default()
        }

        pub fn sent(&self) -> Vec<DeadLetter> {
            self.sent
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
        }

        /// Fails the next `n` moves with a retryable error.
        pub fn fail_next(&self, n: u32) {
            self.fail.store(n, Ordering::SeqCst);
        }
    }

    #[async_trait]
    impl DeadLetters for RecordingDeadLetters {
        async fn send(&self, queue: &str, body: &str, reason: &str) -> Result<(), BusError> {
            let refuse = self
                .fail
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if refuse {
                return Err(BusError::Unavailable("injected dead-letter failure".into()));
            }
            self.sent
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(DeadLetter {
                    queue: queue.to_owned(),
                    body: body.to_owned(),
                    reason: attribute_reason(reason),
                });
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_cut_on_a_character_boundary_and_made_safe_for_attributes() {
        assert_eq!(attribute_reason("short"), "short");
        let long = "é".repeat(MAX_REASON_CHARS + 10);
        assert_eq!(attribute_reason(&long).chars().count(), MAX_REASON_CHARS);
        assert_eq!(
            attribute_reason("bad\u{0}byte\tand\u{ffff}"),
            "bad\u{fffd}byte\tand\u{fffd}"
        );
    }
}
