//! Incoming webhooks of Slack and Microsoft Teams: the URL (a bearer secret, redacted wherever
//! it could be printed), the payload each service expects, and the HTTP poster.
//!
//! The poster rides on the hyper and rustls stack the AWS SDK already compiles: one HTTP stack
//! in the binary, not two.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};

use crate::domain::{Alert, AlertLevel};

/// The services an alert can be posted to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    Slack,
    Teams,
}

impl Target {
    pub const ALL: [Target; 2] = [Self::Slack, Self::Teams];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Slack => "slack",
            Self::Teams => "teams",
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An incoming-webhook URL. Its path is the credential (anyone holding it can post to the
/// channel), so `Debug` and `Display` show only the scheme and host; [`WebhookUrl::expose`]
/// is the one way to the full text, used only to build the request.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookUrl {
    url: String,
    uri: http::Uri,
}

impl WebhookUrl {
    /// Parses a webhook URL: HTTPS, or plain HTTP to a loopback host (local receivers and
    /// tests). The error never repeats the URL.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let uri: http::Uri = text.parse().map_err(|_| "not a valid URL".to_owned())?;
        let host = uri.host().ok_or_else(|| "the URL has no host".to_owned())?;
        let loopback = host == "localhost" || host == "127.0.0.1" || host == "[::1]";
        match uri.scheme_str() {
            Some("https") => {}
            Some("http") if loopback => {}
            _ => return Err("webhook URLs must use https".to_owned()),
        }
        Ok(Self {
            url: text.to_owned(),
            uri,
        })
    }

    /// The full URL, credential included. Never log it.
    pub fn expose(&self) -> &str {
        &self.url
    }

    #[cfg(feature = "webhooks")]
    pub(super) fn uri(&self) -> &http::Uri {
        &self.uri
    }
}

impl fmt::Display for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = self.uri.scheme_str().unwrap_or("https");
        let host = self.uri.host().unwrap_or("");
        write!(f, "{scheme}://{host}/<redacted>")
    }
}

impl fmt::Debug for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WebhookUrl({self})")
    }
}

/// A post that did not land, split by whether a later attempt can help. No variant carries the
/// URL or the response body (which could echo it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PostError {
    #[error("{target} webhook did not answer within {timeout_ms} ms")]
    Timeout { target: Target, timeout_ms: u64 },
    #[error("{target} webhook unreachable: {reason}")]
    Transport { target: Target, reason: String },
    #[error("{target} webhook answered HTTP {status}")]
    Status { target: Target, status: u16 },
    #[error("{target} webhook request could not be built: {reason}")]
    Request { target: Target, reason: String },
}

impl PostError {
    /// Timeouts, transport failures, 408, 429 and 5xx can pass on a later attempt; any other
    /// 4xx (a deleted webhook answers 404 or 410, a malformed payload 400) never will.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Timeout { .. } | Self::Transport { .. } => true,
            Self::Status { status, .. } => *status == 408 || *status == 429 || *status >= 500,
            Self::Request { .. } => false,
        }
    }
}

/// Posts a JSON payload to a webhook within a time limit.
#[async_trait]
pub trait WebhookPoster: Send + Sync + fmt::Debug {
    async fn post(
        &self,
        target: Target,
        url: &WebhookUrl,
        payload: &Value,
        timeout: Duration,
    ) -> Result<(), PostError>;
}

/// The alert as one line of text.
fn headline(alert: &Alert) -> String {
    let system = alert
        .system_id
        .as_ref()
        .map(|s| format!(" [{s}]"))
        .unwrap_or_default();
    format!(
        "{} {}{system}: {}",
        level_label(alert.level),
        alert.kind,
        alert.message
    )
}

fn level_label(level: AlertLevel) -> &'static str {
    match level {
        AlertLevel::Info => "INFO",
        AlertLevel::Warning => "WARNING",
        AlertLevel::Critical => "CRITICAL",
    }
}

/// Slack's incoming-webhook payload: `{"text": ...}` (mrkdwn).
pub fn slack_payload(alert: &Alert) -> Value {
    json!({
        "text": format!(
            "*{}* `{}`{}\n{}\n_{} · alert {}_",
            level_label(alert.level),
            alert.kind,
            alert
                .system_id
                .as_ref()
                .map(|s| format!(" system `{s}`"))
                .unwrap_or_default(),
            alert.message,
            alert.at.to_rfc3339(),
            alert.id
        )
    })
}

