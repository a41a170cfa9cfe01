//! The worker's side of SQS: long-poll receive, delete, and visibility changes, on the queues
//! it consumes. Errors are classified like the bus's: throttling and 5xx are retryable, the
//! rest (a missing queue, denied access, an expired receipt handle) is refused.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};

use crate::bus::BusError;
use crate::bus::aws::classify;
use crate::domain::Queue;

/// One received message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub message_id: String,
    pub receipt_handle: String,
    pub body: String,
    /// SQS's `ApproximateReceiveCount`: 1 on the first delivery.
    pub receive_count: u32,
}

/// The queues a worker consumes.
#[async_trait]
pub trait Inbox: Send + Sync + std::fmt::Debug {
    /// Checks that `queue` exists and may be read (at startup: fail before receiving).
    async fn check(&self, queue: Queue) -> Result<(), BusError>;
    /// Waits up to `wait` for at most `max` messages, hidden for `visibility` once received.
    async fn receive(
        &self,
        queue: Queue,
        max: usize,
        wait: Duration,
        visibility: Duration,
    ) -> Result<Vec<Received>, BusError>;
    async fn delete(&self, queue: Queue, receipt_handle: &str) -> Result<(), BusError>;
    /// Hides the message for `visibility` from now (`ChangeMessageVisibility`).
    async fn hide(
        &self,
        queue: Queue,
        receipt_handle: &str,
        visibility: Duration,
    ) -> Result<(), BusError>;
}

/// The [`Inbox`] on SQS queues, one URL per consumed queue.
#[derive(Debug, Clone)]
pub struct SqsInbox {
    sqs: aws_sdk_sqs::Client,
    urls: BTreeMap<Queue, String>,
}

impl SqsInbox {
    pub fn new(sqs: aws_sdk_sqs::Client, urls: BTreeMap<Queue, String>) -> Self {
        Self { sqs, urls }
    }

    fn url(&self, queue: Queue) -> Result<&str, BusError> {
        self.urls.get(&queue).map(String::as_str).ok_or_else(|| {
            BusError::Refused(format!("no queue URL configured for {}", queue.as_str()))
        })
    }
}

/// SQS takes whole seconds, at most 12 hours.
fn seconds(duration: Duration) -> i32 {
    i32::try_from(duration.as_secs().min(43_200)).unwrap_or(43_200)
}

#[async_trait]
impl Inbox for SqsInbox {
    async fn check(&self, queue: Queue) -> Result<(), BusError> {
        self.sqs
            .get_queue_attributes()
            .queue_url(self.url(queue)?)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(|e| classify("GetQueueAttributes", &e))?;
        Ok(())
    }

    async fn receive(
        &self,
        queue: Queue,
        max: usize,
        wait: Duration,
        visibility: Duration,
    ) -> Result<Vec<Received>, BusError> {
        let output = self
            .sqs
            .receive_message()
            .queue_url(self.url(queue)?)
            .max_number_of_messages(i32::try_from(max.clamp(1, 10)).unwrap_or(1))
            .wait_time_seconds(seconds(wait).min(20))
            .visibility_timeout(seconds(visibility).max(1))
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .map_err(|e| classify("ReceiveMessage", &e))?;
        Ok(output
            .messages()
            .iter()
            .map(|m| Received {
                message_id: m.message_id().unwrap_or_default().to_owned(),
                receipt_handle: m.receipt_handle().unwrap_or_default().to_owned(),
                body: m.body().unwrap_or_default().to_owned(),
                receive_count: m
                    .attributes()
                    .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(1),
            })
            .collect())
    }

    async fn delete(&self, queue: Queue, receipt_handle: &str) -> Result<(), BusError> {
        self.sqs
            .delete_message()
            .queue_url(self.url(queue)?)
            .receipt_handle(receipt_handle)
            .send()
            .await
            .map_err(|e| classify("DeleteMessage", &e))?;
        Ok(())
    }

    async fn hide(
        &self,
        queue: Queue,
        receipt_handle: &str,
        visibility: Duration,
    ) -> Result<(), BusError> {
        self.sqs
            .change_message_visibility()
            .queue_url(self.url(queue)?)
            .receipt_handle(receipt_handle)
            .visibility_timeout(seconds(visibility))
            .send()
            .await
            .map_err(|e| classify("ChangeMessageVisibility", &e))?;
        Ok(())
    }
}
