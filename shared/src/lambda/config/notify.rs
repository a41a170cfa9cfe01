//! The notify function's configuration: its table, dead-letter queue, webhook secret and filter.

use std::collections::HashMap;

use super::{
    ConfigError, NOTIFY_DLQ_URL, NOTIFY_KINDS, NOTIFY_MIN_LEVEL, TABLE_NAME, Vars,
    WEBHOOK_SECRET_ARN, WEBHOOK_SECRET_TTL_SECONDS, WEBHOOK_TIMEOUT_MS, env_map,
};

/// The notify function: consumes the `notify` queue (the `alerts` topic's subscription) and
/// posts alerts to the webhooks of the secret. Touches only its idempotency records in the
/// table; sends nothing but dead letters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifyConfig {
    pub table_name: String,
    pub dead_letter_queue_url: String,
    pub secret_arn: String,
    pub filter: crate::domain::AlertFilter,
    pub secret_ttl: chrono::Duration,
    pub post_timeout: std::time::Duration,
}

env_readers!(NotifyConfig);

impl NotifyConfig {
    pub const VARIABLES: &'static [&'static str] = &[
        TABLE_NAME,
        NOTIFY_DLQ_URL,
        WEBHOOK_SECRET_ARN,
        NOTIFY_MIN_LEVEL,
        NOTIFY_KINDS,
        WEBHOOK_SECRET_TTL_SECONDS,
        WEBHOOK_TIMEOUT_MS,
    ];

    pub fn variables() -> Vec<&'static str> {
        Self::VARIABLES.to_vec()
    }

    pub(super) fn read(vars: &Vars<'_>) -> Result<Self, ConfigError> {
        use crate::domain::AlertLevel;
        let min_level = match vars.optional(NOTIFY_MIN_LEVEL) {
            None | Some("warning") => AlertLevel::Warning,
            Some("info") => AlertLevel::Info,
            Some("critical") => AlertLevel::Critical,
            Some(_) => {
                return Err(ConfigError::Invalid {
                    name: NOTIFY_MIN_LEVEL,
                    reason: "expected `info`, `warning` or `critical`".into(),
                });
            }
        };
        let kinds: std::collections::BTreeSet<String> = vars
            .optional(NOTIFY_KINDS)
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(str::to_owned)
            .collect();
        let secret_ttl = vars.positive(WEBHOOK_SECRET_TTL_SECONDS, 300)?;
        let post_timeout = vars.positive(WEBHOOK_TIMEOUT_MS, 5_000)?;
        Ok(Self {
            table_name: vars.required(TABLE_NAME)?.to_owned(),
            dead_letter_queue_url: vars.url(NOTIFY_DLQ_URL)?,
            secret_arn: vars.arn(WEBHOOK_SECRET_ARN)?,
            filter: crate::domain::AlertFilter {
                min_level,
                kinds: (!kinds.is_empty()).then_some(kinds),
            },
            secret_ttl: chrono::Duration::seconds(i64::try_from(secret_ttl).unwrap_or(i64::MAX)),
            post_timeout: std::time::Duration::from_millis(post_timeout),
        })
    }
}
