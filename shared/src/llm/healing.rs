//! Healing of Bedrock calls (the seed's error table and healing strategies): which failures are
//! retried, which move to the next model, which trim the prompt, and the per-model circuit
//! breaker. Pure decisions; the adapter carries them out.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::validate::AnswerError;
use crate::clock::Random;
use crate::store::CircuitState;

/// What went wrong with one Bedrock request.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Failure {
    #[error("throttled: {0}")]
    Throttled(String),
    #[error("model timeout: {0}")]
    ModelTimeout(String),
    #[error("server error {status}: {message}")]
    Server { status: u16, message: String },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("input too long: {0}")]
    InputTooLong(String),
    #[error("validation error: {0}")]
    Validation(String),
    #[error("access denied: {0}")]
    AccessDenied(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("transport error: {0}")]
    Transport(String),
    #[error("malformed response: {0}")]
    Malformed(String),
    #[error("invalid answer: {0}")]
    Answer(AnswerError),
}

/// The healing path of a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// Throttling, timeouts, 5xx, transport: bounded jittered retries, then the next model.
    RetryThenNextModel,
    /// "Input is too long": trim history oldest first, then a larger-context model.
    TrimThenLargerModel,
    /// Validation and not-found errors: never retried; the next model.
    NextModel,
    /// Access denied: a security event. Neither retried nor tried on another model (the same
    /// role is denied there too, and probing model after model looks like an attack): the local
    /// engine answers this call.
    LocalEngine,
    /// The model answered but the answer is unusable: one repair attempt, then the next model.
    Repair,
}

impl Failure {
    pub fn path(&self) -> Path {
        match self {
            Self::Throttled(_)
            | Self::ModelTimeout(_)
            | Self::Server { .. }
            | Self::Timeout(_)
            | Self::Transport(_)
            | Self::Malformed(_) => Path::RetryThenNextModel,
            Self::InputTooLong(_) => Path::TrimThenLargerModel,
            Self::Validation(_) | Self::NotFound(_) => Path::NextModel,
            Self::AccessDenied(_) => Path::LocalEngine,
            Self::Answer(_) => Path::Repair,
        }
    }

    /// Authorization failures are security events: logged and alerted, never retried blindly.
    pub fn is_security_event(&self) -> bool {
        matches!(self, Self::AccessDenied(_))
    }

    /// Failures that say something about the model's health (and count toward its breaker).
    pub fn counts_against_model(&self) -> bool {
        matches!(self.path(), Path::RetryThenNextModel)
    }

    /// Failures after which Bedrock may still bill the request: it was given up while the model
    /// may have been working on it, or an answer arrived that could not be read. Such a request
    /// is charged at its reservation (its worst case), never at zero.
    pub fn may_be_billed(&self) -> bool {
        matches!(self, Self::Timeout(_) | Self::Malformed(_))
    }
}

/// Retry, fallback and breaker settings.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Retries of the same model for transient failures.
    pub retries_per_model: u32,
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    /// From the first failure to the fallback answer, at most this long (seed Property 6).
    pub fallback_within: Duration,
    /// Models tried before the local engine answers.
    pub max_models: usize,
    /// Consecutive failures that open a model's breaker.
    pub circuit_threshold: u32,
    /// How long an open breaker keeps the model out of the routes.
    pub circuit_cooldown: Duration,
    /// How long a throttled model is skipped by low-priority calls.
    pub throttle_window: Duration,
    /// Requests one role call may send, of any outcome.
    pub max_requests: u32,
    /// Requests one role call may be billed for: the first answer, one repair and one other
    /// model. A model that keeps answering out of bounds costs no more than this.
    pub max_billed: u32,
    /// What one role call may be charged, in multiples of its priciest request's worst case.
    pub max_cost_multiple: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            retries_per_model: 2,
            base_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(1),
            fallback_within: Duration::from_secs(5),
            max_models: 3,
            circuit_threshold: 3,
            circuit_cooldown: Duration::from_secs(60),
            throttle_window: Duration::from_secs(30),
            max_requests: 9,
            max_billed: 3,
            max_cost_multiple: 3,
        }
    }
}

/// Full-jitter exponential backoff: uniform in `[0, min(max, base * 2^attempt)]`.
pub fn backoff(policy: &RetryPolicy, attempt: u32, random: &dyn Random) -> Duration {
    let cap = policy
        .base_backoff
        .saturating_mul(1u32 << attempt.min(16))
        .min(policy.max_backoff);
    cap.mul_f64(random.next_f64())
}

/// Whether a throttle window recorded for the model is still open at `now`.
pub fn is_throttled(state: Option<&CircuitState>, now: DateTime<Utc>) -> bool {
    state
        .and_then(|s| s.throttled_until)
        .is_some_and(|until| until > now)
}

pub fn is_open(state: Option<&CircuitState>, now: DateTime<Utc>) -> bool {
    state
        .and_then(|s| s.open_until)
        .is_some_and(|until| until > now)
}

/// The breaker after one more failure: open for the cooldown once the threshold is reached
/// (a half-open trial that fails re-opens it at once).
pub fn after_failure(
    state: Option<CircuitState>,
    model_id: &str,
    now: DateTime<Utc>,
    policy: &RetryPolicy,
) -> CircuitState {
    let mut s = state.unwrap_or(CircuitState {
        model_id: model_id.to_owned(),
        consecutive_failures: 0,
        open_until: None,
        throttled_until: None,
    });
    s.consecutive_failures = s.consecutive_failures.saturating_add(1);
    if s.consecutive_failures >= policy.circuit_threshold {
        let cooldown = chrono::Duration::from_std(policy.circuit_cooldown)
            .unwrap_or(chrono::Duration::minutes(1));
        s.open_until = Some(now + cooldown);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SeededRandom;

    #[test]
    fn breaker_opens_at_threshold_and_closes_after_cooldown() {
        let policy = RetryPolicy::default();
        let t0 = DateTime::<Utc>::UNIX_EPOCH;
        let mut s = None;
        for i in 1..=3 {
            let next = after_failure(s, "m", t0, &policy);
            assert_eq!(next.consecutive_failures, i);
            assert_eq!(is_open(Some(&next), t0), i >= 3);
            s = Some(next);
        }
        assert!(!is_open(s.as_ref(), t0 + chrono::Duration::seconds(61)));
    }

    #[test]
    fn backoff_is_bounded() {
        let policy = RetryPolicy::default();
        let r = SeededRandom::new(1);
        for attempt in 0..40 {
            assert!(backoff(&policy, attempt, &r) <= policy.max_backoff);
        }
    }

    #[test]
    fn paths_follow_the_seed_table() {
        assert_eq!(
            Failure::Throttled(String::new()).path(),
            Path::RetryThenNextModel
        );
        assert_eq!(
            Failure::InputTooLong(String::new()).path(),
            Path::TrimThenLargerModel
        );
        assert_eq!(
            Failure::AccessDenied(String::new()).path(),
            Path::LocalEngine
        );
        assert!(Failure::AccessDenied(String::new()).is_security_event());
        assert_eq!(Failure::Answer(AnswerError::Truncated).path(), Path::Repair);
    }
}
