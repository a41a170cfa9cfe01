//! The notify function end to end on real wire protocols: an alert published by the SQS/SNS bus
//! on moto's alerts topic, delivered to the notify queue as an SNS notification, received with
//! the real SQS client and handed to the function's handler; the webhook URLs read from moto's
//! Secrets Manager with the real client; the posts made over HTTP to a local receiver (axum on
//! 127.0.0.1) that records them and answers what the test tells it to; the idempotency records
//! in moto's DynamoDB; dead letters in moto's SQS.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration as StdDuration;

use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_lambda_events::sqs::{SqsEvent, SqsMessage};
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use chrono::{DateTime, Duration, TimeZone, Utc};
use lambda_runtime::{Context, LambdaEvent};
use serde_json::Value;
use shared::bus::Bus;
use shared::bus::aws::{AwsBus, Destinations, aws_sdk_sns, aws_sdk_sqs};
use shared::clock::{Clock as _, SimClock};
use shared::consumer::SqsDeadLetters;
use shared::consumer::dead_letters::REASON_ATTRIBUTE;
use shared::domain::{Alert, AlertLevel, Body, Envelope, Outgoing, SystemId, Topic};
use shared::notify::{
    AlertFilter, CachedWebhooks, HyperPoster, Notifier, NotifySettings, QUEUE, SecretError,
    SecretsManagerWebhooks, WebhookSource, Webhooks,
};
use shared::store::dynamo::DynamoStore;
use tests::moto::{MotoServer, unique_name};

const TTL_MINUTES: i64 = 5;

async fn sdk() -> SdkConfig {
    tests::moto::sdk_config(MotoServer::shared().url()).await
}

fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0)
        .single()
        .expect("time")
}

/// A request the receiver got: its path and JSON body.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    body: Value,
}

/// The local webhook receiver: records every request and answers the next scripted status for
/// its path prefix (`/slack` or `/teams`), else 200; can also answer late.
#[derive(Debug, Default)]
struct Receiver {
    received: Mutex<Vec<Received>>,
    script: Mutex<VecDeque<(String, u16)>>,
    delay_ms: AtomicU32,
}

impl Receiver {
    fn answer_next(&self, prefix: &str, status: u16) {
        self.script
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back((prefix.to_owned(), status));
    }

    fn received(&self, prefix: &str) -> Vec<Received> {
        self.received
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|r| r.path.starts_with(prefix))
            .cloned()
            .collect()
    }
}

async fn receive(State(receiver): State<Arc<Receiver>>, uri: Uri, body: String) -> StatusCode {
    let delay = receiver.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(StdDuration::from_millis(u64::from(delay))).await;
    }
    let path = uri.path().to_owned();
    receiver
        .received
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(Received {
            path: path.clone(),
            body: serde_json::from_str(&body).unwrap_or(Value::Null),
        });
    let mut script = receiver
        .script
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let status = script
        .iter()
        .position(|(prefix, _)| path.starts_with(prefix.as_str()))
        .and_then(|i| script.remove(i))
        .map_or(200, |(_, status)| status);
    StatusCode::from_u16(status).unwrap_or(StatusCode::OK)
}

/// Counts the reads of the real Secrets Manager source underneath the cache.
#[derive(Debug)]
struct CountingSource {
    inner: SecretsManagerWebhooks,
    reads: AtomicU32,
}

#[async_trait]
impl WebhookSource for CountingSource {
    async fn webhooks(&self) -> Result<Webhooks, SecretError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.webhooks().await
    }
}

struct World {
    receiver: Arc<Receiver>,
    base: String,
    sqs: aws_sdk_sqs::Client,
    secrets: aws_sdk_secretsmanager::Client,
    secret_arn: String,
    bus: AwsBus,
    queue_url: String,
    dlq_url: String,
    source: Arc<CountingSource>,
    clock: Arc<SimClock>,
    notifier: Notifier,
    _server: tokio::task::JoinHandle<()>,
}

impl World {
    async fn new() -> Self {
        Self::with_timeout(StdDuration::from_secs(5)).await
    }

