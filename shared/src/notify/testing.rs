//! In-memory stand-ins of the notify function's ports, for unit tests: a poster that records
//! what it was asked to post and can fail on demand, and fixed webhooks (the recording
//! dead-letter queue is the consumer's).

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};

use async_trait::async_trait;
use serde_json::Value;

use super::{PostError, SecretError, Target, WebhookPoster, WebhookSource, WebhookUrl, Webhooks};

/// One post the [`RecordingPoster`] received.
#[derive(Debug, Clone, PartialEq)]
pub struct Posted {
    pub target: Target,
    pub url: String,
    pub payload: Value,
}

/// Records posts; answers each with the next scripted failure, if any, else success.
#[derive(Debug, Default)]
pub struct RecordingPoster {
    posted: Mutex<Vec<Posted>>,
    failures: Mutex<VecDeque<(Target, u16)>>,
}

impl RecordingPoster {
    pub fn new() -> Self {
        Self::default()
    }

    /// The next post to `target` answers HTTP `status`.
    pub fn fail_next(&self, target: Target, status: u16) {
        self.failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back((target, status));
    }

    /// Successful posts so far.
    pub fn posted(&self) -> Vec<Posted> {
        self.posted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[async_trait]
impl WebhookPoster for RecordingPoster {
    async fn post(
        &self,
        target: Target,
        url: &WebhookUrl,
        payload: &Value,
        _timeout: std::time::Duration,
    ) -> Result<(), PostError> {
        {
            let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(i) = failures.iter().position(|(t, _)| *t == target) {
                let (_, status) = failures.remove(i).unwrap_or((target, 500));
                return Err(PostError::Status { target, status });
            }
        }
        self.posted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Posted {
                target,
                url: url.expose().to_owned(),
                payload: payload.clone(),
            });
        Ok(())
    }
}

/// The same webhooks on every read.
#[derive(Debug, Clone, Default)]
pub struct StaticWebhooks(pub Webhooks);

#[async_trait]
impl WebhookSource for StaticWebhooks {
    async fn webhooks(&self) -> Result<Webhooks, SecretError> {
        Ok(self.0.clone())
    }
}
