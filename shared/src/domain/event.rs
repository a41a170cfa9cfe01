//! Evolution events in the seed's schema (`fixtures/seed_evolution_event.json`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::ids::SystemId;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    SystemCreated,
    MutationApplied,
    MutationKept,
    MutationRolledBack,
    EvaluationInconclusive,
    OperatorRollback,
    PlanCreated,
    ConflictResolved,
    BudgetModeChanged,
    /// The tick changed a system's schedule for the budget mode (the cost optimizer's action).
    CostActionApplied,
    /// An operator resumed a paused head (`evolve resume`): who, why it was paused, the note.
    OperatorResume,
    /// An operator changed a system's settings (`evolve settings`): who, and each old and new
    /// value.
    SettingsChanged,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BedrockAnalysis {
    pub model_used: String,
    pub confidence: f64,
    pub reasoning: String,
    pub predicted_impact: f64,
    pub actual_impact: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SystemContext {
    pub cpu_usage: f64,
    pub memory_usage: f64,
    pub active_processes: u64,
    pub recent_errors: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StorageMetadata {
    pub s3_location: String,
    pub size_bytes: u64,
    pub storage_class: String,
}

/// An evolution event. The seed's fields come first and keep their names; our additions are
/// optional and omitted when absent, so the seed fixture round-trips unchanged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvolutionEvent {
    pub id: String,
    pub timestamp: DateTime<Utc>,
    #[serde(rename = "type")]
    pub event_type: EventType,
    pub generation: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fitness_delta: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mutation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bedrock_analysis: Option<BedrockAnalysis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_context: Option<SystemContext>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_metadata: Option<StorageMetadata>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_id: Option<SystemId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}
