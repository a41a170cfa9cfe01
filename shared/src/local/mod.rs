//! The local home: the same stages and pipeline in one process, on an in-process bus with a
//! simulated clock, with an [`Evaluator`] playing the running system. This is what `evolve
//! demo` and `evolve run` drive; nothing here exists only for the demo.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Duration, DurationRound, Utc};
use tracing::{Instrument, debug, warn};

use crate::bus::Bus;
use crate::bus::local::{Delivery, LocalBus};
use crate::clock::{Clock, SimClock};
use crate::domain::{
    Alert, Body, Destination, Envelope, Genes, HeadStatus, Outgoing, SystemId, Topic, derive_id,
    genes_from_json,
};
use crate::evaluator::Evaluator;
use crate::pipeline::{self, PipelineError};
use crate::stages::Deps;
use crate::store::StoreError;

mod init;
mod report;
mod settings;
mod sides;

pub use init::{InitError, init_system};
use report::report;
pub use report::{DecisionCounts, RoleCounts, RunReport};
pub use settings::{MIN_CYCLE_INTERVAL_SECONDS, SettingsChange, SettingsError, change_settings};

/// How far ahead [`LocalRunner::settle`] follows delayed messages.
pub const SETTLE_HORIZON: Duration = Duration::minutes(5);

/// How a local run proceeds.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Evaluated mutation generations to complete before stopping.
    pub generations: u32,
    /// Delay before a failed delivery is received again (the SQS visibility timeout).
    pub visibility_timeout: Duration,
    /// Receives before a message goes to the dead-letter list (SQS `maxReceiveCount`).
    pub max_receives: u32,
    /// Stop when this much simulated time passes without a closed evaluation.
    pub max_idle: Duration,
    /// What to do when a decision is held for approval.
    pub pending: PendingPolicy,
    /// Who answers pending approvals under `ApproveAll` / `RejectAll` (the OS user).
    pub operator: String,
}

/// How an unattended local run treats a decision held for approval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PendingPolicy {
    /// Stop the run and say how to continue (the pending decision stays for `evolve approve`).
    #[default]
    Stop,
    /// Approve it in the operator's name (`--approve-all`).
    ApproveAll,
    /// Reject it in the operator's name (`--reject-pending`).
    RejectAll,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            generations: 30,
            visibility_timeout: Duration::seconds(30),
            max_receives: 5,
            max_idle: Duration::days(2),
            pending: PendingPolicy::Stop,
            operator: "operator".into(),
        }
    }
}

/// Progress callbacks, for the CLI's progress bar and stderr alerts.
pub trait Observer: Send + Sync {
    fn generation_closed(&self, _done: u32, _generation: u64, _fitness: Option<f64>, _kept: bool) {}
    fn alert(&self, _alert: &Alert) {}
    fn dead_letter(&self, _reason: &str) {}
}

/// An observer that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct Silent;
impl Observer for Silent {}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("unknown system {0}")]
    UnknownSystem(SystemId),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Runs the pipeline locally until `generations` evaluations have closed.
#[derive(Debug)]
pub struct LocalRunner<'a> {
    pub deps: &'a Deps,
    pub bus: &'a LocalBus,
    pub clock: &'a SimClock,
    pub evaluator: &'a dyn Evaluator,
    /// The generations this run measured: like a running system that applies a generation
    /// once, a later `DnaUpdated` for one of them (generation 0's, published at `init`, after
    /// the start-up measurement) costs no second measurement.
    /// Keyed by the samples the window asks for and whether a canary was promoted too: an
    /// extended window asks for more, and a promoted canary is measured on every instance, and
    /// its generation is announced again for each.
    measured: std::sync::Mutex<std::collections::BTreeSet<(SystemId, u64, u32, bool)>>,
}

/// Where a run stands between deliveries.
#[derive(Debug)]
struct Progress {
    /// Mutation generations closed so far.
    done: u32,
    dead_letters: Vec<String>,
    /// The last generation whose evaluation closed, to tell a new closing from an old one.
    last_closed: Option<u64>,
    /// When an evaluation last closed or a verdict was last sent: the idle limit counts from it.
    last_progress: DateTime<Utc>,
    next_tick: DateTime<Utc>,
}

