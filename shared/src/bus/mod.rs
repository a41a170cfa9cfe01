//! The bus port (SQS queues and SNS topics) and the in-process bus used by the local runner.

pub mod aws;
pub mod local;

use async_trait::async_trait;

use crate::domain::Outgoing;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BusError {
    /// Throttled, unreachable, timed out: the redelivered message re-sends from the outbox.
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    /// The message cannot be sent as it is (too large, unknown destination).
    #[error("message refused: {0}")]
    Refused(String),
    /// Our role or the key policy does not allow the send (IAM, KMS): a security event, and
    /// permanent, because a redelivery sends with the same role.
    #[error("send denied: {}", .0.summary())]
    Denied(Box<crate::security::SecurityEvent>),
}

impl BusError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }

    /// The security event behind an authorization failure.
    pub fn security_event(&self) -> Option<&crate::security::SecurityEvent> {
        match self {
            Self::Denied(event) => Some(event),
            _ => None,
        }
    }
}

#[async_trait]
pub trait Bus: Send + Sync + std::fmt::Debug {
    /// Sends messages to their destinations. Sending the same envelope twice is allowed:
    /// consumers are idempotent on the envelope id.
    async fn send(&self, messages: &[Outgoing]) -> Result<(), BusError>;
}
