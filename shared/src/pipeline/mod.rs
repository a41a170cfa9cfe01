//! The pipeline: decode a message, run its stage, commit the stage's writes together with the
//! idempotency record (which stores the outgoing messages), then send. Shared by the Lambda
//! handlers, the local runner and the worker, so every home runs the same code path.

use chrono::Duration;
use tracing::{Instrument, debug, info_span, warn};

use crate::bus::{Bus, BusError};
use crate::domain::{Body, Destination, Envelope, Queue, sha256_hex};
use crate::stages::{self, Deps, StageError, StageOutput};
use crate::store::{Claim, Completion, StoreError, Transaction};
use crate::telemetry::error_chain;

mod trace;
pub use trace::message_span;
use trace::{stage_of, stamp_trace};

/// What a committed message changed that operators watch: the LLM calls it made, the head's
/// generation, the fitness of an evaluation it closed, rollbacks. Read off the committed writes,
/// so the numbers are exactly what the store holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    pub llm_calls: Vec<crate::store::LlmCallRecord>,
    pub generation: Option<u64>,
    pub fitness: Option<f64>,
    pub rollbacks: u32,
}

impl Observed {
    fn of(writes: &[crate::store::Write]) -> Self {
        use crate::store::Write;
        let mut observed = Self::default();
        for write in writes {
            match write {
                Write::PutLlmCall { call } => observed.llm_calls.push(call.clone()),
                Write::UpdateHead { head, .. }
                | Write::ResolveApproval { head, .. }
                | Write::CountSample { head, .. } => {
                    observed.generation = Some(head.generation);
                }
                Write::PutHistory { entry, .. } => {
                    observed.fitness = entry.fitness.or(observed.fitness);
                    if entry.outcome != crate::domain::EvaluationOutcome::Keep {
                        observed.rollbacks += 1;
                    }
                }
                _ => {}
            }
        }
        observed
    }
}

/// What became of a message that did not fail.
#[derive(Debug, Clone, PartialEq)]
pub enum Handled {
    /// The stage ran and its results were committed and sent.
    Processed {
        summary: String,
        sent: usize,
        observed: Observed,
    },
    /// A redelivery of a completed message: its stored messages were sent again.
    Duplicate { resent: usize },
}

/// Why a message failed, split by what the consumer should do with it.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// Leave it on the queue (a batch item failure): a redelivery can succeed.
    #[error("retryable: {0}")]
    Retryable(Reason),
    /// Never retry blindly: move it to the dead-letter queue with this reason.
    #[error("permanent: {0}")]
    Permanent(Reason),
}

/// A failure's kind and its account. The kind is a stable name (`ConditionFailed`,
/// `StoreUnavailable`, `MalformedMessage`, ...) for the `errorType` a failed invocation reports
/// and for alarms and log queries; the text is the error with its sources, for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reason {
    pub kind: &'static str,
    pub text: String,
}

impl Reason {
    pub fn new(kind: &'static str, text: impl Into<String>) -> Self {
        Self {
            kind,
            text: text.into(),
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::ops::Deref for Reason {
    type Target = str;

    fn deref(&self) -> &str {
        &self.text
    }
}

impl PipelineError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Retryable(_))
    }

    /// The failure's stable name (see [`Reason`]).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Retryable(r) | Self::Permanent(r) => r.kind,
        }
    }

    fn retryable(kind: &'static str, text: impl Into<String>) -> Self {
        Self::Retryable(Reason::new(kind, text))
    }

    fn permanent(kind: &'static str, text: impl Into<String>) -> Self {
        Self::Permanent(Reason::new(kind, text))
    }
}

impl From<StageError> for PipelineError {
    fn from(e: StageError) -> Self {
        let reason = Reason::new(e.kind(), error_chain(&e));
        if e.is_retryable() {
            Self::Retryable(reason)
        } else {
            Self::Permanent(reason)
        }
    }
}

impl From<StoreError> for PipelineError {
    fn from(e: StoreError) -> Self {
        StageError::Store(e).into()
    }
}

