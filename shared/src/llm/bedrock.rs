//! The Bedrock adapter of [`LanguageModel`]: Converse with structured output, routed by the model
//! router, paid for through the ledger (reserve, then settle), healed per the seed's error table,
//! and backed by the local engine, which answers within five seconds of the first failure when
//! Bedrock cannot (seed Property 6).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tracing::{info, warn};

use super::catalog::{ModelCatalog, ModelEntry, StructuredOutput};
use super::document::{from_document, to_document};
use super::healing::{self, Failure, Path, RetryPolicy};
use super::pricing::{CacheTtl, cost_nano, estimate_tokens, worst_case_nano};
use super::prompts::{self, Prompt};
use super::router::{self, RoutingPolicy, blended_price};
use super::validate::{self, AnswerError, Extraction, RawAnswer, RawContent};
use super::{
    AnalyzeRequest, BudgetCrossing, CallContext, DecideRequest, LanguageModel, LlmAnswer, LlmError,
    ResolveRequest, StrategizeRequest,
};
use crate::clock::{Clock, Random, Sleeper};
use crate::cost::{BudgetLimit, Budgets, LedgerScope, PeriodKey};
use crate::domain::{
    BudgetScope, DecisionResult, EvolutionAnalysis, MutationStrategy, Priority, Recommendation,
    ResolutionAction, ResolutionStrategy, Role, derive_id, healthy,
};
use crate::security::SecurityEvent;
use crate::store::performance::PerformanceSnapshot;
use crate::store::{Checkpoint, ControlState, Usage};
use crate::store::{CostLedger, Reservation, ReserveOutcome, Settlement};

mod batch;
mod cache;
mod circuit;
mod policy;
mod repair;
mod settings;
mod spend;
#[cfg(test)]
mod tests;
mod transport;

use cache::cache_key;
use policy::Call;
pub use settings::{BedrockSettings, DEFAULT_RESPONSE_CACHE_MINUTES, RoleSettings};
use spend::Spent;
pub use transport::{Converse, Reply, Request, SdkConverse};

/// The ports the adapter works through.
#[derive(Debug, Clone)]
pub struct BedrockPorts {
    pub ledger: Arc<dyn CostLedger>,
    pub control: Arc<dyn ControlState>,
    pub clock: Arc<dyn Clock>,
    pub sleeper: Arc<dyn Sleeper>,
    pub random: Arc<dyn Random>,
}

#[derive(Debug)]
pub struct BedrockModel {
    /// Bedrock's Converse API: the SDK client in production, a scripted fake in the policy's
    /// tests.
    transport: Box<dyn Converse>,
    settings: BedrockSettings,
    ports: BedrockPorts,
    /// Answers every role when Bedrock cannot: the local engine, given by the wiring, so this
    /// adapter and the engine share the port and neither names the other.
    local: Box<dyn LanguageModel>,
}

/// How a role call ended on the Bedrock side.
enum Outcome<T> {
    Answered {
        value: T,
        model_id: String,
    },
    Fallback {
        reason: String,
    },
    /// A model's answer contradicted itself and its repair did not fix it: the role's safe
    /// answer (see [`Safe`]) stands instead.
    Incoherent {
        reason: String,
    },
}

/// Turns the local engine's answer into the role's safe answer after an incoherent one (a
/// DEFER, an escalation), with the reason.
type Safe<'a, T> = Option<&'a (dyn Fn(T, &str) -> T + Sync)>;

/// What answers a role call when Bedrock does not: the local engine's answer (a future, run only
/// then), and the role's safe answer after an incoherent one.
struct Fallback<'a, L, T> {
    local: L,
    safe: Safe<'a, T>,
}

impl BedrockModel {
    pub fn new(
        transport: impl Converse + 'static,
        settings: BedrockSettings,
        ports: BedrockPorts,
        local: impl LanguageModel + 'static,
    ) -> Self {
        Self {
            transport: Box::new(transport),
            settings,
            ports,
            local: Box::new(local),
        }
    }

    /// Runs one role call through routing, healing and the ledger, falling back to the local
    /// engine; returns the answer with what it cost.
    async fn role_call<T, L>(
        &self,
        call: Call<'_, T>,
        fallback: Fallback<'_, L, T>,
    ) -> Result<LlmAnswer<T>, LlmError>
    where
        T: Send,
        L: std::future::Future<Output = Result<LlmAnswer<T>, LlmError>> + Send,
    {
        let (ctx, priority) = (call.ctx, call.priority);
        let started = self.ports.clock.now();
        let mut spent = Spent::default();
        let outcome = self.try_bedrock(&call, &mut spent).await;
        self.record_performance(ctx.task.role, &spent.perf).await;
        let latency_ms = (self.ports.clock.now() - started).num_milliseconds().max(0) as u64;
        let mut answer = match outcome {
            Outcome::Answered { value, model_id } => LlmAnswer {
                value,
                model_id,
                usage: spent.usage,
                cost_nano_usd: spent.cost_nano,
                latency_ms,
                bedrock_requests: spent.requests,
                fallback: None,
                budget_crossings: Vec::new(),
                security_events: Vec::new(),
                cache_hit: false,
            },
            Outcome::Fallback { reason } => {
                self.fall_back(ctx, priority, reason, fallback.local, &spent, latency_ms)
                    .await?
            }
            Outcome::Incoherent { reason } => {
                let reason = format!("incoherent answer: {reason}");
                warn!(role = ctx.task.role.as_str(), %reason, "the role's safe answer stands");
                let mut a = self
                    .fall_back(
                        ctx,
                        priority,
                        reason.clone(),
                        fallback.local,
                        &spent,
                        latency_ms,
                    )
                    .await?;
                if let Some(safe) = fallback.safe {
                    a.value = safe(a.value, &reason);
                }
                a
            }
        };
        answer.budget_crossings = spent.crossings;
        answer.security_events = spent.security;
        answer.cache_hit = spent.cache_hit;
        Ok(answer)
    }