/// Teams' incoming-webhook payload: a message with one Adaptive Card attachment, the format
/// both Workflows webhooks ("post to a channel when a webhook request is received") and the
/// older Office 365 connector webhooks accept (Workflows does not render legacy MessageCards).
/// The title is coloured by level; the fields are a fact set.
pub fn teams_payload(alert: &Alert) -> Value {
    let colour = match alert.level {
        AlertLevel::Info => "Accent",
        AlertLevel::Warning => "Warning",
        AlertLevel::Critical => "Attention",
    };
    let mut facts = vec![
        json!({"title": "Level", "value": level_label(alert.level)}),
        json!({"title": "Kind", "value": alert.kind}),
    ];
    if let Some(system) = &alert.system_id {
        facts.push(json!({"title": "System", "value": system.as_str()}));
    }
    facts.push(json!({"title": "At", "value": alert.at.to_rfc3339()}));
    facts.push(json!({"title": "Alert id", "value": alert.id}));
    json!({
        "type": "message",
        "summary": headline(alert),
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.4",
                "body": [
                    {
                        "type": "TextBlock",
                        "size": "Medium",
                        "weight": "Bolder",
                        "color": colour,
                        "wrap": true,
                        "text": format!("Evolve {}: {}", level_label(alert.level), alert.kind),
                    },
                    {"type": "TextBlock", "wrap": true, "text": alert.message},
                    {"type": "FactSet", "facts": facts},
                ],
            },
        }],
    })
}

/// The payload `target` expects.
pub fn payload(target: Target, alert: &Alert) -> Value {
    match target {
        Target::Slack => slack_payload(alert),
        Target::Teams => teams_payload(alert),
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};

    use super::*;
    use crate::domain::SystemId;

    fn alert() -> Alert {
        Alert {
            id: "alert-1".into(),
            level: AlertLevel::Critical,
            kind: "budget_mode".into(),
            message: "budget mode is now paused".into(),
            system_id: Some(SystemId::parse("checkout-api").expect("id")),
            at: Utc
                .with_ymd_and_hms(2026, 3, 1, 12, 0, 0)
                .single()
                .expect("time"),
        }
    }

    #[test]
    fn a_webhook_url_prints_only_its_scheme_and_host() {
        let url = WebhookUrl::parse("https://hooks.slack.com/services/T000/B000/SECRETTOKEN")
            .expect("valid");
        for shown in [url.to_string(), format!("{url:?}")] {
            assert!(!shown.contains("SECRETTOKEN"), "{shown}");
            assert!(shown.contains("hooks.slack.com"), "{shown}");
        }
        assert!(url.expose().ends_with("SECRETTOKEN"));
    }

    #[test]
    fn plain_http_is_refused_except_to_loopback_and_errors_do_not_echo_the_url() {
        assert!(WebhookUrl::parse("http://127.0.0.1:8080/hook").is_ok());
        let err = WebhookUrl::parse("http://example.com/services/SECRETTOKEN").expect_err("http");
        assert!(!err.contains("SECRETTOKEN"), "{err}");
        let err = WebhookUrl::parse("not a url SECRETTOKEN").expect_err("garbage");
        assert!(!err.contains("SECRETTOKEN"), "{err}");
    }

    #[test]
    fn rate_limits_server_errors_and_timeouts_retry_other_client_errors_do_not() {
        let status = |status| PostError::Status {
            target: Target::Slack,
            status,
        };
        for retryable in [408, 429, 500, 502, 503] {
            assert!(status(retryable).is_retryable(), "{retryable}");
        }
        for permanent in [400, 403, 404, 410] {
            assert!(!status(permanent).is_retryable(), "{permanent}");
        }
        assert!(
            PostError::Timeout {
                target: Target::Teams,
                timeout_ms: 5
            }
            .is_retryable()
        );
    }

    #[test]
    fn slack_gets_text_and_teams_an_adaptive_card() {
        let slack = slack_payload(&alert());
        let text = slack["text"].as_str().expect("text");
        assert!(text.contains("CRITICAL") && text.contains("budget mode is now paused"));
        assert!(text.contains("checkout-api") && text.contains("alert-1"));
        let teams = teams_payload(&alert());
        assert_eq!(teams["type"], "message");
        let card = &teams["attachments"][0];
        assert_eq!(
            card["contentType"],
            "application/vnd.microsoft.card.adaptive"
        );
        let body = &card["content"]["body"];
        assert_eq!(card["content"]["type"], "AdaptiveCard");
        assert_eq!(body[0]["color"], "Attention");
        assert_eq!(body[1]["text"], "budget mode is now paused");
        assert_eq!(body[2]["facts"][2]["value"], "checkout-api");
    }
}
