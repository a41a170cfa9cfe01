//! The bus on SQS and SNS: queue messages go out with `SendMessageBatch` (ten at a time, each
//! with its own delay), topic messages with `Publish`. Every message carries the `type` and
//! `system_id` message attributes, so SNS subscription filter policies and operators can route
//! and inspect messages without parsing bodies. Every message also carries its trace
//! (docs/architecture.md, "Tracing"): a `traceparent` message attribute, and on SQS the
//! `AWSTraceHeader` system attribute X-Ray reads.

use std::collections::BTreeMap;

use async_trait::async_trait;
/// The SDK crates of this adapter, for callers that build its clients (binaries, tests).
pub use aws_sdk_sns;
pub use aws_sdk_sqs;
use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::{BatchResultErrorEntry, SendMessageBatchRequestEntry};

use super::{Bus, BusError};
use crate::domain::{Destination, Outgoing, Queue, Topic};

/// SQS caps a batch at ten entries.
const BATCH_SIZE: usize = 10;
/// SQS caps a per-message delay at fifteen minutes.
const MAX_DELAY_SECONDS: u32 = 900;

/// Where each destination lives: queue URLs and topic ARNs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Destinations {
    pub queues: BTreeMap<Queue, String>,
    pub topics: BTreeMap<Topic, String>,
}

impl Destinations {
    fn queue_url(&self, queue: Queue) -> Result<&str, BusError> {
        self.queues.get(&queue).map(String::as_str).ok_or_else(|| {
            BusError::Refused(format!("no queue URL configured for {}", queue.as_str()))
        })
    }

    fn topic_arn(&self, topic: Topic) -> Result<&str, BusError> {
        self.topics.get(&topic).map(String::as_str).ok_or_else(|| {
            BusError::Refused(format!("no topic ARN configured for {}", topic.as_str()))
        })
    }
}

/// The [`Bus`] on SQS queues and SNS topics. Clients are built once at cold start.
#[derive(Debug, Clone)]
pub struct AwsBus {
    sqs: aws_sdk_sqs::Client,
    sns: aws_sdk_sns::Client,
    destinations: Destinations,
}

impl AwsBus {
    pub fn new(
        sqs: aws_sdk_sqs::Client,
        sns: aws_sdk_sns::Client,
        destinations: Destinations,
    ) -> Self {
        Self {
            sqs,
            sns,
            destinations,
        }
    }

