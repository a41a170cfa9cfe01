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
    /// A window too close to call was extended once, with the test's p-value and effect size.
    EvaluationExtended,
    /// A generation broke a guardrail and was rolled back whatever its score.
    GuardrailBreached,
    /// A canary beat its concurrent control and was promoted to every instance, to bake.
    CanaryPromoted,
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

impl SystemContext {
    /// The running system's state from the metrics it reported for a window: `cpu_usage`,
    /// `memory_usage` (fractions), `active_processes` and `recent_errors` by those names, plus
    /// the window's failed measurements as errors. `None` when it reported none of them and
    /// nothing failed: an event then claims no state it did not see.
    pub fn from_metrics(
        metrics: &std::collections::BTreeMap<super::ids::MetricName, f64>,
        failed_reports: u32,
    ) -> Option<Self> {
        let get = |name: &str| {
            metrics
                .iter()
                .find(|(k, _)| k.as_str() == name)
                .map(|(_, v)| *v)
        };
        let names = [
            "cpu_usage",
            "memory_usage",
            "active_processes",
            "recent_errors",
        ];
        if failed_reports == 0 && names.iter().all(|n| get(n).is_none()) {
            return None;
        }
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let count = |name: &str| get(name).map_or(0, |v| v.max(0.0).round() as u64);
        Some(Self {
            cpu_usage: get("cpu_usage").unwrap_or_default(),
            memory_usage: get("memory_usage").unwrap_or_default(),
            active_processes: count("active_processes"),
            recent_errors: count("recent_errors") + u64::from(failed_reports),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StorageMetadata {
    pub s3_location: String,
    pub size_bytes: u64,
    pub storage_class: String,
}

impl StorageMetadata {
    /// Where and how `event` is stored: `location` is its object's address (`s3://bucket/key`,
    /// or the embedded store's), and the size is that of its stored body, the compact JSON of
    /// the event as committed (without this field, which is filled in when it is read back).
    pub fn of(event: &EvolutionEvent, location: String, storage_class: &str) -> Self {
        let stored = EvolutionEvent {
            storage_metadata: None,
            ..event.clone()
        };
        Self {
            s3_location: location,
            size_bytes: serde_json::to_vec(&stored).map_or(0, |b| b.len() as u64),
            storage_class: storage_class.to_owned(),
        }
    }
}

impl EvolutionEvent {
    /// Records where this event's body is stored (see [`StorageMetadata::of`]), as a store
    /// does on reading it back.
    pub fn locate(&mut self, location: String, storage_class: &str) {
        self.storage_metadata = Some(StorageMetadata::of(self, location, storage_class));
    }
}

/// The seed's `query_evolution_history`: a system's events by id, by type and by time range.
/// Empty fields do not filter; `types` matches any of its types.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventQuery {
    pub id: Option<String>,
    pub types: Vec<EventType>,
    pub since: Option<DateTime<Utc>>,
    /// Exclusive: events strictly before this time.
    pub until: Option<DateTime<Utc>>,
    pub limit: usize,
}

impl EventQuery {
    pub fn matches(&self, event: &EvolutionEvent) -> bool {
        self.id.as_ref().is_none_or(|id| *id == event.id)
            && (self.types.is_empty() || self.types.contains(&event.event_type))
            && self.since.is_none_or(|s| event.timestamp >= s)
            && self.until.is_none_or(|u| event.timestamp < u)
    }
}

impl EventType {
    /// The wire name (`mutation_applied`), as the seed's schema and `--type` spell it.
    pub fn parse(name: &str) -> Option<Self> {
        serde_json::from_value(serde_json::Value::String(name.to_owned())).ok()
    }
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
    /// The trace of the message whose handling recorded this, and that message's id: what
    /// `evolve trace` and a log search go by (docs/architecture.md, "Tracing"). Absent on
    /// records from before tracing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
}
