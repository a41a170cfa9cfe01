//! Where the webhook URLs live: one AWS Secrets Manager secret holding
//! `{"slack_webhook_url": "...", "teams_webhook_url": "..."}` (either optional), read through
//! a cache with a time to live so a warm function reads it once per TTL, not once per alert,
//! and picks up a rotated URL within one TTL. The URLs never reach an environment variable or
//! a log line.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;
use tokio::sync::Mutex;
use tracing::warn;

use super::webhook::{Target, WebhookUrl};
use crate::clock::Clock;

/// The webhooks alerts are posted to. `Debug` is safe: [`WebhookUrl`] redacts itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Webhooks {
    pub slack: Option<WebhookUrl>,
    pub teams: Option<WebhookUrl>,
}

#[derive(Deserialize)]
struct SecretShape {
    #[serde(default)]
    slack_webhook_url: Option<String>,
    #[serde(default)]
    teams_webhook_url: Option<String>,
}

impl Webhooks {
    /// Parses the secret's JSON. Blank or absent entries mean "not configured". Errors name
    /// the field and never the value (serde's messages can quote it, so they are not kept).
    pub fn parse(secret: &str) -> Result<Self, SecretError> {
        let shape: SecretShape = serde_json::from_str(secret).map_err(|e| {
            SecretError::Invalid(format!(
                "the secret is not a JSON object with slack_webhook_url and teams_webhook_url \
                 ({:?} error at line {}, column {})",
                e.classify(),
                e.line(),
                e.column()
            ))
        })?;
        let url = |field: &str, value: Option<String>| {
            value
                .filter(|v| !v.trim().is_empty())
                .map(|v| {
                    WebhookUrl::parse(&v)
                        .map_err(|reason| SecretError::Invalid(format!("{field}: {reason}")))
                })
                .transpose()
        };
        Ok(Self {
            slack: url("slack_webhook_url", shape.slack_webhook_url)?,
            teams: url("teams_webhook_url", shape.teams_webhook_url)?,
        })
    }

    /// The configured targets, Slack first.
    pub fn targets(&self) -> Vec<(Target, &WebhookUrl)> {
        let mut out = Vec::new();
        if let Some(url) = &self.slack {
            out.push((Target::Slack, url));
        }
        if let Some(url) = &self.teams {
            out.push((Target::Teams, url));
        }
        out
    }
}

/// The secret could not be read or holds something unusable. Both are retried: the alert
/// waits on its queue while an operator fixes the secret or its permissions (after five
/// receives SQS moves it to the dead-letter queue).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("webhook secret unavailable: {0}")]
    Unavailable(String),
    #[error("webhook secret invalid: {0}")]
    Invalid(String),
}

/// A source of the webhook URLs.
#[async_trait]
pub trait WebhookSource: Send + Sync + std::fmt::Debug {
    async fn webhooks(&self) -> Result<Webhooks, SecretError>;
}

/// A [`WebhookSource`] read at most once per `ttl` (time from the [`Clock`] port, so tests
/// step over the TTL). When a refresh fails and a value is cached, the stale value is used
/// (and the failure logged): an alert is better posted to last minute's URL than not at all.
#[derive(Debug)]
pub struct CachedWebhooks {
    inner: Arc<dyn WebhookSource>,
    clock: Arc<dyn Clock>,
    ttl: Duration,
    cached: Mutex<Option<(DateTime<Utc>, Webhooks)>>,
}

impl CachedWebhooks {
    pub fn new(inner: Arc<dyn WebhookSource>, clock: Arc<dyn Clock>, ttl: Duration) -> Self {
        Self {
            inner,
            clock,
            ttl,
            cached: Mutex::new(None),
        }
    }
}

#[async_trait]
impl WebhookSource for CachedWebhooks {
    async fn webhooks(&self) -> Result<Webhooks, SecretError> {
        // Held across the read: concurrent records of a batch wait for one read, not many.
        let mut cached = self.cached.lock().await;
        let now = self.clock.now();
        if let Some((read_at, webhooks)) = cached.as_ref() {
            if now < *read_at + self.ttl {
                return Ok(webhooks.clone());
            }
        }
        match self.inner.webhooks().await {
            Ok(webhooks) => {
                *cached = Some((now, webhooks.clone()));
                Ok(webhooks)
            }
            Err(e) => match cached.as_ref() {
                Some((_, stale)) => {
                    warn!(error = %e, "could not refresh the webhook secret; using the cached one");
                    Ok(stale.clone())
                }
                None => Err(e),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use chrono::TimeZone;

    use super::*;
    use crate::clock::SimClock;

    #[derive(Debug, Default)]
    struct Counting {
        reads: AtomicU32,
        fail: std::sync::atomic::AtomicBool,
    }

    #[async_trait]
    impl WebhookSource for Counting {
        async fn webhooks(&self) -> Result<Webhooks, SecretError> {
            let n = self.reads.fetch_add(1, Ordering::SeqCst);
            if self.fail.load(Ordering::SeqCst) {
                return Err(SecretError::Unavailable("down".into()));
            }
            Webhooks::parse(&format!(
                r#"{{"slack_webhook_url": "https://hooks.slack.com/services/{n}"}}"#
            ))
        }
    }

    #[test]
    fn either_url_is_optional_and_errors_never_quote_the_secret() {
        let w =
            Webhooks::parse(r#"{"teams_webhook_url": "https://x.webhook.office.com/a/SECRET"}"#)
                .expect("valid");
        assert_eq!(w.slack, None);
        assert_eq!(w.targets().len(), 1);
        assert_eq!(
            Webhooks::parse(r#"{"slack_webhook_url": ""}"#).expect("blank"),
            Webhooks::default()
        );
        for bad in [
            r#"{"slack_webhook_url": 42, "teams_webhook_url": "https://t/SECRET"}"#,
            r#"{"slack_webhook_url": "http://hooks.example.com/SECRET"}"#,
            "SECRET",
        ] {
            let err = Webhooks::parse(bad).expect_err(bad).to_string();
            assert!(!err.contains("SECRET"), "{err}");
        }
    }

    #[tokio::test]
    async fn the_secret_is_read_once_per_ttl_and_a_failed_refresh_keeps_the_last_value() {
        let start = Utc
            .with_ymd_and_hms(2026, 3, 1, 12, 0, 0)
            .single()
            .expect("time");
        let clock = Arc::new(SimClock::new(start));
        let source = Arc::new(Counting::default());
        let cache = CachedWebhooks::new(source.clone(), clock.clone(), Duration::minutes(5));
        let first = cache.webhooks().await.expect("read");
        clock.advance(Duration::minutes(4));
        assert_eq!(cache.webhooks().await.expect("cached"), first);
        assert_eq!(source.reads.load(Ordering::SeqCst), 1);
        clock.advance(Duration::minutes(1));
        assert_ne!(cache.webhooks().await.expect("refreshed"), first);
        assert_eq!(source.reads.load(Ordering::SeqCst), 2);
        source.fail.store(true, Ordering::SeqCst);
        clock.advance(Duration::minutes(5));
        assert!(cache.webhooks().await.is_ok(), "stale value served");
    }
}
