//! analyze: owns the plan cursor. On `CycleRequested` it feeds the previous step's outcome back
//! into the cursor, then either proposes the plan's next step or asks the Evolution Advisor for
//! a fresh analysis (which strategize turns into a new plan).
//!
//! Re-plan triggers: no plan, the plan is exhausted, a step without a contingency was rolled
//! back, reality diverged from the plan (the head moved outside it, the stable fitness fell
//! below the plan's `min_fitness`, or a kept step missed its prediction by more than the plan's
//! `max_prediction_error`), or an in-flight step or analysis was lost.

use chrono::{DateTime, Duration, Utc};
use tracing::info;

use super::{
    Deps, StageError, StageOutput, StageResult, call_context, complexity_of, dna_view, load_system,
    record_call, reply,
};
use crate::domain::{
    AnalysisRecord, Body, CycleReason, Envelope, EvaluationOutcome, EventType, EvolutionEvent,
    Head, HeadStatus, InFlight, Mutation, Plan, PlanCursor, PlanStep, PlanStepRef, ReplanReason,
    Role, StepOutcome, derive_id,
};
use crate::llm::AnalyzeRequest;
use crate::store::{SystemRecord, Write};

/// What the cursor learned from the message, before deciding what to do next.
#[derive(Debug, Default)]
struct Learned {
    replan: Option<ReplanReason>,
    /// Propose the contingency of this step next.
    contingency_of: Option<u32>,
}

pub async fn handle(deps: &Deps, env: &Envelope, reason: &CycleReason) -> StageResult {
    let (system, head) = load_system(deps, &env.system_id).await?;
    let mut cycle = Cycle::load(deps, env, head).await?;
    if let Some(noop) = cycle.learn(reason).await? {
        return Ok(noop);
    }
    if let Some(why) = cycle.waits(reason).await? {
        return Ok(cycle.commit_cursor_only(why));
    }
    cycle.check_divergence();
    if let Some(out) = cycle.propose_next() {
        return Ok(out);
    }
    cycle.replan(&system).await
}

/// One cycle of the plan cursor: the cursor as stored (whether it moved, and the version its
/// write is conditioned on), the cursor being moved, its plan, and what it learned.
struct Cycle<'a> {
    deps: &'a Deps,
    env: &'a Envelope,
    head: Head,
    now: DateTime<Utc>,
    stored: Option<PlanCursor>,
    cursor: PlanCursor,
    plan: Option<Plan>,
    learned: Learned,
}

impl<'a> Cycle<'a> {
    async fn load(deps: &'a Deps, env: &'a Envelope, head: Head) -> Result<Self, StageError> {
        let now = deps.clock.now();
        let stored = deps.store.get_cursor(&env.system_id).await?;
        let cursor = stored
            .clone()
            .unwrap_or_else(|| PlanCursor::new(env.system_id.clone(), head.generation));
        let plan = match &cursor.plan_id {
            Some(id) => deps.store.get_plan(&env.system_id, id).await?,
            None => None,
        };
        Ok(Self {
            deps,
            env,
            head,
            now,
            stored,
            cursor,
            plan,
            learned: Learned::default(),
        })
    }

    fn expected_version(&self) -> Option<u64> {
        self.stored.as_ref().map(|c| c.version)
    }

    /// Feeds what the message reports into the cursor. A step outcome that is not awaited
    /// ends the cycle as a no-op.
    async fn learn(&mut self, reason: &CycleReason) -> Result<Option<StageOutput>, StageError> {
        match reason {
            CycleReason::Step { step, outcome } => {
                let awaited = feed_outcome(
                    self.deps,
                    &mut self.cursor,
                    &mut self.plan,
                    step,
                    outcome,
                    &mut self.learned,
                )
                .await?;
                if !awaited {
                    return Ok(Some(StageOutput::noop(format!(
                        "outcome of {}#{} is not awaited",
                        step.plan_id, step.step
                    ))));
                }
                // The generation the outcome left the head at: a later move is not the plan's.
                self.cursor.expected_generation = self.env.base_generation;
            }
            CycleReason::PlanEmpty => {
                if matches!(self.cursor.in_flight, InFlight::AwaitingPlan { .. }) {
                    self.cursor.in_flight = InFlight::Idle;
                    self.learned.replan = Some(ReplanReason::NoPlan);
                }
            }
            CycleReason::Scheduled | CycleReason::HeadMoved | CycleReason::RetryLater => {}
        }
        Ok(None)
    }

