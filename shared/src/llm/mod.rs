//! The `LanguageModel` port: the four LLM roles, each returning its typed result, the usage and
//! the model that answered. Bedrock and the local engine both implement it.

#[cfg(feature = "bedrock")]
pub mod bedrock;
pub mod catalog;
pub mod context;
pub mod document;
pub mod healing;
pub mod pricing;
pub mod prompts;
pub mod router;
pub mod validate;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::{
    BudgetMode, DecisionResult, EvolutionAnalysis, GeneSchema, Genes, HistoryEntry, Mutation,
    MutationStrategy, ResolutionStrategy, Role, SystemConflict, SystemId, TaskContext,
};
use crate::store::Usage;

/// What every call carries besides its inputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallContext {
    pub system_id: SystemId,
    /// The envelope that caused the call: the key for checkpoints and call ids.
    pub envelope_id: String,
    pub task: TaskContext,
    pub budget_mode: BudgetMode,
    /// When the answer must be in (the Lambda deadline or the role budget).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<DateTime<Utc>>,
}

impl CallContext {
    pub fn role(&self) -> Role {
        self.task.role
    }
}

/// The DNA as the roles see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DnaView {
    pub system_id: SystemId,
    pub generation: u64,
    pub schema: GeneSchema,
    pub genes: Genes,
    pub stable_fitness: Option<f64>,
    /// The DNA file's requirements and constraints (the seed's decision criteria).
    #[serde(default)]
    pub constraints: crate::domain::Constraints,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnalyzeRequest {
    pub ctx: CallContext,
    pub dna: DnaView,
    pub history: Vec<HistoryEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StrategizeRequest {
    pub ctx: CallContext,
    pub dna: DnaView,
    pub history: Vec<HistoryEntry>,
    pub analysis: EvolutionAnalysis,
    /// The plan-length cap: steps past it are dropped.
    pub max_steps: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecideRequest {
    pub ctx: CallContext,
    pub dna: DnaView,
    pub history: Vec<HistoryEntry>,
    pub mutation: Mutation,
    /// The local `RiskAnalyzer` score.
    pub local_risk: f64,
    /// Above this risk an answer may only be REJECT or DEFER.
    pub risk_ceiling: f64,
    /// How many times this proposal was deferred already. Part of the prompt when not zero,
    /// so that asking again after a DEFER is a new question (never the cached DEFER).
    #[serde(default)]
    pub deferrals: u32,
    /// The plan's later steps, for a batch decision while Bedrock throttles (see
    /// `bedrock::BedrockModel::decide`); empty otherwise. Engines that do not batch ignore it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub batch: Vec<PendingProposal>,
}

/// A later step of the same plan, with its local risk against the same DNA.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingProposal {
    pub mutation: Mutation,
    pub local_risk: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResolveRequest {
    pub ctx: CallContext,
    pub dna: DnaView,
    pub conflict: SystemConflict,
}

/// A role's answer with what it cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlmAnswer<T> {
    pub value: T,
    pub model_id: String,
    pub usage: Usage,
    pub cost_nano_usd: u64,
    pub latency_ms: u64,
    /// HTTP requests sent to Bedrock, retries included (0 for the local engine).
    pub bedrock_requests: u32,
    /// Set when the local engine answered in place of the routed model, with the reason.
    pub fallback: Option<String>,
    /// Budget thresholds this call's spend crossed, to be reported to cost-guard at once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub budget_crossings: Vec<BudgetCrossing>,
    /// Authorization failures met on the way (Bedrock `AccessDeniedException`): the stage raises
    /// a critical security alert for each, with its outbox.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_events: Vec<crate::security::SecurityEvent>,
    /// The answer came from the response cache: no request was sent and nothing was paid.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cache_hit: bool,
}

/// A budget threshold crossed by a settled call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetCrossing {
    pub scope: crate::domain::BudgetScope,
    pub period: crate::domain::BudgetPeriod,
    pub percent: u32,
}

impl<T> LlmAnswer<T> {
    /// The same answer with its value mapped.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> LlmAnswer<U> {
        LlmAnswer {
            value: f(self.value),
            model_id: self.model_id,
            usage: self.usage,
            cost_nano_usd: self.cost_nano_usd,
            latency_ms: self.latency_ms,
            bedrock_requests: self.bedrock_requests,
            fallback: self.fallback,
            budget_crossings: self.budget_crossings,
            security_events: self.security_events,
            cache_hit: self.cache_hit,
        }
    }

    /// An answer from the local engine: free and immediate.
    pub fn local(value: T, model_id: &str) -> Self {
        Self {
            value,
            model_id: model_id.to_owned(),
            usage: Usage::default(),
            cost_nano_usd: 0,
            latency_ms: 0,
            bedrock_requests: 0,
            fallback: None,
            budget_crossings: Vec::new(),
            security_events: Vec::new(),
            cache_hit: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LlmError {
    /// Worth another delivery: every model and the fallback were unavailable for now.
    #[error("language model unavailable: {0}")]
    Unavailable(String),
    /// The request cannot succeed as it is.
    #[error("language model request invalid: {0}")]
    Invalid(String),
}

impl LlmError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

#[async_trait]
pub trait LanguageModel: Send + Sync + std::fmt::Debug {
    async fn analyze(&self, req: &AnalyzeRequest)
    -> Result<LlmAnswer<EvolutionAnalysis>, LlmError>;
    async fn strategize(
        &self,
        req: &StrategizeRequest,
    ) -> Result<LlmAnswer<MutationStrategy>, LlmError>;
    async fn decide(&self, req: &DecideRequest) -> Result<LlmAnswer<DecisionResult>, LlmError>;
    async fn resolve_conflict(
        &self,
        req: &ResolveRequest,
    ) -> Result<LlmAnswer<ResolutionStrategy>, LlmError>;
}