/// Decodes a raw message body received on `queue` and handles it.
///
/// A body that is not a valid envelope, or a message type that does not belong on this queue,
/// is a permanent failure: it goes to the DLQ with the reason.
pub async fn handle_raw(
    deps: &Deps,
    bus: &dyn Bus,
    queue: Queue,
    raw: &str,
) -> Result<Handled, PipelineError> {
    let env: Envelope = serde_json::from_str(raw).map_err(|e| {
        PipelineError::permanent(
            "MalformedMessage",
            format!(
                "malformed message ({} bytes, sha256 {}): {e}",
                raw.len(),
                &sha256_hex(raw.as_bytes())[..16]
            ),
        )
    })?;
    let expected = Destination::Queue(queue);
    if env.body.destination() != expected && !accepts(queue, &env.body) {
        return Err(PipelineError::permanent(
            "WrongQueue",
            format!(
                "{} does not belong on the {} queue",
                env.body.type_name(),
                queue.as_str()
            ),
        ));
    }
    handle(deps, bus, &env).await
}

/// The snapshot function also consumes the fitness queue.
fn accepts(queue: Queue, body: &Body) -> bool {
    queue == Queue::Snapshot && matches!(body, Body::FitnessReported { .. })
}

/// Handles one envelope exactly once in effect: claim, run, commit with the outbox, send.
pub async fn handle(deps: &Deps, bus: &dyn Bus, env: &Envelope) -> Result<Handled, PipelineError> {
    let trace_id = env.trace().trace_id_hex();
    // The record's span (the consumer's) was opened before the body was read: it gets the
    // trace and the system now, so its log lines can be searched by them too.
    let record = tracing::Span::current();
    record.record("trace_id", trace_id.as_str());
    record.record("system_id", env.system_id.as_str());
    let stage = stage_of(&env.body);
    let span = message_span(env, stage);
    let payload = serde_json::to_vec(env).unwrap_or_default();
    exactly_once(
        deps,
        bus,
        &env.id,
        Some(env),
        &sha256_hex(&payload),
        // On the heap: the stages' futures are large, and a function's whole handler future
        // would otherwise carry the largest of them on its stack.
        || {
            Box::pin(
                async {
                    let mut output = run_stage(deps, env).await?;
                    stamp_trace(&mut output.writes, env);
                    Ok(output)
                }
                .instrument(info_span!("stage", otel.name = stage, stage)),
            )
        },
    )
    .instrument(span)
    .await
}

/// Runs the tick for the minute `scheduled_at` with the same exactly-once discipline.
pub async fn tick(
    deps: &Deps,
    bus: &dyn Bus,
    scheduled_at: chrono::DateTime<chrono::Utc>,
) -> Result<Handled, PipelineError> {
    let id = stages::tick::tick_id(scheduled_at);
    let hash = sha256_hex(id.as_bytes());
    exactly_once(deps, bus, &id, None, &hash, || {
        stages::tick::run(deps, scheduled_at)
    })
    .await
}

/// Runs an operator's action (`evolve init`) under the key `key` with the discipline of every
/// message: its writes commit with the idempotency record, its messages are kept in the outbox
/// until sent, and running it again re-sends what was never sent.
pub async fn run_once<F>(
    deps: &Deps,
    bus: &dyn Bus,
    key: &str,
    hash: &str,
    stage: impl Fn() -> F,
) -> Result<Handled, PipelineError>
where
    F: std::future::Future<Output = Result<StageOutput, StageError>>,
{
    exactly_once(deps, bus, key, None, hash, stage).await
}

/// Claims `key`, runs `stage`, commits its writes with the outbox, then sends; a completed key
/// re-sends its outbox only if it was never sent. The one path every message and tick takes.
///
/// A commit whose condition fails (another message changed the head first) runs the stage
/// once more at once, from a fresh read: the stage then sees what the other writer did, and a
/// message the other one made stale (a window it already closed) ends as a no-op instead of
/// waiting a visibility timeout to learn the same thing. A second failure is retryable.
async fn exactly_once<F>(
    deps: &Deps,
    bus: &dyn Bus,
    key: &str,
    env: Option<&Envelope>,
    hash: &str,
    stage: impl Fn() -> F,
) -> Result<Handled, PipelineError>
where
    F: std::future::Future<Output = Result<StageOutput, StageError>>,
{
    let result = exactly_once_inner(deps, bus, key, hash, stage).await;
    if let Err(Failed::Security(_, event)) = &result {
        raise_security_alert(deps, bus, key, env, event).await;
    }
    result.map_err(Failed::into_pipeline)
}

