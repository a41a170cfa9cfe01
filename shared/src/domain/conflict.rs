//! System conflicts and the fixed set of executable resolutions.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConflictKind {
    /// Several consecutive rollbacks: the search keeps breaking the system.
    RollbackStreak,
    /// Fitness reports for the current generation carry another checksum: the running system
    /// does not run the DNA we think it does.
    ChecksumMismatch,
    /// The baseline could not be measured.
    BaselineUnmeasured,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

/// A conflict to resolve (seed `SystemConflict`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SystemConflict {
    #[serde(rename = "type")]
    pub kind: ConflictKind,
    pub description: String,
    pub affected_components: Vec<String>,
    pub severity: Severity,
    pub current_impact: String,
    #[serde(default)]
    pub available_resources: Vec<String>,
    #[serde(default)]
    pub active_processes: u64,
    #[serde(default)]
    pub recent_changes: Vec<String>,
}

/// The executable actions a resolution may pick: nothing outside this set can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ResolutionAction {
    Pause,
    RollbackToLastStable,
    RetryLater,
    Escalate,
    Resume,
}

/// A conflict resolution (seed `ResolutionStrategy`): one action plus the reasoning around it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ResolutionStrategy {
    pub action: ResolutionAction,
    /// For `retry_later`: how long to wait.
    #[serde(default)]
    pub retry_after_seconds: u32,
    #[serde(default)]
    pub immediate_actions: Vec<String>,
    #[serde(default)]
    pub root_cause_analysis: String,
    #[serde(default)]
    pub prevention_measures: Vec<String>,
    #[serde(default)]
    pub risk_assessment: f64,
    #[serde(default)]
    pub success_metrics: Vec<String>,
    pub reasoning: String,
}
