use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::{TimeZone, Utc};
use serde_json::json;

use super::testing::{RecordingPoster, StaticWebhooks};
use super::*;
use crate::clock::SimClock;
use crate::consumer::dead_letters::RecordingDeadLetters;
use crate::domain::{AlertLevel, SystemId};
use crate::store::memory::MemoryStore;

const SLACK: &str = "https://hooks.slack.com/services/T0/B0/SLACKTOKEN";
const TEAMS: &str = "https://example.webhook.office.com/webhookb2/TEAMSTOKEN";

struct World {
    notifier: Notifier,
    poster: Arc<RecordingPoster>,
    dead: Arc<RecordingDeadLetters>,
}

fn world(filter: AlertFilter) -> World {
    let poster = Arc::new(RecordingPoster::new());
    let dead = Arc::new(RecordingDeadLetters::new());
    let at = Utc
        .with_ymd_and_hms(2026, 3, 1, 12, 0, 0)
        .single()
        .expect("time");
    let webhooks = Webhooks {
        slack: Some(WebhookUrl::parse(SLACK).expect("slack")),
        teams: Some(WebhookUrl::parse(TEAMS).expect("teams")),
    };
    World {
        notifier: Notifier {
            store: Arc::new(MemoryStore::new()),
            webhooks: Arc::new(StaticWebhooks(webhooks)),
            poster: poster.clone(),
            dead_letters: dead.clone(),
            clock: Arc::new(SimClock::new(at)),
            filter,
            settings: NotifySettings::default(),
            deadline: None,
        },
        poster,
        dead,
    }
}

fn alert(id: &str, level: AlertLevel, kind: &str) -> Alert {
    Alert {
        id: id.into(),
        level,
        kind: kind.into(),
        message: "budget mode is now economy".into(),
        system_id: Some(SystemId::parse("checkout-api").expect("id")),
        at: Utc
            .with_ymd_and_hms(2026, 3, 1, 12, 0, 0)
            .single()
            .expect("time"),
    }
}

fn envelope(alert: Alert) -> String {
    serde_json::to_string(&Envelope {
        id: format!("msg-{}", alert.id),
        causation_id: "cause".into(),
        system_id: SystemId::global(),
        base_generation: 0,
        sent_at: alert.at,
        traceparent: None,
        body: Body::AlertRaised { alert },
    })
    .expect("json")
}

fn sns(alert: Alert) -> String {
    json!({
        "Type": "Notification",
        "MessageId": "0a1b",
        "TopicArn": "arn:aws:sns:eu-west-1:123456789012:evolve-alerts",
        "Message": envelope(alert),
        "Timestamp": "2026-03-01T12:00:00.000Z",
    })
    .to_string()
}

#[tokio::test]
async fn an_alert_is_posted_once_to_each_webhook_even_when_redelivered() {
    let w = world(AlertFilter::default());
    let body = sns(alert("a1", AlertLevel::Warning, "budget_mode"));
    assert_eq!(
        w.notifier.handle_record(&body).await,
        Handled::Done(Delivered::Posted(vec![Target::Slack, Target::Teams]))
    );
    assert_eq!(w.notifier.handle_record(&body).await, Handled::Duplicate);
    let posted = w.poster.posted();
    assert_eq!(posted.len(), 2);
    assert_eq!(posted[0].url, SLACK);
    assert!(posted[0].payload["text"].is_string());
    assert_eq!(
        posted[1].payload["attachments"][0]["content"]["type"],
        "AdaptiveCard"
    );
}

#[tokio::test]
async fn raw_delivery_bodies_are_accepted_too() {
    let w = world(AlertFilter::default());
    let body = envelope(alert("a2", AlertLevel::Critical, "security"));
    assert!(matches!(
        w.notifier.handle_record(&body).await,
        Handled::Done(Delivered::Posted(_))
    ));
}

#[tokio::test]
async fn a_server_error_on_one_webhook_retries_only_that_one() {
    let w = world(AlertFilter::default());
    w.poster.fail_next(Target::Teams, 503);
    let body = sns(alert("a3", AlertLevel::Warning, "conflict"));
    assert_eq!(w.notifier.handle_record(&body).await, Handled::Retry);
    assert_eq!(
        w.notifier.handle_record(&body).await,
        Handled::Done(Delivered::Posted(vec![Target::Teams]))
    );
    let targets: Vec<Target> = w.poster.posted().iter().map(|p| p.target).collect();
    assert_eq!(targets, [Target::Slack, Target::Teams]);
    assert!(w.dead.sent().is_empty());
}

#[tokio::test]
async fn a_gone_webhook_dead_letters_the_record_without_the_url() {
    let w = world(AlertFilter::default());
    w.poster.fail_next(Target::Slack, 404);
    let body = sns(alert("a4", AlertLevel::Critical, "approval"));
    assert_eq!(w.notifier.handle_record(&body).await, Handled::DeadLettered);
    let dead = w.dead.sent();
    assert_eq!(dead.len(), 1);
    assert!(dead[0].reason.contains("404"), "{}", dead[0].reason);
    assert!(!dead[0].reason.contains("SLACKTOKEN"), "{}", dead[0].reason);
    assert_eq!(dead[0].body, body);
}

