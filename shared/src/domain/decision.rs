//! Decisions: the LLM's `DecisionResult` and the audit record in the seed's Bedrock Decision schema.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::ids::SystemId;
use super::mutation::Mutation;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Recommendation {
    Approve,
    Reject,
    Defer,
    /// An approval held for a human because its risk is above the approval threshold. Only the
    /// decide stage sets it: it is left out of the schema the LLM answers in, and the
    /// validation refuses it from a model.
    #[schemars(skip)]
    PendingApproval,
}

impl Recommendation {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Approve => "APPROVE",
            Self::Reject => "REJECT",
            Self::Defer => "DEFER",
            Self::PendingApproval => "PENDING_APPROVAL",
        }
    }
}

/// What a decision engine (LLM or local) answers for one proposed mutation (seed dataclass).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DecisionResult {
    pub recommendation: Recommendation,
    pub confidence: f64,
    pub risk_assessment: RiskAssessment,
    #[serde(default)]
    pub benefits: Vec<String>,
    #[serde(default)]
    pub drawbacks: Vec<String>,
    #[serde(default)]
    pub mitigation_strategies: Vec<String>,
    pub reasoning: String,
    #[serde(default)]
    pub estimated_impact: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RiskAssessment {
    pub overall_risk: f64,
    pub technical_risk: f64,
    pub business_risk: f64,
    pub operational_risk: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CostAnalysis {
    pub tokens_used: u64,
    /// The seed's float field, derived from `cost_nano_usd` for display; never summed.
    pub cost_usd: f64,
    pub processing_time_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_nano_usd: Option<u64>,
}

/// Who made a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecidedBy {
    /// Risk at or below the auto-approve threshold.
    Policy,
    /// The mutation failed schema validation.
    Validation,
    /// An LLM role (Bedrock or the local engine: see `model_used`).
    Engine,
    /// A human, through an approval.
    Operator,
    /// A pending approval that nobody resolved in time (rejected by the tick).
    Expiry,
}

/// The audit record of one decision, written once (seed "Bedrock Decision" schema plus ours).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionRecord {
    pub decision_id: String,
    pub timestamp: DateTime<Utc>,
    pub mutation_id: String,
    pub model_used: String,
    pub decision: Recommendation,
    pub confidence: f64,
    pub risk_assessment: RiskAssessment,
    pub reasoning: String,
    pub mitigation_strategies: Vec<String>,
    pub estimated_outcomes: BTreeMap<String, String>,
    pub cost_analysis: CostAnalysis,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_id: Option<SystemId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_generation: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mutation: Option<Mutation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<DecidedBy>,
    /// The local `RiskAnalyzer` score that routed this decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_risk: Option<f64>,
    /// Who resolved a pending approval: the caller's AWS identity, or the OS user locally.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approver: Option<String>,
    /// The pending decision this record resolves (records are written once, so a resolution is
    /// a record of its own that points back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolves: Option<String>,
    /// The answer was reused from the response cache (free, no request); `model_used` is the
    /// model that gave it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cache_hit: bool,
    /// The trace and the message that made the decision (docs/architecture.md, "Tracing").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
}