impl LocalRunner<'_> {
    pub async fn run(
        &self,
        system_id: &SystemId,
        opts: &RunOptions,
        observer: &dyn Observer,
    ) -> Result<RunReport, RunError> {
        let store = &self.deps.store;
        let head = store
            .get_head(system_id)
            .await?
            .ok_or_else(|| RunError::UnknownSystem(system_id.clone()))?;
        // Never run time backwards past what the store already recorded.
        self.clock
            .advance_to(head.updated_at + Duration::seconds(1));
        let started_at = self.clock.now();
        let mut progress = Progress {
            done: 0,
            dead_letters: Vec::new(),
            last_closed: self.last_closed(system_id).await?,
            last_progress: started_at,
            next_tick: started_at
                .duration_trunc(Duration::minutes(1))
                .unwrap_or(started_at),
        };

        // The running system starts: it measures the head if an evaluation is waiting for it.
        self.measure_if_evaluating(system_id, None).await?;

        let mut stopped = None;
        while progress.done < opts.generations {
            let now = self.clock.now();
            if now >= progress.next_tick {
                self.tick(progress.next_tick, &mut progress.dead_letters, observer)
                    .await;
                progress.next_tick += Duration::minutes(1);
                continue;
            }
            if let Some(delivery) = self.bus.pop_due(now) {
                self.deliver(system_id, delivery, opts, &mut progress, observer)
                    .await?;
            } else if let Some(reason) = self.idle(system_id, opts, &mut progress, now).await? {
                stopped = Some(reason);
                break;
            }
        }
        report(
            self.deps,
            system_id,
            started_at,
            head.generation,
            head.stable_fitness,
            progress.done,
            stopped,
            progress.dead_letters,
        )
        .await
    }

    async fn last_closed(&self, system_id: &SystemId) -> Result<Option<u64>, RunError> {
        let last = self.deps.store.list_history(system_id, 1).await?;
        Ok(last.last().map(|h| h.generation))
    }

    /// Nothing is due on the bus: answers a pending approval, skips ahead to the next moment
    /// something can happen, or says why the run stops there.
    async fn idle(
        &self,
        system_id: &SystemId,
        opts: &RunOptions,
        progress: &mut Progress,
        now: DateTime<Utc>,
    ) -> Result<Option<String>, RunError> {
        let head = self.deps.store.get_head(system_id).await?;
        if head
            .as_ref()
            .is_some_and(|h| h.status == HeadStatus::Paused)
            && self.bus.pending() == 0
        {
            return Ok(Some("the system is paused".to_owned()));
        }
        if let Some(approval) = head
            .as_ref()
            .filter(|h| h.status == HeadStatus::AwaitingApproval)
            .and_then(|h| h.approval.as_ref())
            .filter(|a| a.expires_at > now && self.bus.pending() == 0)
        {
            let approve = match opts.pending {
                PendingPolicy::Stop => {
                    return Ok(Some(format!(
                        "decision {} awaits approval",
                        approval.decision_id
                    )));
                }
                PendingPolicy::ApproveAll => true,
                PendingPolicy::RejectAll => false,
            };
            let verdict = verdict_message(
                system_id,
                &approval.decision_id,
                approve,
                &opts.operator,
                None,
                now,
            );
            self.bus
                .send(&[Outgoing::new(verdict)])
                .await
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            progress.last_progress = now;
            return Ok(None);
        }
        if now - progress.last_progress > opts.max_idle {
            return Ok(Some(format!(
                "no evaluation closed in {} hours of simulated time",
                opts.max_idle.num_hours()
            )));
        }
        if self.bus.pending() == 0 {
            self.skip_to_due(system_id, progress).await?;
        }
        let wake = self
            .bus
            .next_visible_at()
            .map_or(progress.next_tick, |at| at.min(progress.next_tick));
        self.clock.advance_to(wake);
        Ok(None)
    }

    /// Nothing in flight: the next tick that can act is the one at which the system falls due,
    /// so the idle minutes in between are skipped.
    async fn skip_to_due(
        &self,
        system_id: &SystemId,
        progress: &mut Progress,
    ) -> Result<(), RunError> {
        if let Some(due) = self.next_due(system_id).await? {
            let due = due.duration_trunc(Duration::minutes(1)).unwrap_or(due);
            if due > progress.next_tick {
                progress.next_tick = due;
            }
        }
        Ok(())
    }

    /// Dispatches one due delivery and, when it may have closed an evaluation, counts the
    /// generation it closed.
    async fn deliver(
        &self,
        system_id: &SystemId,
        delivery: Delivery,
        opts: &RunOptions,
        progress: &mut Progress,
        observer: &dyn Observer,
    ) -> Result<(), RunError> {
        self.clock.advance(Duration::seconds(1));
        let closes = matches!(
            delivery.outgoing.envelope.body,
            Body::FitnessReported { .. }
                | Body::EvaluationDue { .. }
                | Body::RollbackRequested { .. }
        );
        self.dispatch(delivery, opts, &mut progress.dead_letters, observer)
            .await?;
        if !closes {
            return Ok(());
        }
        let last = self.deps.store.list_history(system_id, 1).await?.pop();
        if let Some(entry) = last.filter(|h| Some(h.generation) != progress.last_closed) {
            progress.last_closed = Some(entry.generation);
            progress.last_progress = self.clock.now();
            if !entry.changes.is_empty() {
                progress.done += 1;
                observer.generation_closed(
                    progress.done,
                    entry.generation,
                    entry.fitness,
                    entry.outcome == crate::domain::EvaluationOutcome::Keep,
                );
            }
        }
        Ok(())
    }

    /// Processes what is on the bus (an operator's verdict, say) until nothing is left for the
    /// pipeline, without ticks and without measuring: the running system measures a new
    /// generation when the next `run` starts, so this needs no evaluator. Messages delayed
    /// past [`SETTLE_HORIZON`] (an empty plan's retry, a deferral) are left to the ticks of the
    /// next run, which find the system due again. Returns the dead letters.
    pub async fn settle(
        &self,
        opts: &RunOptions,
        observer: &dyn Observer,
    ) -> Result<Vec<String>, RunError> {
        let horizon = self.clock.now() + SETTLE_HORIZON;
        let mut dead_letters = Vec::new();
        loop {
            let now = self.clock.now();
            let Some(delivery) = self.bus.pop_due(now) else {
                match self.bus.next_visible_at().filter(|at| *at <= horizon) {
                    Some(at) => {
                        self.clock.advance_to(at.max(now));
                        continue;
                    }
                    None => return Ok(dead_letters),
                }
            };
            self.clock.advance(Duration::seconds(1));
            if matches!(
                delivery.outgoing.destination,
                Destination::Topic(Topic::EvolutionEvents)
            ) {
                continue;
            }
            self.dispatch(delivery, opts, &mut dead_letters, observer)
                .await?;
        }
    }

    /// When the tick next has something to do for the system: its next cycle, or the deadline
    /// of its open evaluation window.
    async fn next_due(&self, system_id: &SystemId) -> Result<Option<DateTime<Utc>>, RunError> {
        let store = &self.deps.store;
        let (Some(system), Some(head)) = (
            store.get_system(system_id).await?,
            store.get_head(system_id).await?,
        ) else {
            return Ok(None);
        };
        Ok(match head.status {
            HeadStatus::Stable => Some(system.next_cycle_at),
            HeadStatus::Evaluating => head.evaluation.map(|e| e.deadline),
            HeadStatus::AwaitingApproval => head.approval.map(|a| a.expires_at),
            HeadStatus::Paused => None,
        })
    }

    async fn tick(
        &self,
        at: DateTime<Utc>,
        dead_letters: &mut Vec<String>,
        observer: &dyn Observer,
    ) {
        if let Err(e) = pipeline::tick(self.deps, self.bus, at).await {
            warn!(error = %e, "tick failed");
        }
        // `at` is always on a minute, so this is the very sweep the deployed tick sends.
        if let Err(e) = crate::lambda::handle_sweep(self.deps, self.bus, at).await {
            let reason = format!("budget sweep: {e}");
            observer.dead_letter(&reason);
            dead_letters.push(reason);
        }
    }

    async fn dispatch(
        &self,
        delivery: Delivery,
        opts: &RunOptions,
        dead_letters: &mut Vec<String>,
        observer: &dyn Observer,
    ) -> Result<(), RunError> {
        let env = delivery.outgoing.envelope.clone();
        match delivery.outgoing.destination {
            Destination::Queue(queue) => {
                let raw = serde_json::to_string(&env).unwrap_or_default();
                match pipeline::handle_raw(self.deps, self.bus, queue, &raw).await {
                    Ok(handled) => debug!(?handled, "handled"),
                    Err(PipelineError::Retryable(reason))
                        if delivery.receive_count < opts.max_receives =>
                    {
                        debug!(%reason, receives = delivery.receive_count, "will be redelivered");
                        self.bus.redeliver_later(delivery, opts.visibility_timeout);
                    }
                    Err(e) => {
                        let reason = format!("{} {}: {e}", env.body.type_name(), env.id);
                        warn!(%reason, "dead-lettered");
                        observer.dead_letter(&reason);
                        dead_letters.push(reason.clone());
                        self.bus.dead_letter(delivery, reason);
                    }
                }
            }
            Destination::Topic(Topic::EvolutionEvents) => match &env.body {
                Body::DnaUpdated { generation, .. } | Body::DnaRolledBack { generation, .. } => {
                    // The running system's handling is a span of the trace too: its reports
                    // are sent from it (docs/architecture.md, "Tracing").
                    self.measure_if_evaluating(&env.system_id, Some(&env))
                        .instrument(pipeline::message_span(&env, "running-system"))
                        .await?;
                    debug!(generation, "subscriber notified");
                }
                _ => {}
            },
            Destination::Topic(Topic::Alerts) => {
                if let Body::AlertRaised { alert } = &env.body {
                    observer.alert(alert);
                }
            }
        }
        Ok(())
    }

    /// The running system: measure the generation under evaluation and report each sample to
    /// the fitness queue. Samples already reported are not measured again.
    async fn measure_if_evaluating(
        &self,
        system_id: &SystemId,
        cause: Option<&Envelope>,
    ) -> Result<(), RunError> {
        let store = &self.deps.store;
        let Some(head) = store.get_head(system_id).await? else {
            return Ok(());
        };
        // Only the generation under evaluation is measured, and only when the notification (if
        // any) is about that generation: a stale `DnaUpdated` costs no evaluation.
        let announced = cause.and_then(|c| match &c.body {
            Body::DnaUpdated { generation, .. } | Body::DnaRolledBack { generation, .. } => {
                Some(*generation)
            }
            _ => None,
        });
        let Some(eval) = head.evaluation.filter(|e| {
            head.status == HeadStatus::Evaluating && announced.is_none_or(|g| g == e.generation)
        }) else {
            return Ok(());
        };
        let first = self
            .measured
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert((
                system_id.clone(),
                eval.generation,
                eval.samples_required,
                eval.canary.as_ref().is_some_and(|c| !c.beside_control()),
            ));
        if !first {
            return Ok(());
        }
        let generation = store
            .get_generation(system_id, eval.generation)
            .await?
            .ok_or_else(|| {
                StoreError::Corrupt(format!("generation {} missing", eval.generation))
            })?;
        // A subscriber reads the genes from the message and checks them against the checksum.
        let genes = match cause.map(|c| &c.body) {
            Some(
                Body::DnaUpdated {
                    genes, checksum, ..
                }
                | Body::DnaRolledBack {
                    genes, checksum, ..
                },
            ) => {
                let system = store
                    .get_system(system_id)
                    .await?
                    .ok_or_else(|| RunError::UnknownSystem(system_id.clone()))?;
                match genes_from_json(&system.schema, genes) {
                    Some(g) if crate::domain::checksum(&g) == *checksum => g,
                    _ => generation.genes.clone(),
                }
            }
            _ => generation.genes.clone(),
        };
        let cause_id = cause.map_or_else(
            || format!("startup:{}:{}", system_id, eval.generation),
            |c| c.id.clone(),
        );
        let sides = self.sides(system_id, &eval, generation, genes).await?;
        let mut out = Vec::new();
        // The sides are measured in turn, so a drift in the service's load reaches both alike
        // (the point of a concurrent control).
        for i in 0..eval.samples_required {
            for (index, side) in sides.iter().enumerate() {
                if i < side.reported {
                    continue;
                }
                let body = match self.evaluator.evaluate(&side.genes).await {
                    Ok(score) => Body::FitnessReported {
                        generation: side.generation,
                        checksum: side.checksum.clone(),
                        score: Some(score.score),
                        metrics: score.metrics,
                        error: None,
                        cohort: side.cohort,
                    },
                    Err(e) => Body::FitnessReported {
                        generation: side.generation,
                        checksum: side.checksum.clone(),
                        score: None,
                        metrics: BTreeMap::new(),
                        error: Some(e.to_string()),
                        cohort: side.cohort,
                    },
                };
                out.push(Outgoing::new(Envelope::caused_by(
                    &cause_id,
                    cause.map(Envelope::trace).as_ref(),
                    "running-system",
                    i as usize * sides.len() + index,
                    system_id.clone(),
                    eval.generation,
                    self.clock.now(),
                    body,
                )));
            }
        }
        if let Err(e) = self.bus.send(&out).await {
            warn!(error = %e, "could not report fitness");
        }
        Ok(())
    }
}

