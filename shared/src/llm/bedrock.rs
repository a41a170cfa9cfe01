//! The Bedrock adapter of [`LanguageModel`]: Converse with structured output, routed by the model
//! router, paid for through the ledger (reserve, then settle), healed per the seed's error table,
//! and backed by the local engine, which answers within five seconds of the first failure when
//! Bedrock cannot (seed Property 6).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_bedrockruntime::Client;
use aws_sdk_bedrockruntime::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_bedrockruntime::operation::converse::{ConverseError, ConverseOutput};
use aws_sdk_bedrockruntime::types::{
    ContentBlock, ConversationRole, ConverseOutput as Output, InferenceConfiguration,
    JsonSchemaDefinition, Message, OutputConfig, OutputFormat, OutputFormatStructure,
    OutputFormatType, SpecificToolChoice, SystemContentBlock, Tool, ToolChoice, ToolConfiguration,
    ToolInputSchema, ToolSpecification,
};
use chrono::{DateTime, Utc};
use serde_json::Value;
use tracing::{info, warn};

use super::catalog::{ModelCatalog, ModelEntry, StructuredOutput};
use super::document::{from_document, to_document};
use super::healing::{self, Failure, Path, RetryPolicy};
use super::performance::PerformanceSnapshot;
use super::pricing::{CacheTtl, cost_nano, estimate_tokens, worst_case_nano};
use super::prompts::{self, Prompt};
use super::router::{self, RoutingPolicy, blended_price};
use super::validate::{self, AnswerError, Extraction, RawAnswer, RawContent};
use super::{
    AnalyzeRequest, BudgetCrossing, CallContext, DecideRequest, LanguageModel, LlmAnswer, LlmError,
    ResolveRequest, StrategizeRequest,
};
use crate::clock::{Clock, Random, Sleeper};
use crate::cost::{
    BudgetLimit, Budgets, CostLedger, LedgerScope, PeriodKey, Reservation, ReserveOutcome,
    Settlement,
};
use crate::domain::{
    BudgetScope, DecisionResult, EvolutionAnalysis, MutationStrategy, Priority, ResolutionStrategy,
    Role, derive_id, healthy,
};
use crate::engine::LocalEngine;
use crate::security::SecurityEvent;
use crate::store::{Checkpoint, ControlState, Usage};

/// The response cache's default time to live. Long enough to absorb the repeats of one burst
/// (a redelivered proposal, a deferred one coming back, systems that share a prompt), short
/// enough that an answer never outlives the situation it was given for by much: history and
/// fitness change the prompt, and then the key, anyway.
pub const DEFAULT_RESPONSE_CACHE_MINUTES: i64 = 15;

/// Sampling and size settings of one role.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoleSettings {
    pub temperature: f32,
    pub max_tokens: u32,
    /// Longest one request may take.
    pub timeout: Duration,
}

/// Everything the adapter is configured with.
#[derive(Debug, Clone)]
pub struct BedrockSettings {
    pub catalog: ModelCatalog,
    pub routing: RoutingPolicy,
    pub roles: BTreeMap<Role, RoleSettings>,
    pub retry: RetryPolicy,
    pub budgets: Budgets,
    /// Share of each budget (percent) only critical calls may spend.
    pub critical_reserve_percent: u32,
    /// Closed evaluations in a prompt before any trimming.
    pub history_limit: usize,
    /// How long a raw answer is kept for retries after a crash.
    pub checkpoint_ttl: chrono::Duration,
    /// How long a validated answer is reused for an identical request (same model, role and
    /// request); zero turns the response cache off.
    pub response_cache_ttl: chrono::Duration,
}

impl BedrockSettings {
    /// The seed's temperatures and token limits per role.
    pub fn new(catalog: ModelCatalog, budgets: Budgets) -> Self {
        let role = |temperature, max_tokens, secs| RoleSettings {
            temperature,
            max_tokens,
            timeout: Duration::from_secs(secs),
        };
        Self {
            catalog,
            routing: RoutingPolicy::default(),
            roles: [
                (Role::Analyze, role(0.3, 2_000, 30)),
                (Role::Strategize, role(0.4, 3_000, 45)),
                (Role::Decide, role(0.2, 2_000, 20)),
                (Role::Resolve, role(0.3, 2_500, 20)),
            ]
            .into(),
            retry: RetryPolicy::default(),
            budgets,
            critical_reserve_percent: 10,
            history_limit: 30,
            checkpoint_ttl: chrono::Duration::hours(24),
            response_cache_ttl: chrono::Duration::minutes(DEFAULT_RESPONSE_CACHE_MINUTES),
        }
    }

