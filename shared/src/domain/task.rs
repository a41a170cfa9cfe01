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
