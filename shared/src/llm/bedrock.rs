//! The Bedrock adapter of [`LanguageModel`]: Converse with structured output, routed by the model
//! router, paid for through the ledger (reserve, then settle), healed per the seed's error table,
//! and backed by the local engine, which answers within five seconds of the first failure when
//! Bedrock cannot (seed Property 6).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_bedrockruntime::Client;
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
mod repair;
mod settings;
mod spend;
mod transport;

use cache::cache_key;
pub use settings::{BedrockSettings, DEFAULT_RESPONSE_CACHE_MINUTES, RoleSettings};
use spend::Spent;
use transport::{classify, raw_answer, request_timeout, usage_of};

/// Less time than this left for a request (by the deadline or the fallback window) and it is not
/// sent: it could not be answered, yet Bedrock might bill it.
const MIN_REQUEST_TIME: Duration = Duration::from_secs(1);

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
    client: Client,
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
        client: Client,
        settings: BedrockSettings,
        ports: BedrockPorts,
        local: impl LanguageModel + 'static,
    ) -> Self {
        Self {
            client,
            settings,
            ports,
            local: Box::new(local),
        }
    }

    /// Runs one role call through routing, healing and the ledger, falling back to the local
    /// engine; returns the answer with what it cost.
    async fn role_call<T, L>(
        &self,
        ctx: &CallContext,
        priority: Priority,
        schema: Value,
        prompt_for: &(dyn Fn(usize) -> Prompt + Sync),
        parse: &(dyn Fn(Value) -> Result<T, AnswerError> + Sync),
        fallback: Fallback<'_, L, T>,
    ) -> Result<LlmAnswer<T>, LlmError>
    where
        T: Send,
        L: std::future::Future<Output = Result<LlmAnswer<T>, LlmError>> + Send,
    {
        let started = self.ports.clock.now();
        let mut spent = Spent::default();
        let outcome = self
            .try_bedrock(ctx, priority, &schema, prompt_for, parse, &mut spent)
            .await;
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

    #[allow(clippy::too_many_lines)]
    async fn try_bedrock<T>(
        &self,
        ctx: &CallContext,
        priority: Priority,
        schema: &Value,
        prompt_for: &(dyn Fn(usize) -> Prompt + Sync),
        parse: &(dyn Fn(Value) -> Result<T, AnswerError> + Sync),
        spent: &mut Spent,
    ) -> Outcome<T> {
        let role = ctx.task.role;
        let clock = &self.ports.clock;
        let checkpoint_key = format!("{}#{}", ctx.envelope_id, role.as_str());

        // A previous attempt paid for an answer and died before committing: parse that one.
        if let Ok(Some(cp)) = self
            .ports
            .control
            .checkpoint(&checkpoint_key, clock.now())
            .await
        {
            if let Some(entry) = self.settings.catalog.get(&cp.model_id) {
                let parsed = serde_json::from_value::<RawAnswer>(cp.answer.clone())
                    .map_err(|e| AnswerError::SchemaMismatch(e.to_string()))
                    .and_then(|raw| validate::extract(&raw, extraction(entry, role)))
                    .and_then(parse);
                if let Ok(value) = parsed {
                    spent.usage = cp.usage;
                    spent.cost_nano = cp.cost_nano_usd;
                    return Outcome::Answered {
                        value,
                        model_id: cp.model_id,
                    };
                }
            }
        }

        let perf = self.ports.control.performance().await.unwrap_or_default();
        let mut policy = self.settings.routing.clone();
        // Models Bedrock throttled recently: low-priority calls skip them without a request.
        let mut throttled = std::collections::BTreeSet::new();
        for entry in self.settings.catalog.usable() {
            if let Ok(state) = self.ports.control.circuit(&entry.id).await {
                if healing::is_open(state.as_ref(), clock.now()) {
                    policy.open_circuits.insert(entry.id.clone());
                }
                if healing::is_throttled(state.as_ref(), clock.now()) {
                    throttled.insert(entry.id.clone());
                }
            }
        }
        let route = router::route(
            &ctx.task,
            &self.settings.catalog,
            &perf,
            ctx.budget_mode,
            &policy,
        );
        if !route.use_bedrock {
            return Outcome::Fallback {
                reason: format!("router: {}", route.reason),
            };
        }

        let retry = &self.settings.retry;
        let settings = self.settings.role(role);
        let mut models: VecDeque<String> = route
            .ranked
            .iter()
            .take(retry.max_models)
            .cloned()
            .collect();
        let mut first_failure: Option<DateTime<Utc>> = None;
        let mut history_limit = self.settings.history_limit;
        let mut repaired = false;
        let mut last_reason = String::from("no model answered");
        let mut attempt_no = 0u32;

        'models: while let Some(model_id) = models.pop_front() {
            let Some(entry) = self.settings.catalog.get(&model_id) else {
                continue;
            };
            let Some(price) = entry.price() else {
                continue;
            };
            let mut retries = 0u32;
            loop {
                let now = clock.now();
                let remaining = window_left(first_failure, retry.fallback_within, now);
                if remaining == Some(Duration::ZERO) {
                    last_reason = format!(
                        "no answer within {:?} of the first failure ({last_reason})",
                        retry.fallback_within
                    );
                    break 'models;
                }
                let prompt = prompt_for(history_limit);
                let estimate = estimate_tokens(&prompt.system)
                    + estimate_tokens(&prompt.user)
                    + estimate_tokens(&schema.to_string());
                let max_tokens = settings.max_tokens.min(entry.max_output_tokens);
                // An identical request answered and validated within the TTL: reuse it, free.
                let cache_key = cache_key(&model_id, entry, &prompt, schema, settings, max_tokens);
                if let Some(value) = self.cached(&cache_key, entry, role, parse).await {
                    spent.cache_hit = true;
                    info!(model = %model_id, role = role.as_str(), "response cache hit");
                    return Outcome::Answered { value, model_id };
                }
                if priority == Priority::Low && throttled.contains(&model_id) {
                    last_reason = format!(
                        "{model_id}: throttled recently; a low-priority call does not wait for it"
                    );
                    continue 'models;
                }
                let worst = worst_case_nano(price, estimate, u64::from(max_tokens));
                let timeout = request_timeout(settings.timeout, ctx.deadline, remaining, now);
                if timeout < MIN_REQUEST_TIME.min(settings.timeout) {
                    last_reason = format!(
                        "{timeout:?} left before the invocation's deadline or the fallback \
                         window ({last_reason})"
                    );
                    break 'models;
                }
                if let Some(reason) = spent.exhausted(retry, worst) {
                    last_reason = format!("{reason}; last failure: {last_reason}");
                    break 'models;
                }
                attempt_no += 1;
                let call_id = derive_id(
                    "bcall",
                    &[
                        &ctx.envelope_id,
                        role.as_str(),
                        &model_id,
                        &attempt_no.to_string(),
                        &self.request_nonce(),
                    ],
                );
                let reservation = Reservation {
                    call_id: call_id.clone(),
                    system_id: ctx.system_id.clone(),
                    model_id: model_id.clone(),
                    amount_nano: worst,
                    at: now,
                    limits: self.limits(ctx.task.critical),
                };
                match self.ports.ledger.reserve(&reservation).await {
                    Ok(ReserveOutcome::Reserved) => {}
                    Ok(ReserveOutcome::Refused {
                        scope,
                        period,
                        committed_nano,
                        limit_nano,
                    }) => {
                        return Outcome::Fallback {
                            reason: format!(
                                "budget: {scope:?} {period:?} budget {limit_nano} nano-USD has {committed_nano} committed"
                            ),
                        };
                    }
                    Err(e) => {
                        return Outcome::Fallback {
                            reason: format!("ledger unavailable: {e}"),
                        };
                    }
                }
                spent.requests += 1;
                let sent = tokio::time::timeout(
                    timeout,
                    self.send(&model_id, entry, &prompt, schema, settings, max_tokens),
                )
                .await;
                let result = match sent {
                    Ok(Ok(output)) => Ok(output),
                    Ok(Err(e)) => Err(classify(&e)),
                    Err(_) => Err(Failure::Timeout(timeout)),
                };
                match result {
                    Ok(output) => {
                        spent.billed += 1;
                        let usage = usage_of(&output);
                        let cost = cost_nano(price, &usage, CacheTtl::FiveMinutes);
                        self.settle(&reservation, cost, usage, spent).await;
                        let raw = raw_answer(&output);
                        self.checkpoint(&checkpoint_key, &model_id, &raw, usage, cost)
                            .await;
                        let parsed = raw
                            .as_ref()
                            .map_err(|e| AnswerError::SchemaMismatch(e.clone()))
                            .and_then(|raw| validate::extract(raw, extraction(entry, role)))
                            .and_then(parse);
                        let elapsed = (clock.now() - now).num_milliseconds().max(0) as u64;
                        match parsed {
                            Ok(value) => {
                                spent.perf.push((model_id.clone(), true, elapsed, false));
                                self.close_circuit(&model_id).await;
                                // Stored only now that it has validated.
                                self.remember(cache_key, &model_id, role, &raw, usage, cost)
                                    .await;
                                return Outcome::Answered { value, model_id };
                            }
                            Err(e) => {
                                spent.perf.push((model_id.clone(), false, elapsed, true));
                                warn!(model = %model_id, error = %e, "unusable answer");
                                last_reason = format!("{model_id}: {e}");
                                first_failure.get_or_insert(now);
                                if !repaired {
                                    repaired = true;
                                    // The repair is bounded like any request: by the
                                    // deadline and by what is left of the fallback window.
                                    let now = clock.now();
                                    let timeout = request_timeout(
                                        settings.timeout,
                                        ctx.deadline,
                                        window_left(first_failure, retry.fallback_within, now),
                                        now,
                                    );
                                    if let Some(value) = self
                                        .repair(
                                            ctx,
                                            &route.ranked,
                                            schema,
                                            &prompt,
                                            &e,
                                            parse,
                                            timeout,
                                            spent,
                                        )
                                        .await
                                    {
                                        return value;
                                    }
                                }
                                if matches!(e, AnswerError::Incoherent(_)) {
                                    // Another model is not asked to approve what this one's
                                    // own numbers or words contradict.
                                    return Outcome::Incoherent {
                                        reason: last_reason,
                                    };
                                }
                                continue 'models;
                            }
                        }
                    }
                    Err(failure) => {
                        self.settle_failed(&reservation, &failure, spent).await;
                        first_failure.get_or_insert(now);
                        spent.perf.push((model_id.clone(), false, 0, false));
                        last_reason = format!("{model_id}: {failure}");
                        if let Failure::AccessDenied(message) = &failure {
                            let event = SecurityEvent::new(
                                "bedrock",
                                "Converse",
                                "AccessDeniedException",
                                message,
                            )
                            .with_resource(&model_id);
                            event.emit();
                            spent.security.push(event);
                        }
                        if failure.counts_against_model() {
                            self.open_circuit_on_failure(&model_id).await;
                        }
                        if matches!(failure, Failure::Throttled(_)) {
                            self.open_throttle_window(&model_id).await;
                            if priority == Priority::Low {
                                // No retry and no backoff: give the quota to the calls that
                                // need it; the next model, or the local engine.
                                throttled.insert(model_id.clone());
                                continue 'models;
                            }
                        }
                        match failure.path() {
                            Path::RetryThenNextModel if retries < retry.retries_per_model => {
                                let wait =
                                    healing::backoff(retry, retries, self.ports.random.as_ref());
                                // Never sleep past the fallback window: the local engine must
                                // answer within it.
                                let left =
                                    window_left(first_failure, retry.fallback_within, clock.now());
                                retries += 1;
                                self.ports
                                    .sleeper
                                    .sleep(left.map_or(wait, |left| wait.min(left)))
                                    .await;
                            }
                            Path::TrimThenLargerModel if history_limit > 0 => {
                                history_limit /= 2;
                            }
                            Path::TrimThenLargerModel => {
                                // Larger context windows first among the models left.
                                let mut rest: Vec<String> = models.drain(..).collect();
                                rest.retain(|m| {
                                    self.settings
                                        .catalog
                                        .get(m)
                                        .is_some_and(|e| e.context_window > entry.context_window)
                                });
                                rest.sort_by_key(|m| {
                                    std::cmp::Reverse(
                                        self.settings
                                            .catalog
                                            .get(m)
                                            .map_or(0, |e| e.context_window),
                                    )
                                });
                                models.extend(rest);
                                continue 'models;
                            }
                            Path::LocalEngine => break 'models,
                            _ => continue 'models,
                        }
                    }
                }
            }
        }
        Outcome::Fallback {
            reason: last_reason,
        }
    }

    /// A fresh value for each request's ledger call id. The id must name one request: a
    /// redelivered envelope that is sent again is billed again, and a call id reused from the
    /// first delivery would make the ledger drop that cost as an already-settled retry (and keep
    /// the new reservation held forever).
    fn request_nonce(&self) -> String {
        format!("{:016x}", self.ports.random.next_u64())
    }
}