    fn role(&self, role: Role) -> RoleSettings {
        self.roles.get(&role).copied().unwrap_or(RoleSettings {
            temperature: 0.3,
            max_tokens: 2_000,
            timeout: Duration::from_secs(30),
        })
    }
}

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
    local: LocalEngine,
}

/// What one role call cost before it was answered, whoever answered it.
#[derive(Debug, Default)]
struct Spent {
    requests: u32,
    cost_nano: u64,
    usage: Usage,
    crossings: Vec<BudgetCrossing>,
    perf: Vec<(String, bool, u64, bool)>,
    security: Vec<SecurityEvent>,
    cache_hit: bool,
}

/// How a role call ended on the Bedrock side.
enum Outcome<T> {
    Answered { value: T, model_id: String },
    Fallback { reason: String },
}

impl BedrockModel {
    pub fn new(
        client: Client,
        settings: BedrockSettings,
        ports: BedrockPorts,
        local: LocalEngine,
    ) -> Self {
        Self {
            client,
            settings,
            ports,
            local,
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
        local: L,
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
                a
            }
        };
        answer.budget_crossings = spent.crossings;
        answer.security_events = spent.security;
        answer.cache_hit = spent.cache_hit;
        Ok(answer)
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
                let timeout = request_timeout(settings.timeout, ctx.deadline, remaining, now);
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
                                continue 'models;
                            }
                        }
                    }
                    Err(failure) => {
                        self.settle(&reservation, 0, Usage::default(), spent).await;
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

    /// One repair attempt on the cheapest capable model: the same data, the validation error,
    /// and the demand for a valid structured answer. Its cost counts like any call's.
    #[allow(clippy::too_many_arguments)]
    async fn repair<T>(
        &self,
        ctx: &CallContext,
        ranked: &[String],
        schema: &Value,
        prompt: &Prompt,
        error: &AnswerError,
        parse: &(dyn Fn(Value) -> Result<T, AnswerError> + Sync),
        timeout: Duration,
        spent: &mut Spent,
    ) -> Option<Outcome<T>> {
        let cheapest = ranked
            .iter()
            .filter_map(|id| self.settings.catalog.get(id))
            .filter(|e| e.structured_output != StructuredOutput::Text)
            .min_by_key(|e| (e.price().map_or(u64::MAX, blended_price), e.id.clone()))?;
        let price = cheapest.price()?;
        let settings = self.settings.role(ctx.task.role);
        let repair_prompt = Prompt {
            system: format!(
                "{}\n\nA previous answer to this request was rejected: {error}. Answer again, \
                 strictly through the requested structured output.",
                prompt.system
            ),
            ..prompt.clone()
        };
        let max_tokens = settings.max_tokens.min(cheapest.max_output_tokens);
        let now = self.ports.clock.now();
        let reservation = Reservation {
            call_id: derive_id(
                "bcall",
                &[
                    &ctx.envelope_id,
                    ctx.task.role.as_str(),
                    "repair",
                    &self.request_nonce(),
                ],
            ),
            system_id: ctx.system_id.clone(),
            model_id: cheapest.id.clone(),
            amount_nano: worst_case_nano(
                price,
                estimate_tokens(&repair_prompt.system) + estimate_tokens(&repair_prompt.user),
                u64::from(max_tokens),
            ),
            at: now,
            limits: self.limits(ctx.task.critical),
        };
        if !matches!(
            self.ports.ledger.reserve(&reservation).await,
            Ok(ReserveOutcome::Reserved)
        ) {
            return None;
        }
        spent.requests += 1;
        let sent = tokio::time::timeout(
            timeout,
            self.send(
                &cheapest.id,
                cheapest,
                &repair_prompt,
                schema,
                settings,
                max_tokens,
            ),
        )
        .await;
        let Ok(Ok(output)) = sent else {
            self.settle(&reservation, 0, Usage::default(), spent).await;
            return None;
        };
        let usage = usage_of(&output);
        let cost = cost_nano(price, &usage, CacheTtl::FiveMinutes);
        self.settle(&reservation, cost, usage, spent).await;
        let value = raw_answer(&output)
            .ok()
            .and_then(|raw| validate::extract(&raw, extraction(cheapest, ctx.task.role)).ok())
            .and_then(|v| parse(v).ok())?;
        Some(Outcome::Answered {
            value,
            model_id: cheapest.id.clone(),
        })
    }

    /// A fresh value for each request's ledger call id. The id must name one request: a
    /// redelivered envelope that is sent again is billed again, and a call id reused from the
    /// first delivery would make the ledger drop that cost as an already-settled retry (and keep
    /// the new reservation held forever).
    fn request_nonce(&self) -> String {
        format!("{:016x}", self.ports.random.next_u64())
    }

    /// Budgets a call must fit in; non-critical calls leave the reserved share to critical ones.
    fn limits(&self, critical: bool) -> Vec<BudgetLimit> {
        let share = if critical {
            100
        } else {
            100 - self.settings.critical_reserve_percent.min(100)
        };
        self.settings
            .budgets
            .limits()
            .into_iter()
            .map(|mut l| {
                l.limit_nano = (u128::from(l.limit_nano) * u128::from(share) / 100) as u64;
                l
            })
            .collect()
    }

    async fn settle(
        &self,
        reservation: &Reservation,
        actual: u64,
        usage: Usage,
        spent: &mut Spent,
    ) {
        let settlement = Settlement {
            call_id: reservation.call_id.clone(),
            system_id: reservation.system_id.clone(),
            model_id: reservation.model_id.clone(),
            reserved_nano: reservation.amount_nano,
            reserved_at: reservation.at,
            actual_nano: actual,
            usage,
            at: self.ports.clock.now(),
        };
        if let Err(e) = self.ports.ledger.settle(&settlement).await {
            // The reservation stays held until a later settle; spend is over-, never under-counted.
            warn!(error = %e, call_id = %reservation.call_id, "could not settle a Bedrock call");
            return;
        }
        spent.cost_nano += actual;
        spent.usage.input_tokens += usage.input_tokens;
        spent.usage.output_tokens += usage.output_tokens;
        spent.usage.cache_read_tokens += usage.cache_read_tokens;
        spent.usage.cache_write_tokens += usage.cache_write_tokens;
        if actual > 0 {
            self.crossings(reservation, actual, spent).await;
        }
    }

    /// Thresholds (the economy share and 100%) that this call's cost moved spend across.
    async fn crossings(&self, reservation: &Reservation, actual: u64, spent: &mut Spent) {
        let budgets = &self.settings.budgets;
        for limit in budgets.limits() {
            let scope = match limit.scope {
                BudgetScope::Global => LedgerScope::Total,
                BudgetScope::System => LedgerScope::System(reservation.system_id.clone()),
            };
            let Ok(totals) = self
                .ports
                .ledger
                .totals(PeriodKey::of(limit.period, reservation.at), &scope)
                .await
            else {
                continue;
            };
            let after = u128::from(totals.spent_nano);
            let before = after.saturating_sub(u128::from(actual));
            for percent in [budgets.economy_percent, 100] {
                let line = u128::from(limit.limit_nano) * u128::from(percent);
                if before * 100 < line && after * 100 >= line {
                    spent.crossings.push(BudgetCrossing {
                        scope: limit.scope,
                        period: limit.period,
                        percent,
                    });
                }
            }
        }
    }

    async fn checkpoint(
        &self,
        key: &str,
        model_id: &str,
        raw: &Result<RawAnswer, String>,
        usage: Usage,
        cost: u64,
    ) {
        let Ok(raw) = raw else { return };
        let Ok(answer) = serde_json::to_value(raw) else {
            return;
        };
        let checkpoint = Checkpoint {
            key: key.to_owned(),
            model_id: model_id.to_owned(),
            answer,
            usage,
            cost_nano_usd: cost,
            expires_at: self.ports.clock.now() + self.settings.checkpoint_ttl,
        };
        if let Err(e) = self.ports.control.put_checkpoint(&checkpoint).await {
            warn!(error = %e, "could not checkpoint a Bedrock answer");
        }
    }

    /// Whether Bedrock is throttling: a throttle window is open on some catalog model.
    async fn throttling(&self) -> bool {
        let now = self.ports.clock.now();
        for entry in self.settings.catalog.usable() {
            if let Ok(state) = self.ports.control.circuit(&entry.id).await {
                if healing::is_throttled(state.as_ref(), now) {
                    return true;
                }
            }
        }
        false
    }

    /// Request batching under throttling: the proposal and the plan's later steps in one
    /// request. The proposal's decision is validated and returned like a single one; each later
    /// decision that validates (against its own local risk and the ceiling) is stored in the
    /// response cache under the key of the single request that step would send against the same
    /// DNA and history. When its proposal arrives and nothing it depends on has changed (the
    /// steps before it were rejected, or rolled back to the same genes), the cache answers it
    /// for nothing, validated again; otherwise the key differs and it is decided normally.
    async fn decide_batch(
        &self,
        req: &DecideRequest,
    ) -> Result<LlmAnswer<DecisionResult>, LlmError> {
        let parse = |v: Value| -> Result<(DecisionResult, Vec<Option<Value>>), AnswerError> {
            let decisions = v
                .get("decisions")
                .and_then(Value::as_array)
                .ok_or_else(|| AnswerError::SchemaMismatch("no `decisions` array".into()))?;
            let first = decisions
                .first()
                .cloned()
                .ok_or_else(|| AnswerError::SchemaMismatch("no decision".into()))?;
            let value = validate::decision(first, req.local_risk, req.risk_ceiling)?;
            let later = req
                .batch
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let d = decisions.get(i + 1)?.clone();
                    validate::decision(d.clone(), p.local_risk, req.risk_ceiling)
                        .ok()
                        .map(|_| d)
                })
                .collect();
            Ok((value, later))
        };
        let local = async {
            self.local
                .decide(req)
                .await
                .map(|a| a.map(|v| (v, Vec::new())))
        };
        let answer = self
            .role_call(
                &req.ctx,
                Priority::of(&req.ctx.task, true),
                batch_schema(),
                &|limit| batch_prompt(req, limit),
                &parse,
                local,
            )
            .await?;
        if answer.fallback.is_none() {
            if let Some(entry) = self.settings.catalog.get(&answer.model_id) {
                let settings = self.settings.role(Role::Decide);
                let max_tokens = settings.max_tokens.min(entry.max_output_tokens);
                let schema = schema_for(Role::Decide);
                let mut stored = 0;
                for (pending, decision) in req.batch.iter().zip(&answer.value.1) {
                    let Some(decision) = decision else { continue };
                    let single = DecideRequest {
                        mutation: pending.mutation.clone(),
                        local_risk: pending.local_risk,
                        batch: Vec::new(),
                        ..req.clone()
                    };
                    let prompt = prompts::decide(&single, self.settings.history_limit);
                    let key = cache_key(&entry.id, entry, &prompt, &schema, settings, max_tokens);
                    let raw = Ok(single_answer(entry, decision));
                    self.remember(key, &entry.id, Role::Decide, &raw, Usage::default(), 0)
                        .await;
                    stored += 1;
                }
                info!(
                    model = %entry.id,
                    batch = req.batch.len() + 1,
                    stored,
                    "batch decision under throttling"
                );
            }
        }
        Ok(answer.map(|(value, _)| value))
    }

    /// A cached answer for `key` that still parses and validates for this request, if any.
    /// Validation runs again on every hit: the stored answer passed it once, but the risk
    /// ceiling and the gene schema the parser checks against are the caller's, now.
    async fn cached<T>(
        &self,
        key: &str,
        entry: &ModelEntry,
        role: Role,
        parse: &(dyn Fn(Value) -> Result<T, AnswerError> + Sync),
    ) -> Option<T> {
        if self.settings.response_cache_ttl <= chrono::Duration::zero() {
            return None;
        }
        let found = match self
            .ports
            .control
            .cached_answer(key, self.ports.clock.now())
            .await
        {
            Ok(found) => found?,
            Err(e) => {
                warn!(error = %e, "could not read the response cache");
                return None;
            }
        };
        serde_json::from_value::<RawAnswer>(found.answer)
            .map_err(|e| AnswerError::SchemaMismatch(e.to_string()))
            .and_then(|raw| validate::extract(&raw, extraction(entry, role)))
            .and_then(parse)
            .ok()
    }

    /// Stores a validated answer for reuse by identical requests (best effort).
    async fn remember(
        &self,
        key: String,
        model_id: &str,
        role: Role,
        raw: &Result<RawAnswer, String>,
        usage: Usage,
        cost: u64,
    ) {
        let ttl = self.settings.response_cache_ttl;
        if ttl <= chrono::Duration::zero() {
            return;
        }
        let (Ok(raw), now) = (raw, self.ports.clock.now()) else {
            return;
        };
        let Ok(answer) = serde_json::to_value(raw) else {
            return;
        };
        let entry = crate::store::CachedAnswer {
            key,
            model_id: model_id.to_owned(),
            role,
            answer,
            usage,
            cost_nano_usd: cost,
            stored_at: now,
            expires_at: now + ttl,
        };
        if let Err(e) = self.ports.control.put_cached_answer(&entry).await {
            warn!(error = %e, "could not store an answer in the response cache");
        }
    }

    async fn open_circuit_on_failure(&self, model_id: &str) {
        let control = &self.ports.control;
        let state = control.circuit(model_id).await.ok().flatten();
        let next = healing::after_failure(
            state,
            model_id,
            self.ports.clock.now(),
            &self.settings.retry,
        );
        if next.open_until.is_some()
            && next.consecutive_failures == self.settings.retry.circuit_threshold
        {
            warn!(model = model_id, "circuit opened");
        }
        if let Err(e) = control.put_circuit(&next).await {
            warn!(error = %e, "could not record a circuit failure");
        }
    }

    /// Records that Bedrock throttled `model_id`: low-priority calls skip it for the window.
    async fn open_throttle_window(&self, model_id: &str) {
        let control = &self.ports.control;
        let window = chrono::Duration::from_std(self.settings.retry.throttle_window)
            .unwrap_or(chrono::Duration::seconds(30));
        let mut state =
            control
                .circuit(model_id)
                .await
                .ok()
                .flatten()
                .unwrap_or(crate::store::CircuitState {
                    model_id: model_id.to_owned(),
                    consecutive_failures: 0,
                    open_until: None,
                    throttled_until: None,
                });
        state.throttled_until = Some(self.ports.clock.now() + window);
        if let Err(e) = control.put_circuit(&state).await {
            warn!(error = %e, "could not record a throttle window");
        }
    }

    async fn close_circuit(&self, model_id: &str) {
        let control = &self.ports.control;
        if let Ok(Some(state)) = control.circuit(model_id).await {
            if state.consecutive_failures > 0
                || state.open_until.is_some()
                || state.throttled_until.is_some()
            {
                // An answer means capacity again: the throttle window closes too.
                let closed = crate::store::CircuitState {
                    consecutive_failures: 0,
                    open_until: None,
                    throttled_until: None,
                    ..state
                };
                if let Err(e) = control.put_circuit(&closed).await {
                    warn!(error = %e, "could not close a circuit");
                }
            }
        }
    }

    async fn record_performance(&self, role: Role, calls: &[(String, bool, u64, bool)]) {
        if calls.is_empty() {
            return;
        }
        let control = &self.ports.control;
        let mut perf: PerformanceSnapshot = control.performance().await.unwrap_or_default();
        for (model, success, latency, parse_failed) in calls {
            perf.record_call(model, role, *success, *latency, *parse_failed);
        }
        if let Err(e) = control.put_performance(&perf).await {
            warn!(error = %e, "could not record model performance");
        }
    }

    async fn send(
        &self,
        model_id: &str,
        entry: &ModelEntry,
        prompt: &Prompt,
        schema: &Value,
        settings: RoleSettings,
        max_tokens: u32,
    ) -> Result<
        ConverseOutput,
        SdkError<ConverseError, aws_sdk_bedrockruntime::config::http::HttpResponse>,
    > {
        let inference = InferenceConfiguration::builder()
            .max_tokens(i32::try_from(max_tokens).unwrap_or(i32::MAX))
            .temperature(settings.temperature)
            .build();
        let user = |text: String| {
            Message::builder()
                .role(ConversationRole::User)
                .content(ContentBlock::Text(text))
                .build()
        };
        let request = self
            .client
            .converse()
            .model_id(model_id)
            .inference_config(inference);
        let request = match entry.structured_output {
            StructuredOutput::JsonSchema => {
                let format = JsonSchemaDefinition::builder()
                    .schema(schema.to_string())
                    .name(prompt.tool_name)
                    .description(prompt.tool_description)
                    .build()
                    .and_then(|definition| {
                        OutputFormat::builder()
                            .r#type(OutputFormatType::JsonSchema)
                            .structure(OutputFormatStructure::JsonSchema(definition))
                            .build()
                    });
                let format = format.map_err(SdkError::construction_failure)?;
                request
                    .system(SystemContentBlock::Text(prompt.system.clone()))
                    .messages(user(prompt.user.clone()).map_err(SdkError::construction_failure)?)
                    .output_config(OutputConfig::builder().text_format(format).build())
            }
            StructuredOutput::ToolUse => {
                let tool = ToolSpecification::builder()
                    .name(prompt.tool_name)
                    .description(prompt.tool_description)
                    .input_schema(ToolInputSchema::Json(to_document(schema)))
                    .build()
                    .map_err(SdkError::construction_failure)?;
                let choice = SpecificToolChoice::builder()
                    .name(prompt.tool_name)
                    .build()
                    .map_err(SdkError::construction_failure)?;
                let config = ToolConfiguration::builder()
                    .tools(Tool::ToolSpec(tool))
                    .tool_choice(ToolChoice::Tool(choice))
                    .build()
                    .map_err(SdkError::construction_failure)?;
                request
                    .system(SystemContentBlock::Text(prompt.system.clone()))
                    .messages(user(prompt.user.clone()).map_err(SdkError::construction_failure)?)
                    .tool_config(config)
            }
            StructuredOutput::Text => {
                // Titan takes no system prompt: instructions and schema go before the data.
                let text = format!(
                    "{}\n\nReply with one JSON object that matches this JSON schema:\n{schema}\n\nData:\n{}",
                    prompt.system, prompt.user
                );
                request.messages(user(text).map_err(SdkError::construction_failure)?)
            }
        };
        request.send().await
    }
}