#[tokio::test]
async fn garbage_and_other_messages_are_dead_lettered() {
    let w = world(AlertFilter::default());
    assert_eq!(
        w.notifier.handle_record("not json").await,
        Handled::DeadLettered
    );
    let other = json!({"id": "m", "system_id": "s", "sent_at": "2026-03-01T12:00:00Z",
                       "type": "EvaluationDue", "generation": 1})
    .to_string();
    assert_eq!(
        w.notifier.handle_record(&other).await,
        Handled::DeadLettered
    );
    assert!(
        w.dead.sent()[1]
            .reason
            .contains("EvaluationDue is not an alert")
    );
    assert!(w.poster.posted().is_empty());
}

#[tokio::test]
async fn the_filter_keeps_info_and_unlisted_kinds_off_the_channels() {
    let w = world(AlertFilter {
        min_level: AlertLevel::Warning,
        kinds: Some(BTreeSet::from(["security".to_owned()])),
    });
    let info = sns(alert("a5", AlertLevel::Info, "security"));
    let other = sns(alert("a6", AlertLevel::Critical, "budget_mode"));
    let wanted = sns(alert("a7", AlertLevel::Critical, "security"));
    assert_eq!(
        w.notifier.handle_record(&info).await,
        Handled::Done(Delivered::Filtered)
    );
    assert_eq!(
        w.notifier.handle_record(&other).await,
        Handled::Done(Delivered::Filtered)
    );
    assert!(matches!(
        w.notifier.handle_record(&wanted).await,
        Handled::Done(Delivered::Posted(_))
    ));
    assert_eq!(w.poster.posted().len(), 2);
}

#[tokio::test]
async fn a_batch_reports_only_the_retryable_records() {
    let w = world(AlertFilter::default());
    w.poster.fail_next(Target::Slack, 429);
    let record = |id: &str, body: String| {
        let mut m = SqsMessage::default();
        m.message_id = Some(id.into());
        m.body = Some(body);
        m
    };
    let batch = w
        .notifier
        .handle_batch(&[
            record("m1", sns(alert("b1", AlertLevel::Warning, "conflict"))),
            record("m2", sns(alert("b2", AlertLevel::Warning, "conflict"))),
            record("m3", "{}".into()),
        ])
        .await;
    assert_eq!(batch.batch_item_failures, ["m1"]);
    assert_eq!(batch.counts.processed, 1);
    assert_eq!(batch.counts.retried, 1);
    assert_eq!(batch.counts.dead_lettered, 1);
    // b2 to both webhooks; b1 reached Teams but is counted once its record completes.
    assert_eq!(batch.posted, 2);
}

#[tokio::test]
async fn no_time_left_before_the_deadline_retries_without_posting() {
    let w = world(AlertFilter::default());
    let now = w.notifier.clock.now();
    let mut late = w.notifier.clone();
    late.deadline = Some(now + Duration::milliseconds(500));
    let body = sns(alert("c1", AlertLevel::Warning, "conflict"));
    assert_eq!(late.handle_record(&body).await, Handled::Retry);
    assert!(w.poster.posted().is_empty());
}

fn sqs_record(id: &str, body: String) -> SqsMessage {
    let mut m = SqsMessage::default();
    m.message_id = Some(id.into());
    m.body = Some(body);
    m
}

#[tokio::test]
async fn a_batch_too_near_its_deadline_starts_no_record_and_leaves_them_for_redelivery() {
    let w = world(AlertFilter::default());
    let mut late = w.notifier.clone();
    late.deadline = Some(w.notifier.clock.now() + Duration::seconds(2));
    let batch = late
        .handle_batch(&[
            sqs_record("m1", sns(alert("d1", AlertLevel::Warning, "conflict"))),
            sqs_record("m2", "not json".into()),
        ])
        .await;
    assert_eq!(batch.batch_item_failures, ["m1", "m2"]);
    assert_eq!(batch.counts.retried, 2);
    assert_eq!(batch.counts.not_started, 2);
    assert_eq!(batch.counts.dead_lettered, 0, "m2 was never read");
    assert!(w.poster.posted().is_empty());
    assert!(w.dead.sent().is_empty());
}

/// Panics on an alert whose message says so; posts the others through the recording poster.
#[derive(Debug)]
struct PanicsOnBoom(Arc<RecordingPoster>);

#[async_trait::async_trait]
impl WebhookPoster for PanicsOnBoom {
    async fn post(
        &self,
        target: Target,
        url: &WebhookUrl,
        payload: &serde_json::Value,
        timeout: std::time::Duration,
    ) -> Result<(), PostError> {
        assert!(!payload.to_string().contains("boom"), "the poster blew up");
        self.0.post(target, url, payload, timeout).await
    }
}

#[tokio::test]
async fn a_panic_while_posting_one_record_fails_that_record_only() {
    let w = world(AlertFilter::default());
    let mut notifier = w.notifier.clone();
    notifier.poster = Arc::new(PanicsOnBoom(w.poster.clone()));
    let boom = Alert {
        message: "boom".into(),
        ..alert("e1", AlertLevel::Warning, "conflict")
    };
    let batch = notifier
        .handle_batch(&[
            sqs_record("m1", sns(boom)),
            sqs_record("m2", sns(alert("e2", AlertLevel::Warning, "conflict"))),
        ])
        .await;
    assert_eq!(batch.batch_item_failures, ["m1"]);
    assert_eq!(batch.counts.processed, 1);
    assert_eq!(batch.counts.retried, 1);
    assert_eq!(batch.counts.panicked, 1);
    assert_eq!(batch.posted, 2, "e2 reached both webhooks");
    assert!(w.dead.sent().is_empty());
}