/// What is left of the fallback window once a failure has opened it (`None` before any failure).
fn window_left(
    first_failure: Option<DateTime<Utc>>,
    within: Duration,
    now: DateTime<Utc>,
) -> Option<Duration> {
    first_failure.map(|ff| {
        (ff + chrono::Duration::from_std(within).unwrap_or_default() - now)
            .to_std()
            .unwrap_or(Duration::ZERO)
    })
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
            &req.ctx,
            Priority::of(&req.ctx.task, healthy(&req.history)),
            schema_for(Role::Analyze),
            &|limit| prompts::analyze(req, limit),
            &|v| validate::analysis(v),
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
            &req.ctx,
            Priority::of(&req.ctx.task, healthy(&req.history)),
            schema_for(Role::Strategize),
            &|limit| prompts::strategize(req, limit),
            &|v| validate::strategy(v, schema),
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
            &req.ctx,
            Priority::of(&req.ctx.task, true),
            schema_for(Role::Decide),
            &|limit| prompts::decide(req, limit),
            &|v| validate::decision(v, req.local_risk, req.risk_ceiling),
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
            &req.ctx,
            Priority::of(&req.ctx.task, true),
            schema_for(Role::Resolve),
            &|_| prompts::resolve(req),
            &|v| validate::resolution(v),
            Fallback {
                local: self.local.resolve_conflict(req),
                safe: Some(&escalated),
            },
        )
        .await
    }
}