/// An operator's verdict on a pending approval, as the message `evolve approve` / `reject`
/// sends. The id includes the time so that a second verdict is a new message (which the decide
/// stage turns into a no-op), not a payload mismatch.
pub fn verdict_message(
    system_id: &SystemId,
    decision_id: &str,
    approve: bool,
    approver: &str,
    note: Option<&str>,
    now: DateTime<Utc>,
) -> Envelope {
    let verb = if approve { "approve" } else { "reject" };
    Envelope {
        id: derive_id("msg", &[decision_id, verb, approver, &now.to_rfc3339()]),
        causation_id: decision_id.to_owned(),
        system_id: system_id.clone(),
        base_generation: 0,
        sent_at: now,
        traceparent: None,
        body: Body::ApprovalGiven {
            decision_id: decision_id.to_owned(),
            approve,
            approver: approver.to_owned(),
            note: note.map(str::to_owned),
        },
    }
}

/// An operator's resume of the head paused at `generation`, as the message `evolve resume`
/// sends. Like a verdict, its id includes the time, so a second resume is a new message (which
/// the decide stage turns into a no-op), not a payload mismatch.
pub fn resume_message(
    system_id: &SystemId,
    generation: u64,
    requested_by: &str,
    note: Option<&str>,
    now: DateTime<Utc>,
) -> Envelope {
    Envelope {
        id: derive_id(
            "msg",
            &[
                system_id.as_str(),
                "resume",
                &generation.to_string(),
                requested_by,
                &now.to_rfc3339(),
            ],
        ),
        causation_id: format!("operator:{requested_by}"),
        system_id: system_id.clone(),
        base_generation: generation,
        sent_at: now,
        traceparent: None,
        body: Body::ResumeRequested {
            requested_by: requested_by.to_owned(),
            note: note.map(str::to_owned),
        },
    }
}