/// A pipeline error, or an authorization failure that must also raise a security alert.
enum Failed {
    Security(PipelineError, crate::security::SecurityEvent),
    Other(PipelineError),
    /// The commit's condition failed and the claim is still held: read again and retry.
    Conflict(PipelineError),
}

impl Failed {
    fn into_pipeline(self) -> PipelineError {
        match self {
            Self::Security(e, _) | Self::Other(e) | Self::Conflict(e) => e,
        }
    }
}

impl<E: Into<PipelineError>> From<E> for Failed {
    fn from(e: E) -> Self {
        Self::Other(e.into())
    }
}

/// Authorization failures of the store or the bus are security events: the message goes to the
/// DLQ with the reason (never a blind retry: a redelivery runs with the same role), and operators
/// get a critical `security` alert, recorded with `PutAlert` and published on the alerts topic.
/// Both are best effort: the denied service may be the one the alert needs. A tick has no
/// system to address an alert envelope to, so its alert is recorded and logged only.
async fn raise_security_alert(
    deps: &Deps,
    bus: &dyn Bus,
    key: &str,
    env: Option<&Envelope>,
    event: &crate::security::SecurityEvent,
) {
    let now = deps.clock.now();
    let alert = event.alert(
        crate::domain::derive_id("alert", &[key, "security"]),
        env.map(|e| e.system_id.clone()),
        now,
    );
    let tx = Transaction {
        writes: vec![crate::store::Write::PutAlert {
            alert: alert.clone(),
        }],
        completion: None,
    };
    if let Err(e) = deps.store.commit(tx).await {
        warn!(error = %e, "could not record the security alert");
    }
    if let Some(env) = env {
        let message = crate::domain::Outgoing::new(Envelope::caused_by(
            &env.id,
            Some(&env.trace()),
            "security",
            0,
            env.system_id.clone(),
            env.base_generation,
            now,
            Body::AlertRaised { alert },
        ));
        if let Err(e) = bus.send(&[message]).await {
            warn!(error = %e, "could not publish the security alert");
        }
    }
}

async fn exactly_once_inner<F>(
    deps: &Deps,
    bus: &dyn Bus,
    key: &str,
    hash: &str,
    stage: impl Fn() -> F,
) -> Result<Handled, Failed>
where
    F: std::future::Future<Output = Result<StageOutput, StageError>>,
{
    let now = deps.clock.now();
    let claimed = deps
        .store
        .claim(key, hash, now, claim_until(deps, now))
        .await
        .map_err(store_denied)?;
    match claimed {
        Claim::Claimed => {}
        Claim::Completed { outgoing } => {
            if !outgoing.is_empty() {
                send(bus, &outgoing)
                    .await
                    .map_err(|e| committed_send_failed(&e))?;
                mark_sent(deps, key).await;
            }
            debug!(resent = outgoing.len(), "duplicate delivery");
            return Ok(Handled::Duplicate {
                resent: outgoing.len(),
            });
        }
        Claim::InProgress { until } => {
            return Err(PipelineError::retryable(
                "InProgress",
                format!("{key} is being processed elsewhere until {until}"),
            )
            .into());
        }
        Claim::PayloadMismatch => {
            return Err(PipelineError::permanent(
                "PayloadMismatch",
                format!("id {key} was already used for a different payload"),
            )
            .into());
        }
    }
    let mut last_try = false;
    loop {
        let output = run_claimed(deps, key, stage()).await?;
        match commit_and_send(deps, bus, key, hash, output, last_try).await {
            Err(Failed::Conflict(e)) => {
                debug!(error = %e, "the head moved during the stage; reading again");
                last_try = true;
            }
            other => return other,
        }
    }
}

