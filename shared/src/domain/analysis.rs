//! The Evolution Advisor's outputs: an analysis, and a strategy executed as a plan.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::gene::GeneValue;
use super::ids::SystemId;
use super::mutation::GeneChange;

/// SWOT-style assessment of the system's state (seed `EvolutionAnalysis`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct EvolutionAnalysis {
    pub current_state_assessment: String,
    pub strengths: Vec<String>,
    pub weaknesses: Vec<String>,
    pub opportunities: Vec<String>,
    pub threats: Vec<String>,
    /// Gene names (or areas) to concentrate on, most promising first.
    pub recommended_focus_areas: Vec<String>,
    pub confidence_score: f64,
    pub reasoning: String,
}

/// One step of a strategy (seed `StrategicMutation`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct StrategicMutation {
    pub id: String,
    pub changes: Vec<GeneChange>,
    pub rationale: String,
    #[serde(default)]
    pub predicted_impact: f64,
    /// For a contingency: the id of the primary step it replaces when that step is rolled back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contingency_for: Option<String>,
}

/// A multi-generation plan (seed `MutationStrategy`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct MutationStrategy {
    pub primary_mutations: Vec<StrategicMutation>,
    #[serde(default)]
    pub contingency_mutations: Vec<StrategicMutation>,
    /// Primary step ids in the order to try them; steps not named run after, in list order.
    #[serde(default)]
    pub execution_order: Vec<String>,
    /// Named thresholds. Recognised keys: `min_fitness` (re-plan when the stable fitness falls
    /// below it) and `max_prediction_error` (re-plan when a kept step's actual impact misses its
    /// prediction by more).
    #[serde(default)]
    pub success_criteria: BTreeMap<String, f64>,
    #[serde(default)]
    pub risk_mitigation: Vec<String>,
    #[serde(default)]
    pub expected_outcomes: BTreeMap<String, String>,
    #[serde(default)]
    pub timeline_estimate: String,
}

/// A stored analysis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnalysisRecord {
    pub analysis_id: String,
    pub system_id: SystemId,
    pub generation: u64,
    pub analysis: EvolutionAnalysis,
    pub model_used: String,
    pub created_at: DateTime<Utc>,
    /// The answer was reused from the response cache (free, no request); `model_used` is the
    /// model that gave it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cache_hit: bool,
}

/// A validated, ordered step of a stored plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanStep {
    pub id: String,
    pub changes: Vec<GeneChange>,
    pub rationale: String,
    pub predicted_impact: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contingency: Option<Box<PlanStep>>,
}

/// A strategy after validation against the genes, ready for the cursor to walk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub plan_id: String,
    pub system_id: SystemId,
    pub analysis_id: String,
    /// The head generation the plan was made against.
    pub base_generation: u64,
    pub steps: Vec<PlanStep>,
    /// Steps the validation dropped, with the reason.
    #[serde(default)]
    pub dropped: Vec<(String, String)>,
    /// True when the strategy had more steps than the cap allows.
    #[serde(default)]
    pub truncated: bool,
    pub success_criteria: BTreeMap<String, f64>,
    pub model_used: String,
    pub created_at: DateTime<Utc>,
    /// The answer was reused from the response cache (free, no request); `model_used` is the
    /// model that gave it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cache_hit: bool,
}

/// Why the plan cursor asked for a new plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "trigger", rename_all = "snake_case")]
pub enum ReplanReason {
    NoPlan,
    Exhausted,
    RolledBack { step: u32 },
    Diverged { why: String },
    Stalled,
}

/// What the plan cursor is waiting for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum InFlight {
    /// Nothing: the next cycle may act.
    Idle,
    /// An analysis was requested; the plan made from it will adopt the cursor.
    AwaitingPlan {
        analysis_id: String,
        since: DateTime<Utc>,
    },
    /// A step was proposed and its outcome is awaited.
    Step {
        step: u32,
        contingency: bool,
        since: DateTime<Utc>,
    },
}

/// The plan cursor, owned by the analyze stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanCursor {
    pub system_id: SystemId,
    pub plan_id: Option<String>,
    /// Next primary step to propose.
    pub next_step: u32,
    pub in_flight: InFlight,
    /// The head generation the cursor expects; another value means reality moved under the plan.
    pub expected_generation: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_replan: Option<ReplanReason>,
    /// Optimistic-lock version, incremented on every write.
    pub version: u64,
}

impl PlanCursor {
    pub fn new(system_id: SystemId, generation: u64) -> Self {
        Self {
            system_id,
            plan_id: None,
            next_step: 0,
            in_flight: InFlight::Idle,
            expected_generation: generation,
            last_replan: None,
            version: 0,
        }
    }
}

/// Formats a gene change list for humans: `cache=512, prefetch=true`.
pub fn describe_changes(changes: &[GeneChange]) -> String {
    changes
        .iter()
        .map(|c| match &c.value {
            GeneValue::Choice(s) => format!("{}={s}", c.gene),
            v => format!("{}={v}", c.gene),
        })
        .collect::<Vec<_>>()
        .join(", ")
}