/// Everything a local invocation needs, wired once.
#[derive(Debug)]
pub struct LocalHome {
    pub deps: Deps,
    pub bus: Arc<LocalBus>,
    pub clock: Arc<SimClock>,
}

impl LocalHome {
    /// Wires ports around a store that is also the ledger and the control state.
    pub fn new(
        store: Arc<dyn crate::store::FullStore>,
        llm: Arc<dyn crate::llm::LanguageModel>,
        start: DateTime<Utc>,
        config: crate::stages::PipelineConfig,
    ) -> Self {
        let clock = Arc::new(SimClock::new(start));
        let deps = Deps {
            store: store.clone(),
            control: store.clone(),
            ledger: store,
            llm,
            clock: clock.clone(),
            money_clock: clock.clone(),
            config,
        };
        let bus = Arc::new(LocalBus::new(clock.clone()));
        Self { deps, bus, clock }
    }

    /// A home for one operator action (creating a system, a rollback, a resume): the stages
    /// these run call no LLM, so the seeded local engine only fills the port, and the default
    /// configuration applies.
    pub fn for_operator_action(
        store: Arc<dyn crate::store::FullStore>,
        now: DateTime<Utc>,
    ) -> Self {
        Self::new(
            store,
            Arc::new(crate::engine::LocalEngine::new(0)),
            now,
            crate::stages::PipelineConfig::default(),
        )
    }

