//! The notify function: consumes the `notify` queue, which the `alerts` topic delivers to, and
//! posts each alert to the Slack and/or Microsoft Teams incoming webhooks of its secret.
//! Sample payload: `infra/events/sqs-notify.json`.

use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent};
use lambda_runtime::{Error, LambdaEvent};
pub use shared::notify::Notifier;

/// An SQS batch, answered with its batch item failures (the records to redeliver).
pub async fn handler(
    notifier: &Notifier,
    event: LambdaEvent<SqsEvent>,
) -> Result<SqsBatchResponse, Error> {
    let notifier = notifier.until(event.context.deadline);
    Ok(notifier.handle_batch(&event.payload.records).await.into())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::{TimeZone, Utc};
    use lambda_runtime::Context;
    use shared::clock::SimClock;
    use shared::consumer::dead_letters::RecordingDeadLetters;
    use shared::notify::testing::{RecordingPoster, StaticWebhooks};
    use shared::notify::{AlertFilter, NotifySettings, Target, WebhookUrl, Webhooks};
    use shared::store::memory::MemoryStore;

    use super::*;

    const SQS: &str = include_str!("../../../infra/events/sqs-notify.json");

    #[tokio::test]
    async fn the_sample_batch_posts_its_alert_and_dead_letters_the_garbage() {
        let poster = Arc::new(RecordingPoster::new());
        let dead = Arc::new(RecordingDeadLetters::new());
        let at = Utc
            .with_ymd_and_hms(2026, 3, 1, 12, 0, 0)
            .single()
            .expect("time");
        let notifier = Notifier {
            store: Arc::new(MemoryStore::new()),
            webhooks: Arc::new(StaticWebhooks(Webhooks {
                slack: Some(
                    WebhookUrl::parse("https://hooks.slack.com/services/T/B/X").expect("url"),
                ),
                teams: None,
            })),
            poster: poster.clone(),
            dead_letters: dead.clone(),
            clock: Arc::new(SimClock::new(at)),
            filter: AlertFilter::default(),
            settings: NotifySettings::default(),
            deadline: None,
        };
        let event: SqsEvent = serde_json::from_str(SQS).expect("sample event");
        let response = handler(&notifier, LambdaEvent::new(event, Context::default()))
            .await
            .expect("handled");
        assert!(response.batch_item_failures.is_empty(), "{response:?}");
        let posted = poster.posted();
        assert_eq!(posted.len(), 1);
        assert_eq!(posted[0].target, Target::Slack);
        assert_eq!(dead.sent().len(), 1);
        assert_eq!(dead.sent()[0].body, "not json at all");
    }
}