/// Runs the stage under the held claim; a failure releases the claim.
async fn run_claimed(
    deps: &Deps,
    key: &str,
    stage: impl std::future::Future<Output = Result<StageOutput, StageError>>,
) -> Result<StageOutput, Failed> {
    match stage.await {
        Ok(output) => Ok(output),
        Err(e) => {
            release(deps, key).await;
            if !e.is_retryable() {
                warn!(error = %error_chain(&e), "permanent failure");
            }
            if let StageError::Store(store) = &e {
                if let Some(event) = store.security_event() {
                    let event = event.clone();
                    return Err(Failed::Security(e.into(), event));
                }
            }
            Err(e.into())
        }
    }
}

fn store_denied(e: StoreError) -> Failed {
    match e.security_event().cloned() {
        Some(event) => Failed::Security(e.into(), event),
        None => Failed::Other(e.into()),
    }
}

fn bus_denied(e: &BusError) -> Failed {
    match e.security_event().cloned() {
        Some(event) => Failed::Security(
            PipelineError::permanent("AccessDenied", e.to_string()),
            event,
        ),
        None => Failed::Other(bus_error(e)),
    }
}

/// How long a claim holds: until the invocation's deadline when there is one (Powertools'
/// semantics: a Lambda that times out frees its claims when it dies), else the configured time.
fn claim_until(deps: &Deps, now: chrono::DateTime<chrono::Utc>) -> chrono::DateTime<chrono::Utc> {
    deps.config
        .deadline
        .filter(|d| *d > now)
        .unwrap_or_else(|| now + Duration::seconds(deps.config.in_progress_seconds))
}

async fn run_stage(deps: &Deps, env: &Envelope) -> Result<StageOutput, StageError> {
    use stages::{analyze, cost_guard, decide, snapshot, strategize};
    match &env.body {
        Body::CycleRequested { reason } => analyze::handle(deps, env, reason).await,
        Body::AnalysisReady { analysis_id } => strategize::handle(deps, env, analysis_id).await,
        Body::MutationProposed {
            mutation,
            deferrals,
        } => decide::handle_proposal(deps, env, mutation, *deferrals).await,
        Body::ConflictDetected { conflict } => decide::handle_conflict(deps, env, conflict).await,
        Body::ApprovalGiven {
            decision_id,
            approve,
            approver,
            note,
        } => {
            let verdict = if *approve {
                decide::Verdict::Approve
            } else {
                decide::Verdict::Reject
            };
            decide::handle_verdict(deps, env, decision_id, verdict, approver, note.as_deref()).await
        }
        Body::ResumeRequested { requested_by, note } => {
            decide::handle_resume(deps, env, requested_by, note.as_deref()).await
        }
        Body::ApprovalExpired { decision_id } => {
            decide::handle_verdict(
                deps,
                env,
                decision_id,
                decide::Verdict::Expire,
                "expiry",
                None,
            )
            .await
        }
        Body::MutationApproved {
            decision_id,
            mutation,
        } => snapshot::handle_approved(deps, env, decision_id, mutation).await,
        Body::FitnessReported {
            generation,
            checksum,
            score,
            metrics,
            error,
            cohort,
        } => {
            snapshot::handle_fitness(
                deps,
                env,
                *generation,
                checksum,
                *score,
                metrics,
                error.as_deref(),
                *cohort,
            )
            .await
        }
        Body::EvaluationDue { generation } => snapshot::handle_due(deps, env, *generation).await,
        Body::RollbackRequested {
            to_generation,
            requested_by,
            reason,
        } => snapshot::handle_rollback(deps, env, *to_generation, requested_by, reason).await,
        Body::BudgetThresholdCrossed { .. } | Body::BudgetSweep {} => {
            cost_guard::handle(deps, env).await
        }
        Body::SystemTick { scheduled_at } => {
            stages::tick::handle_system(deps, env, *scheduled_at).await
        }
        Body::TickPage {
            scheduled_at,
            after,
        } => stages::tick::run_page(deps, &env.id, *scheduled_at, Some(after)).await,
        Body::SystemOverBudget {
            period_key,
            spent_nano,
            limit_nano,
            ..
        } => {
            cost_guard::handle_system_over_budget(deps, env, period_key, *spent_nano, *limit_nano)
                .await
        }
        body
        @ (Body::DnaUpdated { .. } | Body::DnaRolledBack { .. } | Body::AlertRaised { .. }) => {
            Err(StageError::WrongStage(body.type_name()))
        }
    }
}