/// The batch decision's answer: one decision per mutation, in the order they were given.
fn batch_schema() -> Value {
    serde_json::json!({
        "type": "object",
        "properties": {
            "decisions": {
                "type": "array",
                "minItems": 1,
                "items": schema_for(Role::Decide),
            },
        },
        "required": ["decisions"],
    })
}

/// The decide prompt of `req` with the later steps added: `mutation` first, then each of
/// `more_mutations`, every one judged alone against the same DNA.
fn batch_prompt(req: &DecideRequest, history_limit: usize) -> Prompt {
    let single = prompts::decide(req, history_limit);
    let mut data: Value = serde_json::from_str(&single.user).unwrap_or_default();
    if let Some(obj) = data.as_object_mut() {
        obj.insert(
            "more_mutations".into(),
            req.batch
                .iter()
                .map(|p| {
                    serde_json::json!({
                        "changes": p.mutation.changes,
                        "predicted_impact": p.mutation.predicted_impact,
                        "local_risk": p.local_risk,
                    })
                })
                .collect(),
        );
    }
    Prompt {
        system: format!(
            "{}\n\nDecide several proposals at once: `mutation` first, then each entry of \
             `more_mutations` in order, each judged on its own against the same DNA and its own \
             `local_risk`. Answer with `decisions`: one decision per proposal, in that order.",
            single.system
        ),
        user: data.to_string(),
        ..single
    }
}

