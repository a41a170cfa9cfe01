//! The two queues on SQS, with only what the running system's role may do: receive and delete on
//! its own subscription queue, send on the fitness queue.

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::MessageAttributeValue;

use crate::report::FitnessReport;
use crate::run::{FitnessQueue, Inbox, Received, TransportError};

/// The instance's subscription queue on the events topic (raw message delivery).
#[derive(Debug, Clone)]
pub struct SqsInbox {
    client: Client,
    url: String,
    /// Long-poll wait per receive, in seconds (SQS allows 0 to 20).
    wait_seconds: i32,
}

impl SqsInbox {
    pub fn new(client: Client, url: impl Into<String>, wait_seconds: i32) -> Self {
        Self {
            client,
            url: url.into(),
            wait_seconds: wait_seconds.clamp(0, 20),
        }
    }
}

impl Inbox for SqsInbox {
    async fn receive(&self) -> Result<Vec<Received>, TransportError> {
        let output = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(10)
            .wait_time_seconds(self.wait_seconds)
            .send()
            .await
            .map_err(failure)?;
        Ok(output
            .messages
            .unwrap_or_default()
            .into_iter()
            .map(|m| Received {
                body: m.body.unwrap_or_default(),
                receipt: m.receipt_handle.unwrap_or_default(),
            })
            .collect())
    }

    async fn delete(&self, receipt: &str) -> Result<(), TransportError> {
        self.client
            .delete_message()
            .queue_url(&self.url)
            .receipt_handle(receipt)
            .send()
            .await
            .map(|_| ())
            .map_err(failure)
    }
}

/// The stack's fitness queue.
#[derive(Debug, Clone)]
pub struct SqsFitnessQueue {
    client: Client,
    url: String,
}

impl SqsFitnessQueue {
    pub fn new(client: Client, url: impl Into<String>) -> Self {
        Self {
            client,
            url: url.into(),
        }
    }
}

impl FitnessQueue for SqsFitnessQueue {
    async fn send(&self, report: &FitnessReport) -> Result<(), TransportError> {
        let mut request = self
            .client
            .send_message()
            .queue_url(&self.url)
            .message_body(report.body());
        for (name, value) in report.attributes() {
            let attribute = MessageAttributeValue::builder()
                .data_type("String")
                .string_value(value)
                .build()
                .map_err(failure)?;
            request = request.message_attributes(name, attribute);
        }
        request.send().await.map(|_| ()).map_err(failure)
    }
}

/// The SDK's error with its causes, for the log.
fn failure(e: impl std::error::Error) -> TransportError {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    TransportError(text)
}