    async fn send_batch(&self, url: &str, batch: &[&Outgoing]) -> Result<(), BusError> {
        let mut entries = Vec::with_capacity(batch.len());
        for (i, m) in batch.iter().enumerate() {
            entries.push(batch_entry(i, m)?);
        }
        let output = self
            .sqs
            .send_message_batch()
            .queue_url(url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| classify("SendMessageBatch", &e))?;
        match failed_entries(output.failed()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    async fn publish(&self, arn: &str, m: &Outgoing) -> Result<(), BusError> {
        let body = body_of(m)?;
        let attribute = |value: &str| {
            aws_sdk_sns::types::MessageAttributeValue::builder()
                .data_type("String")
                .string_value(value)
                .build()
                .map_err(|e| BusError::Refused(format!("message attribute: {e}")))
        };
        self.sns
            .publish()
            .topic_arn(arn)
            .message(body)
            .message_attributes("type", attribute(m.envelope.body.type_name())?)
            .message_attributes("system_id", attribute(m.envelope.system_id.as_str())?)
            .message_attributes("traceparent", attribute(&m.envelope.trace().traceparent())?)
            .send()
            .await
            .map_err(|e| classify("Publish", &e))?;
        Ok(())
    }
}

#[async_trait]
impl Bus for AwsBus {
    async fn send(&self, messages: &[Outgoing]) -> Result<(), BusError> {
        // Resolve every destination first: an unknown one refuses the whole send before
        // anything leaves, instead of half of it.
        let mut queued: BTreeMap<&str, Vec<&Outgoing>> = BTreeMap::new();
        let mut published = Vec::new();
        for m in messages {
            match m.destination {
                Destination::Queue(q) => {
                    queued
                        .entry(self.destinations.queue_url(q)?)
                        .or_default()
                        .push(m);
                }
                Destination::Topic(t) => published.push((self.destinations.topic_arn(t)?, m)),
            }
        }
        for (url, list) in &queued {
            for batch in list.chunks(BATCH_SIZE) {
                self.send_batch(url, batch).await?;
            }
        }
        for (arn, m) in published {
            self.publish(arn, m).await?;
        }
        Ok(())
    }
}

fn body_of(m: &Outgoing) -> Result<String, BusError> {
    serde_json::to_string(&m.envelope).map_err(|e| {
        BusError::Refused(format!(
            "envelope {} does not serialize: {e}",
            m.envelope.id
        ))
    })
}

fn batch_entry(index: usize, m: &Outgoing) -> Result<SendMessageBatchRequestEntry, BusError> {
    let attribute = |value: &str| {
        aws_sdk_sqs::types::MessageAttributeValue::builder()
            .data_type("String")
            .string_value(value)
            .build()
            .map_err(|e| BusError::Refused(format!("message attribute: {e}")))
    };
    let delay = m.delay_seconds.min(MAX_DELAY_SECONDS);
    let trace = m.envelope.trace();
    let xray = aws_sdk_sqs::types::MessageSystemAttributeValue::builder()
        .data_type("String")
        .string_value(trace.xray_header())
        .build()
        .map_err(|e| BusError::Refused(format!("system attribute: {e}")))?;
    SendMessageBatchRequestEntry::builder()
        .id(index.to_string())
        .message_body(body_of(m)?)
        .delay_seconds(i32::try_from(delay).unwrap_or(0))
        .message_attributes("type", attribute(m.envelope.body.type_name())?)
        .message_attributes("system_id", attribute(m.envelope.system_id.as_str())?)
        .message_attributes("traceparent", attribute(&trace.traceparent())?)
        .message_system_attributes(
            aws_sdk_sqs::types::MessageSystemAttributeNameForSends::AwsTraceHeader,
            xray,
        )
        .build()
        .map_err(|e| BusError::Refused(format!("batch entry: {e}")))
}

/// Failed entries of a batch as one error: refused if any failure is the sender's fault
/// (a redelivery would fail the same way), unavailable otherwise.
fn failed_entries(failed: &[BatchResultErrorEntry]) -> Option<BusError> {
    if failed.is_empty() {
        return None;
    }
    let detail = failed
        .iter()
        .map(|f| {
            format!(
                "entry {}: {} {}",
                f.id(),
                f.code(),
                f.message().unwrap_or("")
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    let text = format!(
        "SendMessageBatch: {} of the entries failed: {detail}",
        failed.len()
    );
    if let Some(denied) = failed
        .iter()
        .find(|f| crate::security::is_authorization_error(f.code()))
    {
        let event = crate::security::SecurityEvent::new(
            service_of("SendMessageBatch", denied.code()),
            "SendMessageBatch",
            denied.code(),
            denied.message().unwrap_or_default(),
        );
        event.emit();
        return Some(BusError::Denied(Box::new(event)));
    }
    Some(if failed.iter().any(BatchResultErrorEntry::sender_fault) {
        BusError::Refused(text)
    } else {
        BusError::Unavailable(text)
    })
}

/// Error codes SQS and SNS use for conditions a later attempt can get past.
const TRANSIENT_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "AWS.SimpleQueueService.RequestThrottled",
    "TooManyRequestsException",
    "ServiceUnavailable",
    "InternalError",
    "InternalFailure",
    "KMSThrottling",
    "KMSThrottlingException",
    "KmsThrottled",
    "RequestTimeout",
];

/// The service behind an operation of this adapter (KMS when the key refused).
fn service_of(operation: &str, code: &str) -> &'static str {
    if code.to_ascii_uppercase().starts_with("KMS") || code.contains(".Kms") {
        "kms"
    } else if operation == "Publish" {
        "sns"
    } else {
        "sqs"
    }
}

/// Throttling, timeouts, transport failures and 5xx are retryable; authorization failures are
/// denied (a security event, never retried); everything else is refused.
pub(crate) fn classify<E>(
    operation: &str,
    error: &SdkError<E, aws_sdk_sqs::config::http::HttpResponse>,
) -> BusError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match error {
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            let code = service.err().code().unwrap_or("Unknown");
            let message = service.err().message().unwrap_or("");
            let text = format!("{operation}: {code} (HTTP {status}): {message}");
            if crate::security::is_authorization_error(code) {
                let event = crate::security::SecurityEvent::new(
                    service_of(operation, code),
                    operation,
                    code,
                    message,
                );
                event.emit();
                BusError::Denied(Box::new(event))
            } else if status >= 500 || status == 429 || TRANSIENT_CODES.contains(&code) {
                BusError::Unavailable(text)
            } else {
                BusError::Refused(text)
            }
        }
        SdkError::ConstructionFailure(_) => {
            BusError::Refused(format!("{operation}: {}", DisplayErrorContext(error)))
        }
        _ => BusError::Unavailable(format!("{operation}: {}", DisplayErrorContext(error))),
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};

    use super::*;
    use crate::domain::{Body, Envelope, SystemId};

    fn outgoing(delay: u32) -> Outgoing {
        let at = Utc
            .with_ymd_and_hms(2026, 3, 1, 12, 0, 0)
            .single()
            .expect("valid time");
        Outgoing {
            destination: Destination::Queue(Queue::Analyze),
            envelope: Envelope {
                id: "msg-1".into(),
                causation_id: String::new(),
                system_id: SystemId::parse("svc").expect("valid id"),
                base_generation: 3,
                sent_at: at,
                traceparent: None,
                body: Body::EvaluationDue { generation: 3 },
            },
            delay_seconds: delay,
        }
    }

    #[test]
    fn batch_entries_carry_the_envelope_the_delay_and_the_routing_attributes() {
        let entry = batch_entry(4, &outgoing(30)).expect("entry");
        assert_eq!(entry.id(), "4");
        assert_eq!(entry.delay_seconds(), Some(30));
        let env: Envelope = serde_json::from_str(entry.message_body()).expect("envelope json");
        assert_eq!(env, outgoing(30).envelope);
        let attrs = entry.message_attributes().expect("attributes");
        assert_eq!(attrs["type"].string_value(), Some("EvaluationDue"));
        assert_eq!(attrs["system_id"].string_value(), Some("svc"));
        assert_eq!(attrs["type"].data_type(), "String");
    }

    #[test]
    fn batch_entries_carry_the_trace_as_xray_header_and_traceparent() {
        let entry = batch_entry(0, &outgoing(0)).expect("entry");
        let trace = outgoing(0).envelope.trace();
        let system = entry
            .message_system_attributes()
            .expect("system attributes");
        let header = system
            [&aws_sdk_sqs::types::MessageSystemAttributeNameForSends::AwsTraceHeader]
            .string_value();
        assert_eq!(header, Some(trace.xray_header().as_str()));
        let attrs = entry.message_attributes().expect("attributes");
        assert_eq!(
            attrs["traceparent"].string_value(),
            Some(trace.traceparent().as_str())
        );
    }

    #[test]
    fn delays_beyond_fifteen_minutes_are_capped() {
        let entry = batch_entry(0, &outgoing(5_000)).expect("entry");
        assert_eq!(entry.delay_seconds(), Some(900));
    }

    #[test]
    fn failed_entries_are_retryable_unless_the_sender_is_at_fault() {
        let entry = |sender_fault| {
            BatchResultErrorEntry::builder()
                .id("0")
                .code("InternalError")
                .sender_fault(sender_fault)
                .build()
                .expect("entry")
        };
        assert_eq!(failed_entries(&[]), None);
        assert!(matches!(
            failed_entries(&[entry(false)]),
            Some(BusError::Unavailable(_))
        ));
        assert!(matches!(
            failed_entries(&[entry(false), entry(true)]),
            Some(BusError::Refused(_))
        ));
    }

    #[test]
    fn a_key_policy_refusal_is_a_security_event_not_a_retry() {
        let denied = BatchResultErrorEntry::builder()
            .id("0")
            .code("KMS.AccessDeniedException")
            .sender_fault(true)
            .build()
            .expect("entry");
        let err = failed_entries(&[denied]).expect("a failure");
        assert!(!err.is_retryable());
        let event = err.security_event().expect("a security event");
        assert_eq!(
            (event.service.as_str(), event.operation.as_str()),
            ("kms", "SendMessageBatch")
        );
    }

    #[test]
    fn authorization_errors_of_sqs_and_sns_are_denied() {
        use aws_sdk_sqs::config::http::HttpResponse;
        use aws_sdk_sqs::error::ErrorMetadata;
        use aws_sdk_sqs::operation::send_message_batch::SendMessageBatchError;
        use aws_smithy_types::body::SdkBody;
        for (operation, code, service) in [
            ("SendMessageBatch", "AccessDenied", "sqs"),
            ("Publish", "AuthorizationError", "sns"),
        ] {
            let err = SendMessageBatchError::generic(
                ErrorMetadata::builder()
                    .code(code)
                    .message("not allowed")
                    .build(),
            );
            let status = 403u16.try_into().expect("status");
            let sdk = SdkError::service_error(err, HttpResponse::new(status, SdkBody::empty()));
            let mapped = classify(operation, &sdk);
            assert!(!mapped.is_retryable());
            assert_eq!(
                mapped.security_event().map(|e| e.service.as_str()),
                Some(service)
            );
        }
    }

    #[tokio::test]
    async fn an_unknown_destination_is_refused_before_anything_is_sent() {
        let conf = aws_sdk_sqs::Config::builder()
            .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
            .region(aws_sdk_sqs::config::Region::new("us-east-1"))
            .build();
        let sns_conf = aws_sdk_sns::Config::builder()
            .behavior_version(aws_sdk_sns::config::BehaviorVersion::latest())
            .region(aws_sdk_sns::config::Region::new("us-east-1"))
            .build();
        let bus = AwsBus::new(
            aws_sdk_sqs::Client::from_conf(conf),
            aws_sdk_sns::Client::from_conf(sns_conf),
            Destinations::default(),
        );
        let err = bus.send(&[outgoing(0)]).await.expect_err("refused");
        assert!(
            matches!(err, BusError::Refused(ref m) if m.contains("analyze")),
            "{err}"
        );
    }
}