    /// Why the cycle should go no further now, if it should not. A proposal or analysis in
    /// flight is waited for unless it has been lost, which this recovers from.
    async fn waits(&mut self, reason: &CycleReason) -> Result<Option<String>, StageError> {
        let head = &self.head;
        if head.status != HeadStatus::Stable {
            return Ok(Some(format!("head is {}", head.status.as_str())));
        }
        if matches!(reason, CycleReason::Scheduled) && self.env.base_generation != head.generation {
            return Ok(Some("stale scheduled cycle".into()));
        }
        let since = match &self.cursor.in_flight {
            InFlight::Idle => None,
            InFlight::Step { since, .. } | InFlight::AwaitingPlan { since, .. } => Some(*since),
        };
        if let Some(since) = since {
            let timeout = Duration::seconds(self.deps.config.in_flight_timeout_seconds);
            if self.now - since < timeout {
                return Ok(Some("a proposal is in flight".into()));
            }
            recover_lost(
                self.deps,
                &mut self.cursor,
                self.plan.as_ref(),
                &mut self.learned,
            )
            .await?;
            self.cursor.expected_generation = head.generation;
        }
        Ok(None)
    }

    /// Ends the cycle, keeping what the cursor learned when it learned anything.
    fn commit_cursor_only(self, why: String) -> StageOutput {
        let mut out = StageOutput::noop(why);
        if self.stored.as_ref() != Some(&self.cursor) {
            out.writes
                .push(put_cursor(self.expected_version(), self.cursor));
        }
        out
    }

    /// Divergence: reality moved outside the plan.
    fn check_divergence(&mut self) {
        if self.learned.replan.is_some() {
            return;
        }
        let Some(p) = &self.plan else {
            return;
        };
        let head = &self.head;
        if self.cursor.expected_generation != head.generation {
            self.learned.replan = Some(ReplanReason::Diverged {
                why: format!(
                    "head moved to generation {} outside the plan (expected {})",
                    head.generation, self.cursor.expected_generation
                ),
            });
        } else if let (Some(min), Some(fitness)) =
            (p.success_criteria.get("min_fitness"), head.stable_fitness)
        {
            if fitness < *min {
                self.learned.replan = Some(ReplanReason::Diverged {
                    why: format!("stable fitness {fitness} fell below the plan's {min}"),
                });
            }
        }
    }

    /// Proposes the plan's next step (or the contingency of the last one), unless the cycle
    /// must re-plan; with no step left, it must.
    fn propose_next(&mut self) -> Option<StageOutput> {
        if self.learned.replan.is_some() {
            return None;
        }
        let Some((index, step, contingency)) = self.next_step() else {
            self.learned.replan = Some(if self.plan.is_some() {
                ReplanReason::Exhausted
            } else {
                ReplanReason::NoPlan
            });
            return None;
        };
        let p = self.plan.as_ref()?;
        let (head, now) = (&self.head, self.now);
        if !contingency {
            self.cursor.next_step = index + 1;
        }
        self.cursor.in_flight = InFlight::Step {
            step: index,
            contingency,
            since: now,
        };
        self.cursor.expected_generation = head.generation;
        let mut out = StageOutput::default();
        out.messages.push(propose(
            self.env,
            p,
            index,
            &step,
            contingency,
            head.generation,
            now,
        ));
        out.writes
            .push(put_cursor(self.expected_version(), self.cursor.clone()));
        out.summary = format!(
            "proposed {}step {index} of {}",
            if contingency {
                "the contingency of "
            } else {
                ""
            },
            p.plan_id
        );
        Some(out)
    }

