//! Task context: what the model router knows about a call (seed `TaskContext`).

use serde::{Deserialize, Serialize};

/// The four LLM roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Analyze,
    Strategize,
    Decide,
    Resolve,
}

impl Role {
    pub const ALL: [Role; 4] = [Self::Analyze, Self::Strategize, Self::Decide, Self::Resolve];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Analyze => "analyze",
            Self::Strategize => "strategize",
            Self::Decide => "decide",
            Self::Resolve => "resolve",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Complexity {
    Low,
    Medium,
    High,
}

/// Everything the router needs to pick a model for one call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskContext {
    #[serde(rename = "type")]
    pub role: Role,
    pub complexity: Complexity,
    pub estimated_tokens: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_latency_ms: Option<u32>,
    /// 0..1
    pub accuracy_requirements: f64,
    /// 0..1
    pub cost_sensitivity: f64,
    /// High-risk decisions and conflict resolution: these keep the best capable model in Economy.
    #[serde(default)]
    pub critical: bool,
}

/// How much a call may ask of Bedrock when Bedrock is short of capacity (throttling). Derived,
/// never configured: from the role, the task's criticality and the system's health.
///
/// - `Critical`: high-risk decisions (`TaskContext::critical`) and conflict resolution. A wrong
///   or missing answer here costs more than waiting: full retries with backoff, every model.
/// - `Normal`: other decisions, and analysis or strategy for a system that is struggling (a
///   recent evaluation was not kept). Full healing, like critical calls.
/// - `Low`: analysis and strategy of a healthy system. The local engine plans well enough for a
///   system that is doing fine, so under throttling these calls give way first: no retry and no
///   backoff on a throttled model, models whose throttle window is open are skipped without a
///   request, and when no model is left the local engine answers at once. That leaves the
///   quota to the calls above.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    Low,
    Normal,
    Critical,
}

impl Priority {
    /// The priority of a call for `task`, for a system that is `healthy` or not (see
    /// [`healthy`]).
    pub fn of(task: &TaskContext, healthy: bool) -> Self {
        match task.role {
            _ if task.critical => Self::Critical,
            Role::Resolve => Self::Critical,
            Role::Analyze | Role::Strategize if healthy => Self::Low,
            Role::Decide | Role::Analyze | Role::Strategize => Self::Normal,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::Normal => "normal",
            Self::Critical => "critical",
        }
    }
}

/// Closed evaluations [`healthy`] looks back over.
pub const HEALTH_WINDOW: usize = 3;

/// A system is healthy when none of its last [`HEALTH_WINDOW`] closed evaluations (oldest
/// first, as the history lists them) was rolled back or inconclusive.
pub fn healthy(history: &[super::HistoryEntry]) -> bool {
    history
        .iter()
        .rev()
        .take(HEALTH_WINDOW)
        .all(|h| h.outcome == super::EvaluationOutcome::Keep)
}

#[cfg(test)]
mod priority_tests {
    use super::*;

    fn task(role: Role, critical: bool) -> TaskContext {
        TaskContext {
            role,
            complexity: Complexity::Medium,
            estimated_tokens: 1_000,
            max_latency_ms: None,
            accuracy_requirements: 0.5,
            cost_sensitivity: 0.5,
            critical,
        }
    }

    #[test]
    fn priority_follows_role_criticality_and_health() {
        use Priority::{Critical, Low, Normal};
        let cases = [
            (Role::Analyze, false, true, Low),
            (Role::Strategize, false, true, Low),
            (Role::Analyze, false, false, Normal),
            (Role::Strategize, false, false, Normal),
            (Role::Decide, false, true, Normal),
            (Role::Decide, true, true, Critical),
            (Role::Resolve, false, true, Critical),
            (Role::Analyze, true, true, Critical),
        ];
        for (role, critical, healthy, expected) in cases {
            assert_eq!(
                Priority::of(&task(role, critical), healthy),
                expected,
                "{role:?} critical={critical} healthy={healthy}"
            );
        }
    }
}
