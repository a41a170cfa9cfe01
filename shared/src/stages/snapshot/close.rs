//! The Rollback Manager: the close of an evaluation window. Every close writes the history
//! entry and the strategist's prediction record; then the head is either kept or moved on to a
//! generation that restores the parent's genes.

use chrono::{DateTime, Utc};

use super::verdict::{Judged, Judgement, Window, extend, judge_window, promote};
use super::{ConflictContext, dna_rolled_back, event, raise_conflict, restoring};
use crate::domain::judging::{Finding, Significance};
use crate::domain::{
    Alert, AlertLevel, BedrockAnalysis, Body, ConflictKind, CycleReason, Envelope, Evaluation,
    EvaluationOutcome, EventType, FitnessSample, Generation, Head, HeadStatus, HistoryEntry,
    Origin, Severity, StepOutcome, SystemContext, derive_id,
};
use crate::stages::rollback::{self, FitnessSummary};
use crate::stages::{Deps, StageError, StageOutput, cap, load_generation, reply};
use crate::store::{SystemRecord, Write};

/// The Rollback Manager at the close of a window: keep, or roll back by committing the parent's
/// genes as a new generation. Inconclusive windows roll back.
#[allow(clippy::too_many_arguments)]
pub(super) async fn close_window(
    deps: &Deps,
    env: &Envelope,
    mut system: SystemRecord,
    head: Head,
    eval: Evaluation,
    current: Generation,
    samples: &[FitnessSample],
    pending_control: Option<&FitnessSample>,
    now: DateTime<Utc>,
    out: &mut StageOutput,
) -> Result<(), StageError> {
    let summary = rollback::summarize(samples, eval.generation, &current.checksum);
    let metrics = rollback::mean_metrics(samples, eval.generation, &current.checksum);
    let window = Window {
        eval: &eval,
        current: &current,
        samples,
        summary,
        metrics: &metrics,
        pending_control,
    };
    let judged = match judge_window(deps, &system, &window).await? {
        Judgement::Close(judged) => judged,
        Judgement::Extend(significance) => {
            extend(env, system, &head, &eval, &current, significance, now, out);
            return Ok(());
        }
        Judgement::Promote(judged) => {
            promote(env, system, &head, &eval, &current, &judged, now, out);
            return Ok(());
        }
    };
    let outcome = judged.outcome;
    let (changes, decision_id, mutation_id) = match &current.origin {
        Origin::Mutation {
            decision_id,
            mutation,
        } => (
            mutation.changes.clone(),
            Some(decision_id.clone()),
            Some(mutation.id.clone()),
        ),
        _ => (Vec::new(), None, None),
    };
    let actual_impact = match (summary.mean, judged.baseline) {
        (Some(m), Some(b)) => Some(m - b),
        _ => None,
    };
    let analysis = match &decision_id {
        Some(id) => engine_analysis(deps, env, id, &eval, actual_impact).await?,
        None => None,
    };
    record_prediction(deps, env, &eval, actual_impact, out).await?;
    out.writes.push(Write::PutHistory {
        system_id: env.system_id.clone(),
        entry: HistoryEntry {
            generation: eval.generation,
            fitness: summary.mean,
            outcome,
            baseline_fitness: judged.baseline,
            changes,
            predicted_impact: eval.predicted_impact,
            plan_step: eval.plan_step.clone(),
            reports: summary.reports,
            failed: summary.reports - summary.valid,
            metrics: metrics.clone(),
            breaches: judged.breaches.clone(),
            significance: judged.significance,
            canary: judged.canary,
            closed_at: now,
        },
    });
    system.evaluation_deadline = None;
    // Every close asks for the next cycle at once (see `Closing::settle`).
    system.cycle_requested(now);
    let mut closing = Closing {
        env,
        system_context: SystemContext::from_metrics(&metrics, summary.reports - summary.valid),
        context: ConflictContext::default(),
        head,
        eval,
        summary,
        outcome,
        judged,
        actual_impact,
        mutation_id,
        analysis,
        now,
    };
    // The resolver's context costs reads: only a close that raises a conflict gathers it.
    if closing.raises_conflict(deps.config.rollback_streak_conflict) {
        closing.context = super::conflict_context(deps, &env.system_id, &closing.head).await?;
    }
    if closing.keeps() {
        closing.keep(out);
    } else {
        closing.roll_back(deps, out).await?;
    }
    out.writes.push(Write::PutSystem { system });
    Ok(())
}

/// The decision engine's account of a mutation, set against what the window measured, for the
/// event that closes the window.
async fn engine_analysis(
    deps: &Deps,
    env: &Envelope,
    decision_id: &str,
    eval: &Evaluation,
    actual_impact: Option<f64>,
) -> Result<Option<BedrockAnalysis>, StageError> {
    Ok(deps
        .store
        .get_decision(&env.system_id, decision_id)
        .await?
        .map(|d| BedrockAnalysis {
            model_used: d.model_used,
            confidence: d.confidence,
            reasoning: cap(&d.reasoning, 300),
            predicted_impact: eval.predicted_impact,
            actual_impact: actual_impact.unwrap_or(0.0),
        }))
}