    /// Counts the budgets by `clock` instead of the simulated one: what a run whose LLM spends
    /// real money (Bedrock) needs, since the ledger records that money by the real date.
    #[must_use]
    pub fn with_money_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.deps.money_clock = clock;
        self
    }

    /// [`LocalRunner::settle`] without an evaluator: it never measures.
    pub async fn settle(
        &self,
        opts: &RunOptions,
        observer: &dyn Observer,
    ) -> Result<Vec<String>, RunError> {
        self.runner(&NeverMeasures).settle(opts, observer).await
    }

    pub fn runner<'a>(&'a self, evaluator: &'a dyn Evaluator) -> LocalRunner<'a> {
        LocalRunner {
            deps: &self.deps,
            bus: &self.bus,
            clock: &self.clock,
            evaluator,
            measured: std::sync::Mutex::default(),
        }
    }
}

/// The evaluator of [`LocalHome::settle`], which skips every measurement.
#[derive(Debug)]
struct NeverMeasures;

#[async_trait::async_trait]
impl Evaluator for NeverMeasures {
    async fn evaluate(
        &self,
        _genes: &Genes,
    ) -> Result<crate::domain::FitnessScore, crate::evaluator::EvalError> {
        Err(crate::evaluator::EvalError::Spawn(
            "settling the pipeline does not measure".into(),
        ))
    }
}
