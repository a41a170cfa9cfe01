//! The policy of one role call on Bedrock, in the adapter's own terms (the SDK stays behind the
//! [`Converse`](super::transport::Converse) port): resume an answer paid for before a crash,
//! route, then per model attempt (cache, call budget, reserve, send, settle, parse), repair an
//! unusable answer once, heal each failure per the table in `healing`, and say why the local
//! engine answers when no model does. See `docs/architecture.md`, "The LLM layer".

use std::collections::{BTreeSet, VecDeque};

use super::transport::{Reply, Request};
use super::{
    AnswerError, BedrockModel, CacheTtl, CallContext, DateTime, Duration, Failure, ModelEntry,
    Outcome, Path, Priority, Prompt, Reservation, ReserveOutcome, SecurityEvent, Spent, Utc, Value,
    cache_key, cost_nano, derive_id, estimate_tokens, extraction, healing, info, router, validate,
    warn, worst_case_nano,
};
use crate::llm::catalog::Price as ModelPrice;

/// Less time than this left for a request (by the deadline or the fallback window) and it is not
/// sent: it could not be answered, yet Bedrock might bill it.
pub(super) const MIN_REQUEST_TIME: Duration = Duration::from_secs(1);

/// What a role call is, the same for all its attempts.
pub(super) struct Call<'a, T> {
    pub ctx: &'a CallContext,
    pub priority: Priority,
    pub schema: &'a Value,
    /// The prompt with at most this many closed evaluations of history (trimmed on demand).
    pub prompt_for: &'a (dyn Fn(usize) -> Prompt + Sync),
    pub parse: &'a (dyn Fn(Value) -> Result<T, AnswerError> + Sync),
}

/// Where a role call stands between its attempts.
struct Run {
    /// The router's ranking, which the repair picks its model from.
    ranked: Vec<String>,
    /// The models still to try, in order.
    models: VecDeque<String>,
    /// Models Bedrock throttled recently: low-priority calls skip them without a request.
    throttled: BTreeSet<String>,
    /// When the first failure opened the fallback window.
    first_failure: Option<DateTime<Utc>>,
    history_limit: usize,
    repaired: bool,
    last_reason: String,
    attempt_no: u32,
}

/// What the attempt loop does after an attempt.
enum Next<T> {
    Done(Outcome<T>),
    /// The same model again (after the backoff already slept).
    Retry,
    OtherModel,
    /// No model is tried any more: the local engine answers.
    GiveUp,
}

/// How a paid request ended.
pub(super) enum Paid {
    /// The ledger refused the reservation or could not be reached: no request was sent.
    Refused(String),
    Replied {
        reply: Reply,
        cost: u64,
    },
    Failed(Failure),
}

/// A request about to be paid for: its ledger id, the most it can cost, when it was decided and
/// how long it may take.
pub(super) struct Ticket {
    pub call_id: String,
    pub worst_nano: u64,
    pub at: DateTime<Utc>,
    pub timeout: Duration,
}

impl BedrockModel {
    pub(super) async fn try_bedrock<T>(&self, call: &Call<'_, T>, spent: &mut Spent) -> Outcome<T> {
        if let Some(outcome) = self.resume(call, spent).await {
            return outcome;
        }
        let mut run = match self.start(call.ctx).await {
            Ok(run) => run,
            Err(reason) => return Outcome::Fallback { reason },
        };
        while let Some(model_id) = run.models.pop_front() {
            match self.try_model(call, &model_id, &mut run, spent).await {
                Next::Done(outcome) => return outcome,
                Next::GiveUp => break,
                Next::Retry | Next::OtherModel => {}
            }
        }
        Outcome::Fallback {
            reason: run.last_reason,
        }
    }

    /// A previous attempt paid for an answer and died before committing: that answer, if it
    /// still parses.
    async fn resume<T>(&self, call: &Call<'_, T>, spent: &mut Spent) -> Option<Outcome<T>> {
        let key = checkpoint_key(call.ctx);
        let now = self.ports.clock.now();
        let cp = self.ports.control.checkpoint(&key, now).await.ok()??;
        let entry = self.settings.catalog.get(&cp.model_id)?;
        let value = serde_json::from_value(cp.answer.clone())
            .map_err(|e| AnswerError::SchemaMismatch(e.to_string()))
            .and_then(|raw| validate::extract(&raw, extraction(entry, call.ctx.task.role)))
            .and_then(call.parse)
            .ok()?;
        spent.usage = cp.usage;
        spent.cost_nano = cp.cost_nano_usd;
        Some(Outcome::Answered {
            value,
            model_id: cp.model_id,
        })
    }