/// The strategist's prediction error feeds its performance record (the router's history).
async fn record_prediction(
    deps: &Deps,
    env: &Envelope,
    eval: &Evaluation,
    actual_impact: Option<f64>,
    out: &mut StageOutput,
) -> Result<(), StageError> {
    if let (Some(step), Some(actual)) = (&eval.plan_step, actual_impact) {
        if let Some(plan) = deps.store.get_plan(&env.system_id, &step.plan_id).await? {
            out.writes.push(Write::RecordPrediction {
                model_id: plan.model_used,
                role: crate::domain::Role::Strategize,
                predicted: eval.predicted_impact,
                actual,
            });
        }
    }
    Ok(())
}

/// A window being closed, with what its two endings (keep, roll back) both report.
struct Closing<'a> {
    env: &'a Envelope,
    /// The running system's state as its reports described it, for the close's event.
    system_context: Option<SystemContext>,
    /// What a conflict raised by this close tells its resolver.
    context: ConflictContext,
    head: Head,
    eval: Evaluation,
    summary: FitnessSummary,
    outcome: EvaluationOutcome,
    /// The guardrails broken and the significance test behind the outcome.
    judged: Judged,
    /// The mean fitness less the baseline, when both were measured.
    actual_impact: Option<f64>,
    mutation_id: Option<String>,
    analysis: Option<BedrockAnalysis>,
    now: DateTime<Utc>,
}

