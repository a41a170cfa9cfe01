//! Fitness: what the running system reports about a generation. Higher is better.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::ids::{MetricName, SystemId};

/// One fitness measurement: a score and named metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FitnessScore {
    pub score: f64,
    #[serde(default)]
    pub metrics: BTreeMap<MetricName, f64>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FitnessError {
    #[error("score is not a finite number")]
    NonFiniteScore,
    #[error("metric {0} is not a finite number")]
    NonFiniteMetric(MetricName),
}

impl FitnessScore {
    pub fn validate(&self) -> Result<(), FitnessError> {
        if !self.score.is_finite() {
            return Err(FitnessError::NonFiniteScore);
        }
        if let Some((name, _)) = self.metrics.iter().find(|(_, v)| !v.is_finite()) {
            return Err(FitnessError::NonFiniteMetric(name.clone()));
        }
        Ok(())
    }
}

/// A stored fitness report. `score` is `None` when the evaluation failed (`error` says why).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FitnessSample {
    pub id: String,
    pub system_id: SystemId,
    pub generation: u64,
    pub checksum: String,
    pub score: Option<f64>,
    #[serde(default)]
    pub metrics: BTreeMap<MetricName, f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cohort: Option<super::Cohort>,
    pub received_at: DateTime<Utc>,
}

impl FitnessSample {
    /// A sample counts toward an evaluation when it is for that generation and checksum and
    /// carries a finite score.
    pub fn is_valid_for(&self, generation: u64, checksum: &str) -> bool {
        self.generation == generation
            && self.checksum == checksum
            && self.error.is_none()
            && self.score.is_some_and(f64::is_finite)
    }
}

/// One closed evaluation, for history views and the engine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub generation: u64,
    /// Mean valid score, when there was one.
    pub fitness: Option<f64>,
    pub outcome: EvaluationOutcome,
    /// Fitness of the generation it was compared against.
    pub baseline_fitness: Option<f64>,
    /// The values this generation's mutation set (empty for baselines).
    #[serde(default)]
    pub changes: Vec<super::mutation::GeneChange>,
    #[serde(default)]
    pub predicted_impact: f64,
    /// The plan step that proposed this generation's mutation, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_step: Option<super::mutation::PlanStepRef>,
    /// Reports received for the generation, and how many of them were failed measurements
    /// (an `error` and no score): a window that closed on failures reads differently from one
    /// that heard nothing.
    #[serde(default)]
    pub reports: u32,
    #[serde(default)]
    pub failed: u32,
    /// The mean of each metric the running system reported for this generation (valid
    /// reports only).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub metrics: std::collections::BTreeMap<MetricName, f64>,
    /// The guardrails the window's metrics broke (a breach rolls back whatever the score).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub breaches: Vec<super::Breach>,
    /// The significance test behind the verdict, when the window was judged by one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub significance: Option<super::judging::Significance>,
    /// The canary's comparison with its concurrent control, when the generation ran as one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<super::CanaryVerdict>,
    pub closed_at: DateTime<Utc>,
}

/// What the Rollback Manager did when a window closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EvaluationOutcome {
    /// Measured and kept.
    Keep,
    /// Measured worse than its parent: rolled back.
    Rollback,
    /// Too few valid samples by the window's end: rolled back by default.
    Inconclusive,
}
