//! The notify function's wiring from its configuration (the `webhooks` feature: the only place
//! that builds the webhook client and the Secrets Manager source).

use std::sync::Arc;

use super::{CachedWebhooks, HyperPoster, Notifier, NotifySettings, QUEUE, SecretsManagerWebhooks};
use crate::clock::SystemClock;
use crate::consumer::SqsDeadLetters;
use crate::lambda::config::NotifyConfig;
use crate::store::dynamo::DynamoStore;

/// The notify function's dependencies: its idempotency records in the table (it reads and
/// writes nothing else there, and nothing in the bucket), the webhook secret behind a TTL cache,
/// the webhook poster and its dead-letter queue, on the wall clock.
pub fn notifier(
    config: &NotifyConfig,
    dynamo: aws_sdk_dynamodb::Client,
    s3: aws_sdk_s3::Client,
    secrets: aws_sdk_secretsmanager::Client,
    sqs: aws_sdk_sqs::Client,
) -> std::io::Result<Notifier> {
    let clock = Arc::new(SystemClock);
    // The store's S3 side holds event bodies, which notify never touches: no bucket.
    let store = Arc::new(DynamoStore::new(
        dynamo,
        s3,
        config.table_name.clone(),
        String::new(),
    ));
    let source = Arc::new(SecretsManagerWebhooks::new(
        secrets,
        config.secret_arn.clone(),
    ));
    Ok(Notifier {
        store,
        webhooks: Arc::new(CachedWebhooks::new(
            source,
            clock.clone(),
            config.secret_ttl,
        )),
        poster: Arc::new(HyperPoster::new()?),
        dead_letters: Arc::new(SqsDeadLetters::single(
            sqs,
            QUEUE,
            config.dead_letter_queue_url.clone(),
        )),
        clock,
        filter: config.filter.clone(),
        settings: NotifySettings {
            post_timeout: config.post_timeout,
            ..NotifySettings::default()
        },
        deadline: None,
    })
}