async fn commit_and_send(
    deps: &Deps,
    bus: &dyn Bus,
    key: &str,
    hash: &str,
    output: StageOutput,
    last_try: bool,
) -> Result<Handled, Failed> {
    let now = deps.clock.now();
    let observed = Observed::of(&output.writes);
    // The fan-out goes first: until the commit below records the key as completed, a failure
    // here leaves the message to be redelivered, and the stage derives the same messages again.
    if let Err(e) = send(bus, &output.fanout).await {
        release(deps, key).await;
        return Err(bus_denied(&e));
    }
    let tx = Transaction {
        writes: output.writes,
        completion: Some(Completion {
            key: key.to_owned(),
            payload_hash: hash.to_owned(),
            outgoing: output.messages.clone(),
            completed_at: now,
            // Until the messages are sent, the record is what re-sends them: keep it as long
            // as the message that will redeliver it may wait in a dead-letter queue.
            expires_at: now
                + Duration::seconds(if output.messages.is_empty() {
                    deps.config.idempotency_ttl_seconds
                } else {
                    deps.config
                        .outbox_retention_seconds
                        .max(deps.config.idempotency_ttl_seconds)
                }),
        }),
    };
    let writes = tx.writes.len();
    let committed = deps
        .store
        .commit(tx)
        .instrument(info_span!(
            "store_transaction",
            otel.name = "store commit",
            writes,
            messages = output.messages.len()
        ))
        .await;
    if let Err(e) = committed {
        if matches!(e, StoreError::ConditionFailed(_)) && !last_try {
            return Err(Failed::Conflict(e.into()));
        }
        release(deps, key).await;
        return Err(store_denied(e));
    }
    // Committed: from here a failure only delays the messages; the redelivery re-sends them.
    send(bus, &output.messages)
        .await
        .map_err(|e| committed_send_failed(&e))?;
    if !output.messages.is_empty() {
        mark_sent(deps, key).await;
    }
    let sent = output.messages.len() + output.fanout.len();
    debug!(summary = %output.summary, sent, "processed");
    Ok(Handled::Processed {
        summary: output.summary,
        sent,
        observed,
    })
}

async fn send(bus: &dyn Bus, messages: &[crate::domain::Outgoing]) -> Result<(), BusError> {
    if messages.is_empty() {
        return Ok(());
    }
    bus.send(messages).await
}

fn bus_error(e: &BusError) -> PipelineError {
    match e {
        BusError::Unavailable(_) => PipelineError::retryable("BusUnavailable", e.to_string()),
        BusError::Refused(_) => PipelineError::permanent("MessageRefused", e.to_string()),
        BusError::Denied(_) => PipelineError::permanent("AccessDenied", e.to_string()),
    }
}

/// A send of committed messages that failed. The transaction stands, so the message is never
/// dead-lettered for it as if nothing had happened: it is left for redelivery, which re-sends
/// from the outbox (after `maxReceiveCount` receives SQS moves it to the dead-letter queue
/// itself, and a redrive re-sends from the outbox, which is kept longer than that queue keeps
/// messages). An authorization failure still raises its security alert.
fn committed_send_failed(e: &BusError) -> Failed {
    let retry = PipelineError::retryable(
        "CommittedNotSent",
        format!("committed, not yet sent (a redelivery re-sends from the outbox): {e}"),
    );
    warn!(error = %e, "committed messages not sent");
    match e.security_event().cloned() {
        Some(event) => Failed::Security(retry, event),
        None => Failed::Other(retry),
    }
}

/// Best effort: if it fails, a later duplicate re-sends messages consumers already deduplicate.
async fn mark_sent(deps: &Deps, key: &str) {
    let until = deps.clock.now() + Duration::seconds(deps.config.idempotency_ttl_seconds);
    if let Err(e) = deps.store.mark_sent(key, until).await {
        warn!(error = %e, "could not mark the outbox sent");
    }
}

async fn release(deps: &Deps, key: &str) {
    if let Err(e) = deps.store.release(key).await {
        // The claim then expires on its own after `in_progress_seconds`.
        warn!(error = %e, "could not release the idempotency claim");
    }
}

#[cfg(test)]
mod tests;