impl Closing<'_> {
    /// Neither a baseline nor a window that measured nothing against an unmeasured baseline
    /// is rolled back: there is nothing before it to restore, or nothing to compare.
    fn keeps(&self) -> bool {
        self.outcome == EvaluationOutcome::Keep
            || self.baseline_unmeasured()
            || self.eval.parent.is_none()
    }

    /// Whether this close raises a conflict: a baseline nobody measured, or a rollback that
    /// makes the streak reach `threshold` (see `keep` and `roll_back`).
    fn raises_conflict(&self, threshold: u32) -> bool {
        if self.keeps() {
            self.baseline_unmeasured()
        } else {
            self.head.rollback_streak + 1 >= threshold
        }
    }

    fn baseline_unmeasured(&self) -> bool {
        self.eval.baseline_fitness.is_none() && self.summary.mean.is_none()
    }

    fn keep(&self, out: &mut StageOutput) {
        let (eval, now) = (&self.eval, self.now);
        let new_head = Head {
            status: HeadStatus::Stable,
            stable_generation: eval.generation,
            stable_fitness: self.summary.mean.or(eval.baseline_fitness),
            evaluation: None,
            rollback_streak: 0,
            updated_at: now,
            ..self.head.clone()
        };
        out.summary = format!(
            "generation {} kept with fitness {}",
            eval.generation,
            self.summary
                .mean
                .map_or("unmeasured".into(), |m| format!("{m:.4}"))
        );
        let detail = self
            .judged
            .significance
            .as_ref()
            .map(|s| format!("above the parent: {}", significance_text(s)));
        self.push_event(out, EventType::MutationKept, detail);
        // Only a baseline is kept with a breach: there is nothing before it to restore.
        self.alert_breaches(out, "nothing before it to restore");
        self.settle(
            out,
            new_head,
            eval.generation,
            StepOutcome::Kept {
                actual_impact: self.actual_impact.unwrap_or(0.0),
            },
        );
        if self.baseline_unmeasured() {
            let conflict = self.context.conflict(
                self.env,
                ConflictKind::BaselineUnmeasured,
                Severity::High,
                format!(
                    "no valid fitness report for baseline generation {} by the window's end",
                    eval.generation
                ),
            );
            raise_conflict(self.env, out, eval.generation, now, conflict);
        }
    }

    async fn roll_back(&self, deps: &Deps, out: &mut StageOutput) -> Result<(), StageError> {
        let (eval, now) = (&self.eval, self.now);
        let restored_gen = eval.parent.unwrap_or(self.head.stable_generation);
        let restored = load_generation(deps, &self.env.system_id, restored_gen).await?;
        let reason = self.rollback_reason();
        let generation = restoring(
            self.env,
            &self.head,
            restored,
            eval.generation,
            reason.clone(),
            now,
        );
        let next = generation.generation;
        let streak = self.head.rollback_streak + 1;
        let new_head = Head {
            generation: next,
            status: HeadStatus::Stable,
            stable_generation: next,
            stable_fitness: eval.baseline_fitness,
            evaluation: None,
            rollback_streak: streak,
            updated_at: now,
            ..self.head.clone()
        };
        out.summary = format!(
            "generation {} rolled back ({reason}); generation {next} restores {restored_gen}",
            eval.generation
        );
        let inconclusive = self.outcome == EvaluationOutcome::Inconclusive
            || self
                .judged
                .significance
                .is_some_and(|s| s.finding == Finding::Inconclusive);
        let event_type = if !self.judged.breaches.is_empty() {
            EventType::GuardrailBreached
        } else if inconclusive {
            EventType::EvaluationInconclusive
        } else {
            EventType::MutationRolledBack
        };
        self.push_event(out, event_type, Some(reason.clone()));
        self.alert_breaches(out, &format!("generation {next} restores {restored_gen}"));
        out.messages.push(dna_rolled_back(
            self.env,
            1,
            &generation,
            restored_gen,
            false,
            now,
        ));
        out.writes.push(Write::PutGeneration { generation });
        self.settle(out, new_head, next, StepOutcome::RolledBack);
        let threshold = deps.config.rollback_streak_conflict;
        if streak >= threshold {
            // Near an optimum most moves regress, so a streak alone is no emergency: only a
            // long one (three times the threshold) is severe enough to pause for.
            let severity = if streak >= threshold * 3 {
                Severity::High
            } else {
                Severity::Medium
            };
            let conflict = self.context.conflict(
                self.env,
                ConflictKind::RollbackStreak,
                severity,
                format!("{streak} consecutive rollbacks"),
            );
            raise_conflict(self.env, out, next, now, conflict);
        }
        Ok(())
    }

    fn rollback_reason(&self) -> String {
        // What the candidate was held to: a canary to its concurrent control, else the parent.
        let held_to = if self.judged.canary.is_some() {
            "its concurrent control"
        } else {
            "the parent"
        };
        if !self.judged.breaches.is_empty() {
            self.breaches()
        } else if let Some(s) = &self.judged.significance {
            let found = if s.finding == Finding::Worse {
                format!("below {held_to}")
            } else {
                format!("no better than {held_to}, after an extension")
            };
            format!("{found}: {}", significance_text(s))
        } else if self.outcome == EvaluationOutcome::Inconclusive {
            format!(
                "inconclusive: {} valid of {} required samples ({} failed measurement(s))",
                self.summary.valid,
                self.eval.samples_required,
                self.summary.reports - self.summary.valid
            )
        } else {
            format!(
                "fitness {:.4} below {held_to}'s {:.4}",
                self.summary.mean.unwrap_or(f64::NAN),
                if self.judged.canary.is_some() {
                    self.judged.baseline
                } else {
                    self.eval.baseline_fitness
                }
                .unwrap_or(f64::NAN)
            )
        }
    }

    /// The guardrails the window broke, in words.
    fn breaches(&self) -> String {
        let breaches: Vec<String> = self
            .judged
            .breaches
            .iter()
            .map(ToString::to_string)
            .collect();
        breaches.join("; ")
    }

    /// A warning naming every guardrail the window broke, and what was done about it.
    fn alert_breaches(&self, out: &mut StageOutput, action: &str) {
        if self.judged.breaches.is_empty() {
            return;
        }
        let breaches = self.breaches();
        let alert = Alert {
            id: derive_id("alr", &[&self.env.id, "guardrail"]),
            level: AlertLevel::Warning,
            kind: "guardrail_breached".into(),
            message: format!(
                "{}: generation {} {}; {action}",
                self.env.system_id, self.eval.generation, breaches
            ),
            system_id: Some(self.env.system_id.clone()),
            at: self.now,
        };
        out.raise(
            self.env,
            "snapshot",
            3,
            self.eval.generation,
            self.now,
            alert,
        );
    }

    /// The audit event of the window's close, with the fitness it moved by.
    fn push_event(&self, out: &mut StageOutput, event_type: EventType, detail: Option<String>) {
        let mut ev = event(
            self.env,
            1,
            self.now,
            event_type,
            self.eval.generation,
            self.mutation_id.clone(),
            self.analysis.clone(),
            detail,
        );
        ev.fitness_delta = self.actual_impact;
        ev.system_context.clone_from(&self.system_context);
        out.writes.push(Write::PutEvent { event: ev });
    }

    /// Moves the head out of evaluation (to `new_head`, at `generation`) and asks analyze for
    /// the next cycle, handing a plan step's outcome back to the plan cursor.
    fn settle(&self, out: &mut StageOutput, new_head: Head, generation: u64, outcome: StepOutcome) {
        out.writes.push(Write::UpdateHead {
            expected_generation: self.head.generation,
            expected_status: HeadStatus::Evaluating,
            head: new_head,
        });
        let reason = match &self.eval.plan_step {
            Some(step) => CycleReason::Step {
                step: step.clone(),
                outcome,
            },
            None => CycleReason::HeadMoved,
        };
        out.messages.push(reply(
            self.env,
            "snapshot",
            0,
            generation,
            self.now,
            Body::CycleRequested { reason },
        ));
    }
}

/// A significance test in words, for events and reasons.
fn significance_text(s: &Significance) -> String {
    format!(
        "p = {:.3}, effect size {:.2}, {} against {} samples at confidence {:.2}",
        s.p_value, s.effect_size, s.candidate_samples, s.parent_samples, s.confidence
    )
}