    /// The step to propose: its index, the step, and whether it is a contingency.
    fn next_step(&self) -> Option<(u32, PlanStep, bool)> {
        let p = self.plan.as_ref()?;
        match self.learned.contingency_of {
            Some(s) => p
                .steps
                .get(s as usize)
                .and_then(|st| st.contingency.as_deref())
                .map(|c| (s, c.clone(), true)),
            None => p
                .steps
                .get(self.cursor.next_step as usize)
                .map(|st| (self.cursor.next_step, st.clone(), false)),
        }
    }

    /// Re-plan: asks the Evolution Advisor for a fresh analysis, which strategize turns into
    /// a new plan.
    async fn replan(mut self, system: &SystemRecord) -> StageResult {
        let (deps, env, now) = (self.deps, self.env, self.now);
        let generation = self.head.generation;
        let replan = self.learned.replan.take().unwrap_or(ReplanReason::NoPlan);
        let (dna, history) = dna_view(deps, system, &self.head).await?;
        let complexity = complexity_of(dna.genes.len(), &history);
        let ctx = call_context(deps, env, Role::Analyze, complexity, false).await?;
        let answer = deps
            .llm
            .analyze(&AnalyzeRequest { ctx, dna, history })
            .await?;
        let analysis_id = derive_id("ana", &[&env.id]);
        info!(%analysis_id, model = %answer.model_id, ?replan, "analysis requested a new plan");
        let mut out = StageOutput::default();
        record_call(&mut out, env, Role::Analyze, &answer, now);
        out.writes.push(Write::PutAnalysis {
            analysis: AnalysisRecord {
                analysis_id: analysis_id.clone(),
                system_id: env.system_id.clone(),
                generation,
                analysis: answer.value,
                model_used: answer.model_id,
                created_at: now,
                cache_hit: answer.cache_hit,
            },
        });
        let expected_version = self.expected_version();
        let cursor = &mut self.cursor;
        cursor.plan_id = None;
        cursor.next_step = 0;
        cursor.in_flight = InFlight::AwaitingPlan {
            analysis_id: analysis_id.clone(),
            since: now,
        };
        cursor.expected_generation = generation;
        cursor.last_replan = Some(replan.clone());
        out.writes.push(put_cursor(expected_version, self.cursor));
        out.messages.push(reply(
            env,
            "analyze",
            0,
            generation,
            now,
            Body::AnalysisReady { analysis_id },
        ));
        out.summary = format!("re-plan ({replan:?}): analysis sent to strategize");
        Ok(out)
    }
}

/// The cursor write, conditioned on the version read: two cycles racing on one cursor cannot
/// both move it.
fn put_cursor(expected_version: Option<u64>, mut cursor: PlanCursor) -> Write {
    cursor.version = expected_version.map_or(0, |v| v + 1);
    Write::PutCursor {
        expected_version,
        cursor,
    }
}

/// Applies a step outcome to the cursor. Returns false when the outcome is not the one awaited
/// (a duplicate or stale report), which leaves the cursor alone.
async fn feed_outcome(
    deps: &Deps,
    cursor: &mut PlanCursor,
    plan: &mut Option<Plan>,
    step: &PlanStepRef,
    outcome: &StepOutcome,
    learned: &mut Learned,
) -> Result<bool, StageError> {
    let contingency = match &cursor.in_flight {
        InFlight::Step {
            step: s,
            contingency,
            ..
        } if cursor.plan_id.as_deref() == Some(step.plan_id.as_str()) && *s == step.step => {
            *contingency
        }
        InFlight::AwaitingPlan { analysis_id, .. } if step.step == 0 => {
            // The first step of a new plan was proposed by strategize: adopt that plan.
            let Some(p) = deps
                .store
                .get_plan(&cursor.system_id, &step.plan_id)
                .await?
            else {
                return Ok(false);
            };
            if &p.analysis_id != analysis_id {
                return Ok(false);
            }
            cursor.plan_id = Some(p.plan_id.clone());
            cursor.next_step = 1;
            *plan = Some(p);
            false
        }
        _ => return Ok(false),
    };
    cursor.in_flight = InFlight::Idle;
    match outcome {
        StepOutcome::Kept { actual_impact } => {
            if let Some(p) = plan.as_ref() {
                let predicted = p
                    .steps
                    .get(step.step as usize)
                    .map_or(0.0, |s| s.predicted_impact);
                if let Some(max_err) = p.success_criteria.get("max_prediction_error") {
                    let err = (actual_impact - predicted).abs();
                    if err > *max_err {
                        learned.replan = Some(ReplanReason::Diverged {
                            why: format!(
                                "step {} changed fitness by {actual_impact}, predicted {predicted}",
                                step.step
                            ),
                        });
                    }
                }
            }
        }
        StepOutcome::RolledBack => {
            let has_contingency = plan
                .as_ref()
                .and_then(|p| p.steps.get(step.step as usize))
                .is_some_and(|s| s.contingency.is_some());
            if contingency {
                // Both directions failed; the plan goes on with its next step.
            } else if has_contingency {
                learned.contingency_of = Some(step.step);
            } else {
                learned.replan = Some(ReplanReason::RolledBack { step: step.step });
            }
        }
        StepOutcome::Rejected { .. } => {}
    }
    Ok(true)
}