    /// The local engine's answer, carrying what the Bedrock attempts cost.
    async fn fall_back<T, L>(
        &self,
        ctx: &CallContext,
        priority: Priority,
        reason: String,
        local: L,
        spent: &Spent,
        latency_ms: u64,
    ) -> Result<LlmAnswer<T>, LlmError>
    where
        L: std::future::Future<Output = Result<LlmAnswer<T>, LlmError>> + Send,
    {
        info!(
            role = ctx.task.role.as_str(),
            priority = priority.as_str(),
            %reason,
            "local engine answers"
        );
        let mut a = local.await?;
        a.fallback = Some(reason);
        a.usage = spent.usage;
        a.cost_nano_usd = spent.cost_nano;
        a.bedrock_requests = spent.requests;
        a.latency_ms = latency_ms;
        Ok(a)
    }
}

fn extraction(entry: &ModelEntry, role: Role) -> Extraction {
    match entry.structured_output {
        StructuredOutput::JsonSchema => Extraction::JsonText,
        StructuredOutput::ToolUse => Extraction::Tool(prompts::tool_name(role)),
        StructuredOutput::Text => Extraction::EmbeddedJson,
    }
}

/// A decision's safe answer after an incoherent one: DEFER, saying why (never an APPROVE).
pub(crate) fn deferred(mut d: DecisionResult, reason: &str) -> DecisionResult {
    d.recommendation = Recommendation::Defer;
    d.reasoning = format!("deferred: the model's {reason}");
    d
}

/// A conflict resolution's safe answer after an incoherent one: a human looks at it.
fn escalated(mut r: ResolutionStrategy, reason: &str) -> ResolutionStrategy {
    r.action = ResolutionAction::Escalate;
    r.retry_after_seconds = 0;
    r.reasoning = format!("escalated: the model's {reason}");
    r
}

/// The JSON schema a role's answer must match, generated from its Rust type.
pub fn schema_for(role: Role) -> Value {
    let generator = schemars::generate::SchemaSettings::draft07()
        .with(|s| s.inline_subschemas = true)
        .into_generator();
    let schema = match role {
        Role::Analyze => generator.into_root_schema_for::<EvolutionAnalysis>(),
        Role::Strategize => generator.into_root_schema_for::<MutationStrategy>(),
        Role::Decide => generator.into_root_schema_for::<DecisionResult>(),
        Role::Resolve => generator.into_root_schema_for::<ResolutionStrategy>(),
    };
    let mut value = schema.to_value();
    if let Some(obj) = value.as_object_mut() {
        obj.remove("$schema");
    }
    value
}

#[async_trait::async_trait]
impl LanguageModel for BedrockModel {
    async fn analyze(
        &self,
        req: &AnalyzeRequest,
    ) -> Result<LlmAnswer<EvolutionAnalysis>, LlmError> {
        self.role_call(
            Call {
                ctx: &req.ctx,
                priority: Priority::of(&req.ctx.task, healthy(&req.history)),
                schema: &schema_for(Role::Analyze),
                prompt_for: &|limit| prompts::analyze(req, limit),
                parse: &|v| validate::analysis(v),
            },
            Fallback {
                local: self.local.analyze(req),
                safe: None,
            },
        )
        .await
    }

    async fn strategize(
        &self,
        req: &StrategizeRequest,
    ) -> Result<LlmAnswer<MutationStrategy>, LlmError> {
        let schema = &req.dna.schema;
        self.role_call(
            Call {
                ctx: &req.ctx,
                priority: Priority::of(&req.ctx.task, healthy(&req.history)),
                schema: &schema_for(Role::Strategize),
                prompt_for: &|limit| prompts::strategize(req, limit),
                parse: &|v| validate::strategy(v, schema),
            },
            Fallback {
                local: self.local.strategize(req),
                safe: None,
            },
        )
        .await
    }

    /// Decides one proposal. While Bedrock throttles (a throttle window is open on some model)
    /// and the request carries the plan's later steps, all of them are decided in one request
    /// instead (see [`BedrockModel::decide_batch`]).
    async fn decide(&self, req: &DecideRequest) -> Result<LlmAnswer<DecisionResult>, LlmError> {
        if !req.batch.is_empty()
            && self.settings.response_cache_ttl > chrono::Duration::zero()
            && self.throttling().await
        {
            return self.decide_batch(req).await;
        }
        self.role_call(
            Call {
                ctx: &req.ctx,
                priority: Priority::of(&req.ctx.task, true),
                schema: &schema_for(Role::Decide),
                prompt_for: &|limit| prompts::decide(req, limit),
                parse: &|v| validate::decision(v, req.local_risk, req.risk_ceiling),
            },
            Fallback {
                local: self.local.decide(req),
                safe: Some(&deferred),
            },
        )
        .await
    }

    async fn resolve_conflict(
        &self,
        req: &ResolveRequest,
    ) -> Result<LlmAnswer<ResolutionStrategy>, LlmError> {
        self.role_call(
            Call {
                ctx: &req.ctx,
                priority: Priority::of(&req.ctx.task, true),
                schema: &schema_for(Role::Resolve),
                prompt_for: &|_| prompts::resolve(req),
                parse: &|v| validate::resolution(v),
            },
            Fallback {
                local: self.local.resolve_conflict(req),
                safe: Some(&escalated),
            },
        )
        .await
    }
}
