//! Security events (docs/architecture.md, "The LLM layer" and "Security"): an authorization failure from any AWS service we
//! call is not an outage to wait out but a sign that a role, a key policy or a credential is
//! wrong, or that someone is probing. So it is never retried blindly, and it is made visible the
//! same way everywhere: one `tracing` event with a fixed target and field set (so a log
//! subscription or metric filter can match `security_event = true` without parsing messages),
//! and one critical `Alert` of kind `security` on the alerts topic, which also lands in the audit
//! trail through `Write::PutAlert`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tracing::error;

use crate::domain::{Alert, AlertLevel, SystemId};

/// The `tracing` target of every security event.
pub const TARGET: &str = "security";

/// The `Alert::kind` of a security alert.
pub const ALERT_KIND: &str = "security";

/// Error codes that mean "you are not allowed", across Bedrock, DynamoDB, S3, SQS, SNS and KMS.
/// Matched exactly: a code that merely contains "Denied" is not necessarily one of these.
pub const AUTHORIZATION_CODES: &[&str] = &[
    // Bedrock, DynamoDB, KMS, most JSON-protocol services.
    "AccessDeniedException",
    // S3, SQS (query protocol), STS.
    "AccessDenied",
    // Unknown or revoked access key.
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "InvalidAccessKeyId",
    "ExpiredToken",
    "ExpiredTokenException",
    // SNS.
    "AuthorizationError",
    "AuthorizationErrorException",
    "AuthFailure",
    "NotAuthorized",
    // KMS refusing the key to the caller or the service that encrypts for it.
    "KMSAccessDeniedException",
    "KMS.AccessDeniedException",
    "KmsAccessDenied",
    "KMSAccessDenied",
    "KMS.KMSAccessDeniedException",
    "AWS.SimpleQueueService.KmsAccessDenied",
];

/// Whether an AWS error code is an authorization failure.
pub fn is_authorization_error(code: &str) -> bool {
    AUTHORIZATION_CODES.contains(&code)
}

/// One authorization failure, with what is known about it. Never carries request bodies or
/// credentials: the message is the service's own error message, capped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityEvent {
    /// `bedrock`, `dynamodb`, `s3`, `sqs`, `sns`, `kms`.
    pub service: String,
    /// The API operation, e.g. `Converse`, `TransactWriteItems`.
    pub operation: String,
    pub error_code: String,
    /// The principal the service named in its message (`User: arn:... is not authorized`), when
    /// it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    /// The resource called, when it is not secret (a model id, a table name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    pub message: String,
}

impl SecurityEvent {
    pub fn new(service: &str, operation: &str, error_code: &str, message: &str) -> Self {
        Self {
            service: service.to_owned(),
            operation: operation.to_owned(),
            error_code: error_code.to_owned(),
            principal: principal_in(message),
            resource: None,
            message: message.chars().take(300).collect(),
        }
    }

    #[must_use]
    pub fn with_resource(mut self, resource: &str) -> Self {
        self.resource = Some(resource.to_owned());
        self
    }

    /// Writes the structured log event: always the same target and fields.
    pub fn emit(&self) {
        error!(
            target: TARGET,
            security_event = true,
            service = %self.service,
            operation = %self.operation,
            error_code = %self.error_code,
            principal = self.principal.as_deref().unwrap_or("unknown"),
            resource = self.resource.as_deref().unwrap_or(""),
            "authorization failure: {}",
            self.message
        );
    }

    /// The one-line form used in error texts and DLQ reasons; `security:` lets tooling find it.
    pub fn summary(&self) -> String {
        format!(
            "security: {} {} {}{}: {}",
            self.service,
            self.operation,
            self.error_code,
            self.principal
                .as_deref()
                .map(|p| format!(" (principal {p})"))
                .unwrap_or_default(),
            self.message
        )
    }

    /// The critical alert operators receive for this event.
    pub fn alert(&self, id: String, system_id: Option<SystemId>, at: DateTime<Utc>) -> Alert {
        Alert {
            id,
            level: AlertLevel::Critical,
            kind: ALERT_KIND.to_owned(),
            message: self.summary(),
            system_id,
            at,
        }
    }
}

/// The principal in an AWS "not authorized" message: `User: <arn> is not authorized ...`.
pub fn principal_in(message: &str) -> Option<String> {
    let start = message.find("User: ")? + "User: ".len();
    let rest = &message[start..];
    let end = rest.find(' ').unwrap_or(rest.len());
    let principal = rest[..end].trim_end_matches([',', '.']);
    (!principal.is_empty()).then(|| principal.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorization_codes_of_every_service_are_recognised_and_throttling_is_not() {
        for code in [
            "AccessDeniedException",
            "AccessDenied",
            "UnrecognizedClientException",
            "AuthorizationError",
            "KMS.AccessDeniedException",
            "KMSAccessDeniedException",
        ] {
            assert!(is_authorization_error(code), "{code}");
        }
        for code in ["ThrottlingException", "ValidationException", "Denied", ""] {
            assert!(!is_authorization_error(code), "{code}");
        }
    }

    #[test]
    fn the_principal_is_read_from_the_message_when_named() {
        let message = "User: arn:aws:sts::123456789012:assumed-role/decide/fn is not authorized \
                       to perform: bedrock:InvokeModel on resource: arn:aws:bedrock:...";
        assert_eq!(
            principal_in(message).as_deref(),
            Some("arn:aws:sts::123456789012:assumed-role/decide/fn")
        );
        assert_eq!(principal_in("You don't have access to the model"), None);
    }

    #[test]
    fn the_alert_is_critical_and_of_kind_security() {
        let event = SecurityEvent::new("dynamodb", "GetItem", "AccessDeniedException", "no");
        let alert = event.alert("alert_1".into(), None, DateTime::<Utc>::UNIX_EPOCH);
        assert_eq!(alert.level, AlertLevel::Critical);
        assert_eq!(alert.kind, "security");
        assert!(alert.message.starts_with("security: dynamodb GetItem"));
    }
}