    /// Routes the call around open circuits; `Err` says why Bedrock is not asked at all.
    async fn start(&self, ctx: &CallContext) -> Result<Run, String> {
        let now = self.ports.clock.now();
        let perf = self.ports.control.performance().await.unwrap_or_default();
        let mut policy = self.settings.routing.clone();
        let mut throttled = BTreeSet::new();
        for entry in self.settings.catalog.usable() {
            if let Ok(state) = self.ports.control.circuit(&entry.id).await {
                if healing::is_open(state.as_ref(), now) {
                    policy.open_circuits.insert(entry.id.clone());
                }
                if healing::is_throttled(state.as_ref(), now) {
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
            return Err(format!("router: {}", route.reason));
        }
        let models = route
            .ranked
            .iter()
            .take(self.settings.retry.max_models)
            .cloned()
            .collect();
        Ok(Run {
            ranked: route.ranked,
            models,
            throttled,
            first_failure: None,
            history_limit: self.settings.history_limit,
            repaired: false,
            last_reason: String::from("no model answered"),
            attempt_no: 0,
        })
    }

    /// Attempts one model until it answers, gives way to the next, or ends the call.
    async fn try_model<T>(
        &self,
        call: &Call<'_, T>,
        model_id: &str,
        run: &mut Run,
        spent: &mut Spent,
    ) -> Next<T> {
        let Some(entry) = self.settings.catalog.get(model_id) else {
            return Next::OtherModel;
        };
        let Some(price) = entry.price() else {
            return Next::OtherModel;
        };
        let mut retries = 0u32;
        loop {
            match self
                .attempt(call, entry, price, run, &mut retries, spent)
                .await
            {
                Next::Retry => {}
                next => return next,
            }
        }
    }

    /// One attempt on `entry`: the cache, the checks that keep a request from being sent in
    /// vain, then the paid request and what its reply or failure means.
    async fn attempt<T>(
        &self,
        call: &Call<'_, T>,
        entry: &ModelEntry,
        price: &ModelPrice,
        run: &mut Run,
        retries: &mut u32,
        spent: &mut Spent,
    ) -> Next<T> {
        let (ctx, role) = (call.ctx, call.ctx.task.role);
        let retry = &self.settings.retry;
        let now = self.ports.clock.now();
        let remaining = window_left(run.first_failure, retry.fallback_within, now);
        if remaining == Some(Duration::ZERO) {
            run.last_reason = format!(
                "no answer within {:?} of the first failure ({})",
                retry.fallback_within, run.last_reason
            );
            return Next::GiveUp;
        }
        let prompt = (call.prompt_for)(run.history_limit);
        let settings = self.settings.role(role);
        let max_tokens = settings.max_tokens.min(entry.max_output_tokens);
        // An identical request answered and validated within the TTL: reuse it, free.
        let cache_key = cache_key(&entry.id, entry, &prompt, call.schema, settings, max_tokens);
        if let Some(value) = self.cached(&cache_key, entry, role, call.parse).await {
            spent.cache_hit = true;
            info!(model = %entry.id, role = role.as_str(), "response cache hit");
            return Next::Done(Outcome::Answered {
                value,
                model_id: entry.id.clone(),
            });
        }
        if call.priority == Priority::Low && run.throttled.contains(&entry.id) {
            run.last_reason = format!(
                "{}: throttled recently; a low-priority call does not wait for it",
                entry.id
            );
            return Next::OtherModel;
        }
        let estimate = estimate_tokens(&prompt.system)
            + estimate_tokens(&prompt.user)
            + estimate_tokens(&call.schema.to_string());
        let worst = worst_case_nano(price, estimate, u64::from(max_tokens));
        let timeout = request_timeout(settings.timeout, ctx.deadline, remaining, now);
        if timeout < MIN_REQUEST_TIME.min(settings.timeout) {
            run.last_reason = format!(
                "{timeout:?} left before the invocation's deadline or the fallback window ({})",
                run.last_reason
            );
            return Next::GiveUp;
        }
        if let Some(reason) = spent.exhausted(retry, worst) {
            run.last_reason = format!("{reason}; last failure: {}", run.last_reason);
            return Next::GiveUp;
        }
        run.attempt_no += 1;
        let ticket = Ticket {
            call_id: derive_id(
                "bcall",
                &[
                    &ctx.envelope_id,
                    role.as_str(),
                    &entry.id,
                    &run.attempt_no.to_string(),
                    &self.request_nonce(),
                ],
            ),
            worst_nano: worst,
            at: now,
            timeout,
        };
        let request = Request {
            model: entry,
            prompt: &prompt,
            schema: call.schema,
            settings,
            max_tokens,
        };
        match self.paid_request(ctx, &ticket, request, price, spent).await {
            Paid::Refused(reason) => Next::Done(Outcome::Fallback { reason }),
            Paid::Replied { reply, cost } => {
                let answered = Answered {
                    entry,
                    reply,
                    cost,
                    prompt: &prompt,
                    cache_key,
                    sent_at: now,
                };
                self.on_reply(call, answered, run, spent).await
            }
            Paid::Failed(failure) => {
                self.on_failure(call, entry, failure, now, run, retries, spent)
                    .await
            }
        }
    }

    /// Reserves the request's worst case, sends it within its timeout and settles what it
    /// cost: the reply's usage, or the reservation when Bedrock may bill a failed request.
    pub(super) async fn paid_request(
        &self,
        ctx: &CallContext,
        ticket: &Ticket,
        request: Request<'_>,
        price: &ModelPrice,
        spent: &mut Spent,
    ) -> Paid {
        let reservation = Reservation {
            call_id: ticket.call_id.clone(),
            system_id: ctx.system_id.clone(),
            model_id: request.model.id.clone(),
            amount_nano: ticket.worst_nano,
            at: ticket.at,
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
                return Paid::Refused(format!(
                    "budget: {scope:?} {period:?} budget {limit_nano} nano-USD has {committed_nano} committed"
                ));
            }
            Err(e) => return Paid::Refused(format!("ledger unavailable: {e}")),
        }
        spent.requests += 1;
        let sent = tokio::time::timeout(ticket.timeout, self.transport.converse(request)).await;
        match sent.unwrap_or(Err(Failure::Timeout(ticket.timeout))) {
            Ok(reply) => {
                spent.billed += 1;
                let cost = cost_nano(price, &reply.usage, CacheTtl::FiveMinutes);
                self.settle(&reservation, cost, reply.usage, spent).await;
                Paid::Replied { reply, cost }
            }
            Err(failure) => {
                self.settle_failed(&reservation, &failure, spent).await;
                Paid::Failed(failure)
            }
        }
    }

    /// A paid reply: checkpointed before parsing, kept when it validates, else repaired once.
    async fn on_reply<T>(
        &self,
        call: &Call<'_, T>,
        answered: Answered<'_>,
        run: &mut Run,
        spent: &mut Spent,
    ) -> Next<T> {
        let Answered {
            entry,
            reply,
            cost,
            prompt,
            cache_key,
            sent_at,
        } = answered;
        let model_id = &entry.id;
        let key = checkpoint_key(call.ctx);
        self.checkpoint(&key, model_id, &reply.answer, reply.usage, cost)
            .await;
        let parsed = reply
            .answer
            .as_ref()
            .map_err(|e| AnswerError::SchemaMismatch(e.clone()))
            .and_then(|raw| validate::extract(raw, extraction(entry, call.ctx.task.role)))
            .and_then(call.parse);
        let elapsed = (self.ports.clock.now() - sent_at).num_milliseconds().max(0) as u64;
        let e = match parsed {
            Ok(value) => {
                spent.perf.push((model_id.clone(), true, elapsed, false));
                self.close_circuit(model_id).await;
                // Stored only now that it has validated.
                let role = call.ctx.task.role;
                self.remember(cache_key, model_id, role, &reply.answer, reply.usage, cost)
                    .await;
                return Next::Done(Outcome::Answered {
                    value,
                    model_id: model_id.clone(),
                });
            }
            Err(e) => e,
        };
        spent.perf.push((model_id.clone(), false, elapsed, true));
        warn!(model = %model_id, error = %e, "unusable answer");
        run.last_reason = format!("{model_id}: {e}");
        run.first_failure.get_or_insert(sent_at);
        if !run.repaired {
            run.repaired = true;
            // The repair is bounded like any request: by the deadline and by what is left of
            // the fallback window.
            let now = self.ports.clock.now();
            let left = window_left(run.first_failure, self.settings.retry.fallback_within, now);
            let role_timeout = self.settings.role(call.ctx.task.role).timeout;
            let timeout = request_timeout(role_timeout, call.ctx.deadline, left, now);
            if let Some(outcome) = self
                .repair(call, &run.ranked, prompt, &e, timeout, spent)
                .await
            {
                return Next::Done(outcome);
            }
        }
        if matches!(e, AnswerError::Incoherent(_)) {
            // Another model is not asked to approve what this one's own numbers or words
            // contradict.
            return Next::Done(Outcome::Incoherent {
                reason: run.last_reason.clone(),
            });
        }
        Next::OtherModel
    }

    /// A failed request, healed per the failure table: retry after a backoff, trim the
    /// history, move to a larger or the next model, or give the call to the local engine.
    #[allow(clippy::too_many_arguments)]
    async fn on_failure<T>(
        &self,
        call: &Call<'_, T>,
        entry: &ModelEntry,
        failure: Failure,
        sent_at: DateTime<Utc>,
        run: &mut Run,
        retries: &mut u32,
        spent: &mut Spent,
    ) -> Next<T> {
        let model_id = &entry.id;
        run.first_failure.get_or_insert(sent_at);
        spent.perf.push((model_id.clone(), false, 0, false));
        run.last_reason = format!("{model_id}: {failure}");
        if let Failure::AccessDenied(message) = &failure {
            let event = SecurityEvent::new("bedrock", "Converse", "AccessDeniedException", message)
                .with_resource(model_id);
            event.emit();
            spent.security.push(event);
        }
        if failure.counts_against_model() {
            self.open_circuit_on_failure(model_id).await;
        }
        if matches!(failure, Failure::Throttled(_)) {
            self.open_throttle_window(model_id).await;
            if call.priority == Priority::Low {
                // No retry and no backoff: give the quota to the calls that need it; the next
                // model, or the local engine.
                run.throttled.insert(model_id.clone());
                return Next::OtherModel;
            }
        }
        let retry = &self.settings.retry;
        match failure.path() {
            Path::RetryThenNextModel if *retries < retry.retries_per_model => {
                let wait = healing::backoff(retry, *retries, self.ports.random.as_ref());
                // Never sleep past the fallback window: the local engine must answer within it.
                let now = self.ports.clock.now();
                let left = window_left(run.first_failure, retry.fallback_within, now);
                *retries += 1;
                self.ports
                    .sleeper
                    .sleep(left.map_or(wait, |left| wait.min(left)))
                    .await;
                Next::Retry
            }
            Path::TrimThenLargerModel if run.history_limit > 0 => {
                run.history_limit /= 2;
                Next::Retry
            }
            Path::TrimThenLargerModel => {
                self.larger_models_first(entry, &mut run.models);
                Next::OtherModel
            }
            Path::LocalEngine => Next::GiveUp,
            _ => Next::OtherModel,
        }
    }

    /// Keeps only the models left with a larger context window than `entry`'s, largest first.
    fn larger_models_first(&self, entry: &ModelEntry, models: &mut VecDeque<String>) {
        let window = |m: &String| self.settings.catalog.get(m).map_or(0, |e| e.context_window);
        let mut rest: Vec<String> = models.drain(..).collect();
        rest.retain(|m| window(m) > entry.context_window);
        rest.sort_by_key(|m| std::cmp::Reverse(window(m)));
        models.extend(rest);
    }

    /// A fresh value for each request's ledger call id. The id must name one request: a
    /// redelivered envelope that is sent again is billed again, and a call id reused from the
    /// first delivery would make the ledger drop that cost as an already-settled retry (and keep
    /// the new reservation held forever).
    pub(super) fn request_nonce(&self) -> String {
        format!("{:016x}", self.ports.random.next_u64())
    }
}

/// A reply that was paid for, with what it takes to keep it.
struct Answered<'a> {
    entry: &'a ModelEntry,
    reply: Reply,
    cost: u64,
    prompt: &'a Prompt,
    cache_key: String,
    sent_at: DateTime<Utc>,
}

/// Where a role call's paid answer is kept until its message commits.
fn checkpoint_key(ctx: &CallContext) -> String {
    format!("{}#{}", ctx.envelope_id, ctx.task.role.as_str())
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
pub(super) fn request_timeout(
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