/// An in-flight step or analysis outlived the timeout: its message was lost (or the local runner
/// stopped with it in flight). Recover the outcome from the history when the step got that far.
async fn recover_lost(
    deps: &Deps,
    cursor: &mut PlanCursor,
    plan: Option<&Plan>,
    learned: &mut Learned,
) -> Result<(), StageError> {
    let in_flight = std::mem::replace(&mut cursor.in_flight, InFlight::Idle);
    let InFlight::Step {
        step, contingency, ..
    } = in_flight
    else {
        learned.replan = Some(ReplanReason::Stalled);
        return Ok(());
    };
    let Some(plan_id) = plan.map(|p| p.plan_id.clone()) else {
        learned.replan = Some(ReplanReason::Stalled);
        return Ok(());
    };
    let history = deps.store.list_history(&cursor.system_id, 5).await?;
    let closed = history.iter().rev().find(|h| {
        h.plan_step
            .as_ref()
            .is_some_and(|r| r.plan_id == plan_id && r.step == step)
    });
    let has_contingency = plan
        .and_then(|p| p.steps.get(step as usize))
        .is_some_and(|s| s.contingency.is_some());
    match closed.map(|h| h.outcome) {
        Some(EvaluationOutcome::Rollback | EvaluationOutcome::Inconclusive) if !contingency => {
            if has_contingency {
                learned.contingency_of = Some(step);
            } else {
                learned.replan = Some(ReplanReason::RolledBack { step });
            }
        }
        // Kept, rolled-back contingency, or never decided: move on to the next step.
        _ => {}
    }
    Ok(())
}

fn propose(
    env: &Envelope,
    plan: &Plan,
    index: u32,
    step: &PlanStep,
    contingency: bool,
    generation: u64,
    now: chrono::DateTime<chrono::Utc>,
) -> crate::domain::Outgoing {
    let mutation = Mutation {
        id: derive_id(
            "mut",
            &[&plan.plan_id, &index.to_string(), &contingency.to_string()],
        ),
        changes: step.changes.clone(),
        description: step.rationale.clone(),
        predicted_impact: step.predicted_impact,
        plan_step: Some(PlanStepRef {
            plan_id: plan.plan_id.clone(),
            step: index,
        }),
    };
    reply(
        env,
        "analyze",
        0,
        generation,
        now,
        Body::MutationProposed {
            mutation,
            deferrals: 0,
        },
    )
}

/// An event noting a new plan, for the audit trail (used by strategize).
pub(crate) fn plan_event(plan: &Plan) -> EvolutionEvent {
    EvolutionEvent {
        trace_id: None,
        message_id: None,
        id: derive_id("evt", &[&plan.plan_id]),
        timestamp: plan.created_at,
        event_type: EventType::PlanCreated,
        generation: plan.base_generation,
        fitness_delta: None,
        mutation_id: None,
        bedrock_analysis: None,
        system_context: None,
        storage_metadata: None,
        system_id: Some(plan.system_id.clone()),
        detail: Some(format!(
            "{} steps, {} dropped{} by {}",
            plan.steps.len(),
            plan.dropped.len(),
            if plan.truncated { ", truncated" } else { "" },
            plan.model_used
        )),
    }
}