/// A stored answer in the shape a single request to `entry` would have received.
fn single_answer(entry: &ModelEntry, decision: &Value) -> RawAnswer {
    let blocks = match entry.structured_output {
        StructuredOutput::ToolUse => vec![RawContent::ToolUse {
            name: prompts::tool_name(Role::Decide).to_owned(),
            input: decision.clone(),
        }],
        StructuredOutput::JsonSchema | StructuredOutput::Text => vec![RawContent::Text {
            text: decision.to_string(),
        }],
    };
    RawAnswer {
        blocks,
        stop_reason: "end_turn".into(),
    }
}

/// The response-cache key: SHA-256 over the model id, the role and everything that shapes the
/// answer (how structured output is forced, the system prompt, the user message, the tool, the
/// output schema and the inference settings). Any difference is another key.
fn cache_key(
    model_id: &str,
    entry: &ModelEntry,
    prompt: &Prompt,
    schema: &Value,
    settings: RoleSettings,
    max_tokens: u32,
) -> String {
    let request = serde_json::json!({
        "model_id": model_id,
        "role": prompt.role.as_str(),
        "structured_output": entry.structured_output,
        "system": prompt.system,
        "messages": [prompt.user],
        "tool_name": prompt.tool_name,
        "tool_description": prompt.tool_description,
        "schema": schema,
        "temperature": settings.temperature,
        "max_tokens": max_tokens,
    });
    crate::domain::sha256_hex(request.to_string().as_bytes())
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

/// How long one request may take: the role's timeout, cut to the call's deadline and to what is
/// left of the fallback window.
fn request_timeout(
    role_timeout: Duration,
    deadline: Option<DateTime<Utc>>,
    window_left: Option<Duration>,
    now: DateTime<Utc>,
) -> Duration {
    let mut timeout = role_timeout;
    if let Some(deadline) = deadline {
        timeout = timeout.min((deadline - now).to_std().unwrap_or(Duration::ZERO));
    }
    if let Some(left) = window_left {
        timeout = timeout.min(left);
    }
    timeout
}

fn extraction(entry: &ModelEntry, role: Role) -> Extraction {
    match entry.structured_output {
        StructuredOutput::JsonSchema => Extraction::JsonText,
        StructuredOutput::ToolUse => Extraction::Tool(prompts::tool_name(role)),
        StructuredOutput::Text => Extraction::EmbeddedJson,
    }
}

fn usage_of(output: &ConverseOutput) -> Usage {
    let to_u64 = |v: i32| u64::try_from(v).unwrap_or(0);
    output.usage().map_or_else(Usage::default, |u| Usage {
        input_tokens: to_u64(u.input_tokens()),
        output_tokens: to_u64(u.output_tokens()),
        cache_read_tokens: u.cache_read_input_tokens().map_or(0, to_u64),
        cache_write_tokens: u.cache_write_input_tokens().map_or(0, to_u64),
    })
}

/// The answer's content in our own terms; an output that is not a message is malformed.
fn raw_answer(output: &ConverseOutput) -> Result<RawAnswer, String> {
    let Some(Output::Message(message)) = output.output() else {
        return Err("the response carries no message".into());
    };
    let mut blocks = Vec::new();
    for block in message.content() {
        match block {
            ContentBlock::Text(text) => blocks.push(RawContent::Text { text: text.clone() }),
            ContentBlock::ToolUse(tool) => blocks.push(RawContent::ToolUse {
                name: tool.name().to_owned(),
                input: from_document(tool.input()).map_err(|e| e.to_string())?,
            }),
            _ => {}
        }
    }
    Ok(RawAnswer {
        blocks,
        stop_reason: output.stop_reason().as_str().to_owned(),
    })
}

/// Maps an SDK error onto the healing table.
fn classify(
    error: &SdkError<ConverseError, aws_sdk_bedrockruntime::config::http::HttpResponse>,
) -> Failure {
    match error {
        SdkError::ServiceError(service) => {
            let e = service.err();
            let message = e.message().unwrap_or_default().to_owned();
            if e.is_throttling_exception() {
                Failure::Throttled(message)
            } else if e.is_model_timeout_exception() {
                Failure::ModelTimeout(message)
            } else if e.is_validation_exception() {
                if message.to_ascii_lowercase().contains("too long") {
                    Failure::InputTooLong(message)
                } else {
                    Failure::Validation(message)
                }
            } else if e.is_access_denied_exception() {
                Failure::AccessDenied(message)
            } else if e.is_resource_not_found_exception() {
                Failure::NotFound(message)
            } else {
                Failure::Server {
                    status: service.raw().status().as_u16(),
                    message: e
                        .code()
                        .map_or(message.clone(), |c| format!("{c}: {message}")),
                }
            }
        }
        SdkError::TimeoutError(_) => Failure::Timeout(Duration::ZERO),
        SdkError::DispatchFailure(e) => Failure::Transport(format!("{e:?}")),
        SdkError::ResponseError(e) => Failure::Malformed(format!("{e:?}")),
        SdkError::ConstructionFailure(e) => Failure::Validation(format!("{e:?}")),
        other => Failure::Transport(other.to_string()),
    }
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
            self.local.analyze(req),
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
            self.local.strategize(req),
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
            self.local.decide(req),
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
            self.local.resolve_conflict(req),
        )
        .await
    }
}