    async fn with_timeout(post_timeout: StdDuration) -> Self {
        let receiver = Arc::new(Receiver::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the receiver");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        let app = axum::Router::new()
            .fallback(receive)
            .with_state(receiver.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });

        let config = sdk().await;
        let sqs = aws_sdk_sqs::Client::new(&config);
        let sns = aws_sdk_sns::Client::new(&config);
        let secrets = aws_sdk_secretsmanager::Client::new(&config);
        let dynamo = aws_sdk_dynamodb::Client::new(&config);
        let s3 = tests::moto::s3_client(&config);
        let store = DynamoStore::new(dynamo, s3, unique_name("notify"), unique_name("notify"));
        store.create_resources().await.expect("table on moto");

        // The alerts topic delivers to the notify queue as the template wires it: SNS
        // notifications (no raw delivery), alerts only.
        let topic_arn = sns
            .create_topic()
            .name(unique_name("alerts"))
            .send()
            .await
            .expect("topic")
            .topic_arn
            .expect("topic ARN");
        let queue_url = create_queue(&sqs, "notify").await;
        let dlq_url = create_queue(&sqs, "notify-dlq").await;
        let queue_arn = sqs
            .get_queue_attributes()
            .queue_url(&queue_url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
            .send()
            .await
            .expect("queue attributes")
            .attributes()
            .and_then(|a| {
                a.get(&aws_sdk_sqs::types::QueueAttributeName::QueueArn)
                    .cloned()
            })
            .expect("queue ARN");
        sns.subscribe()
            .topic_arn(&topic_arn)
            .protocol("sqs")
            .endpoint(queue_arn)
            .attributes("FilterPolicy", r#"{"type":["AlertRaised"]}"#)
            .send()
            .await
            .expect("subscribe");
        let bus = AwsBus::new(
            sqs.clone(),
            sns,
            Destinations {
                topics: [(Topic::Alerts, topic_arn)].into(),
                ..Destinations::default()
            },
        );

        let secret_arn = secrets
            .create_secret()
            .name(unique_name("webhooks"))
            .secret_string(secret_json(&base, "slack-token-1", "teams-token-1"))
            .send()
            .await
            .expect("secret")
            .arn
            .expect("secret ARN");
        let source = Arc::new(CountingSource {
            inner: SecretsManagerWebhooks::new(secrets.clone(), secret_arn.clone()),
            reads: AtomicU32::new(0),
        });
        let clock = Arc::new(SimClock::new(start()));
        let notifier = Notifier {
            store: Arc::new(store),
            webhooks: Arc::new(CachedWebhooks::new(
                source.clone(),
                clock.clone(),
                Duration::minutes(TTL_MINUTES),
            )),
            poster: Arc::new(HyperPoster::new().expect("root certificates")),
            dead_letters: Arc::new(SqsDeadLetters::single(sqs.clone(), QUEUE, dlq_url.clone())),
            clock: clock.clone(),
            filter: AlertFilter::default(),
            settings: NotifySettings {
                post_timeout,
                ..NotifySettings::default()
            },
            deadline: None,
        };
        Self {
            receiver,
            base,
            sqs,
            secrets,
            secret_arn,
            bus,
            queue_url,
            dlq_url,
            source,
            clock,
            notifier,
            _server: server,
        }
    }

    /// Publishes an alert on the topic the way the pipeline does.
    async fn publish(&self, id: &str, level: AlertLevel, kind: &str) {
        let alert = Alert {
            id: id.to_owned(),
            level,
            kind: kind.to_owned(),
            message: format!("{kind} alert {id}"),
            system_id: Some(SystemId::parse("checkout-api").expect("id")),
            at: self.clock.now(),
        };
        let envelope = Envelope {
            id: format!("msg-{id}"),
            causation_id: "cause".into(),
            system_id: SystemId::parse("checkout-api").expect("id"),
            base_generation: 0,
            sent_at: alert.at,
            traceparent: None,
            body: Body::AlertRaised { alert },
        };
        self.bus
            .send(&[Outgoing::new(envelope)])
            .await
            .expect("publish");
    }

    /// The records waiting on the notify queue, as Lambda's SQS event hands them over.
    async fn records(&self) -> Vec<SqsMessage> {
        receive_all(&self.sqs, &self.queue_url)
            .await
            .into_iter()
            .map(|m| {
                let mut record = SqsMessage::default();
                record.message_id = m.message_id().map(str::to_owned);
                record.body = m.body().map(str::to_owned);
                record.event_source_arn = Some("arn:aws:sqs:us-east-1:123456789012:notify".into());
                record
            })
            .collect()
    }

    /// Runs the function's handler on `records`; the ids it asks SQS to redeliver.
    async fn invoke(&self, records: &[SqsMessage]) -> Vec<String> {
        let mut event = SqsEvent::default();
        event.records = records.to_vec();
        let response = notify::handler(&self.notifier, LambdaEvent::new(event, Context::default()))
            .await
            .expect("handled");
        response
            .batch_item_failures
            .into_iter()
            .map(|f| f.item_identifier)
            .collect()
    }

    fn reads(&self) -> u32 {
        self.source.reads.load(Ordering::SeqCst)
    }
}

fn secret_json(base: &str, slack: &str, teams: &str) -> String {
    serde_json::json!({
        "slack_webhook_url": format!("{base}/slack/services/{slack}"),
        "teams_webhook_url": format!("{base}/teams/webhookb2/{teams}"),
    })
    .to_string()
}

async fn create_queue(sqs: &aws_sdk_sqs::Client, prefix: &str) -> String {
    sqs.create_queue()
        .queue_name(unique_name(prefix))
        .send()
        .await
        .expect("queue")
        .queue_url
        .expect("queue URL")
}

/// Everything visible on a queue now, deleted as it is read (a few short polls).
async fn receive_all(sqs: &aws_sdk_sqs::Client, url: &str) -> Vec<aws_sdk_sqs::types::Message> {
    let mut out = Vec::new();
    for _ in 0..5 {
        let messages = sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .message_attribute_names("All")
            .send()
            .await
            .expect("receive")
            .messages
            .unwrap_or_default();
        if messages.is_empty() && !out.is_empty() {
            break;
        }
        for m in &messages {
            if let Some(handle) = m.receipt_handle() {
                sqs.delete_message()
                    .queue_url(url)
                    .receipt_handle(handle)
                    .send()
                    .await
                    .expect("delete");
            }
        }
        out.extend(messages);
        if out.is_empty() {
            tokio::time::sleep(StdDuration::from_millis(50)).await;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_reaches_slack_and_teams_once_even_when_its_record_is_redelivered() {
    let w = World::new().await;
    w.publish("a1", AlertLevel::Critical, "budget_mode").await;
    let records = w.records().await;
    assert_eq!(records.len(), 1, "one SNS notification on the queue");
    let body: Value =
        serde_json::from_str(records[0].body.as_deref().unwrap_or_default()).expect("JSON body");
    assert_eq!(
        body["Type"], "Notification",
        "the body is SNS's notification JSON"
    );
    assert!(w.invoke(&records).await.is_empty());
    // The same record again, as SQS redelivers it after a lost acknowledgement.
    assert!(w.invoke(&records).await.is_empty());

    let slack = w.receiver.received("/slack");
    let teams = w.receiver.received("/teams");
    assert_eq!(slack.len(), 1, "{slack:?}");
    assert_eq!(teams.len(), 1, "{teams:?}");
    assert_eq!(slack[0].path, "/slack/services/slack-token-1");
    let text = slack[0].body["text"].as_str().expect("Slack text");
    assert!(
        text.contains("budget_mode") && text.contains("CRITICAL"),
        "{text}"
    );
    let card = &teams[0].body["attachments"][0]["content"];
    assert_eq!(card["type"], "AdaptiveCard");
    assert_eq!(card["body"][1]["text"], "budget_mode alert a1");
    assert_eq!(w.reads(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secret_is_read_once_per_ttl_and_a_rotated_url_is_used_after_it() {
    let w = World::new().await;
    w.publish("b1", AlertLevel::Warning, "conflict").await;
    assert!(w.invoke(&w.records().await).await.is_empty());
    w.secrets
        .put_secret_value()
        .secret_id(&w.secret_arn)
        .secret_string(secret_json(&w.base, "slack-token-2", "teams-token-2"))
        .send()
        .await
        .expect("rotate the URLs");

    // Within the TTL: the cached URLs, no read.
    w.clock.advance(Duration::minutes(TTL_MINUTES - 1));
    w.publish("b2", AlertLevel::Warning, "conflict").await;
    assert!(w.invoke(&w.records().await).await.is_empty());
    assert_eq!(
        w.reads(),
        1,
        "the second alert within the TTL did not read the secret"
    );

    // After it: read again, and the new URLs are used.
    w.clock.advance(Duration::minutes(1));
    w.publish("b3", AlertLevel::Warning, "conflict").await;
    assert!(w.invoke(&w.records().await).await.is_empty());
    assert_eq!(w.reads(), 2);
    let paths: Vec<String> = w
        .receiver
        .received("/slack")
        .into_iter()
        .map(|r| r.path)
        .collect();
    assert_eq!(
        paths,
        [
            "/slack/services/slack-token-1",
            "/slack/services/slack-token-1",
            "/slack/services/slack-token-2"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_error_is_a_batch_item_failure_and_the_retry_posts_only_what_is_missing() {
    let w = World::new().await;
    w.receiver.answer_next("/teams", 500);
    w.publish("c1", AlertLevel::Critical, "security").await;
    let records = w.records().await;
    let id = records[0].message_id.clone().expect("message id");
    assert_eq!(w.invoke(&records).await, [id]);
    assert!(receive_all(&w.sqs, &w.dlq_url).await.is_empty());
    // The redelivery: Teams now answers; Slack, which already has the alert, is not posted to.
    assert!(w.invoke(&records).await.is_empty());
    assert_eq!(w.receiver.received("/slack").len(), 1);
    assert_eq!(
        w.receiver.received("/teams").len(),
        2,
        "the failed post and its retry"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_is_retried_too() {
    let w = World::with_timeout(StdDuration::from_millis(300)).await;
    w.receiver.delay_ms.store(1_500, Ordering::SeqCst);
    w.publish("d1", AlertLevel::Critical, "approval").await;
    let records = w.records().await;
    assert_eq!(w.invoke(&records).await.len(), 1);
    assert!(receive_all(&w.sqs, &w.dlq_url).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gone_webhook_dead_letters_the_record_with_a_reason_that_does_not_contain_the_url() {
    let w = World::new().await;
    w.receiver.answer_next("/slack", 404);
    w.publish("e1", AlertLevel::Critical, "approval").await;
    let records = w.records().await;
    assert!(w.invoke(&records).await.is_empty(), "acknowledged");
    let dead = receive_all(&w.sqs, &w.dlq_url).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].body(), records[0].body.as_deref());
    let reason = dead[0]
        .message_attributes()
        .and_then(|a| a.get(REASON_ATTRIBUTE))
        .and_then(|v| v.string_value())
        .expect("a reason")
        .to_owned();
    assert!(reason.contains("404"), "{reason}");
    assert!(reason.contains("slack"), "{reason}");
    for secret in ["slack-token-1", "/slack/services", &w.base] {
        assert!(!reason.contains(secret), "{reason} leaks {secret}");
    }
    // Teams still got the alert.
    assert_eq!(w.receiver.received("/teams").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_alerts_are_not_posted_by_default() {
    let w = World::new().await;
    w.publish("f1", AlertLevel::Info, "budget_mode").await;
    assert!(w.invoke(&w.records().await).await.is_empty());
    assert!(w.receiver.received("/").is_empty());
    assert_eq!(w.reads(), 0, "nothing to post, nothing read");
}
