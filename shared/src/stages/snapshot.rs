//! snapshot: the DNA keeper. Commits approved mutations as new immutable generations, collects
//! fitness reports, and when an evaluation window closes lets the Rollback Manager keep the
//! generation or commit its parent's genes again as a new generation.

use chrono::{DateTime, Duration, Utc};

use super::{
    Deps, StageError, StageOutput, StageResult, cap, load_generation, load_system, reply,
    rollback::{self, FitnessSummary},
};
use crate::domain::{
    BedrockAnalysis, Body, ConflictKind, CycleReason, Envelope, Evaluation, EvaluationOutcome,
    EventType, EvolutionEvent, FitnessSample, Generation, Head, HeadStatus, HistoryEntry,
    MetricName, Mutation, Origin, Recommendation, Severity, StepOutcome, SystemConflict,
    apply_mutation, derive_id,
};
use crate::store::{SystemRecord, Write};

mod operator_rollback;
pub use operator_rollback::handle_rollback;

pub async fn handle_approved(
    deps: &Deps,
    env: &Envelope,
    decision_id: &str,
    mutation: &Mutation,
) -> StageResult {
    let (mut system, head) = load_system(deps, &env.system_id).await?;
    if head.status != HeadStatus::Stable || head.generation != env.base_generation {
        return Ok(StageOutput::noop(format!(
            "stale approval for generation {} (head at {}, {})",
            env.base_generation,
            head.generation,
            head.status.as_str()
        )));
    }
    // The message alone is not trusted: the audit record must approve exactly this mutation
    // against exactly this generation.
    let decision = deps
        .store
        .get_decision(&env.system_id, decision_id)
        .await?
        .ok_or_else(|| StageError::Inconsistent(format!("decision {decision_id} not found")))?;
    if decision.decision != Recommendation::Approve
        || decision.mutation.as_ref() != Some(mutation)
        || decision.base_generation != Some(head.generation)
    {
        return Err(StageError::Inconsistent(format!(
            "decision {decision_id} does not approve mutation {} on generation {}",
            mutation.id, head.generation
        )));
    }
    let now = deps.clock.now();
    let parent = load_generation(deps, &env.system_id, head.generation).await?;
    let genes = apply_mutation(&system.schema, &parent.genes, mutation).map_err(|e| {
        StageError::Inconsistent(format!("approved mutation no longer applies: {e}"))
    })?;
    let next = head.generation + 1;
    let generation = Generation::new(
        env.system_id.clone(),
        next,
        Some(head.generation),
        genes,
        Origin::Mutation {
            decision_id: decision_id.to_owned(),
            mutation: mutation.clone(),
        },
        now,
    );
    let deadline = now + Duration::seconds(i64::from(system.settings.evaluation_window_seconds));
    let new_head = Head {
        generation: next,
        status: HeadStatus::Evaluating,
        evaluation: Some(Evaluation {
            generation: next,
            parent: Some(head.stable_generation),
            baseline_fitness: head.stable_fitness,
            started_at: now,
            deadline,
            samples_required: system.settings.samples_required,
            plan_step: mutation.plan_step.clone(),
            predicted_impact: mutation.predicted_impact,
            samples_seen: 0,
        }),
        updated_at: now,
        ..head.clone()
    };
    system.evaluation_deadline = Some(deadline);
    let mut out = StageOutput {
        summary: format!("generation {next} committed, evaluating until {deadline}"),
        ..StageOutput::default()
    };
    out.messages.push(reply(
        env,
        "snapshot",
        0,
        next,
        now,
        Body::DnaUpdated {
            generation: next,
            genes: serde_json::to_value(&generation.genes).unwrap_or_default(),
            checksum: generation.checksum.clone(),
        },
    ));
    out.writes.push(Write::PutEvent {
        event: event(
            env,
            0,
            now,
            EventType::MutationApplied,
            next,
            Some(mutation.id.clone()),
            None,
            Some(mutation.description.clone()),
        ),
    });
    out.writes.push(Write::PutGeneration { generation });
    out.writes.push(Write::UpdateHead {
        expected_generation: head.generation,
        expected_status: HeadStatus::Stable,
        head: new_head,
    });
    out.writes.push(Write::PutSystem { system });
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
pub async fn handle_fitness(
    deps: &Deps,
    env: &Envelope,
    generation: u64,
    checksum: &str,
    score: Option<f64>,
    metrics: &std::collections::BTreeMap<MetricName, f64>,
    error: Option<&str>,
) -> StageResult {
    let (system, head) = load_system(deps, &env.system_id).await?;
    let now = deps.clock.now();
    let error = match (score, error) {
        (_, Some(e)) => Some(cap(e, 500)),
        (Some(s), None) if !s.is_finite() => Some("score is not a finite number".into()),
        (None, None) => Some("no score reported".into()),
        (Some(_), None) => metrics
            .iter()
            .find(|(_, v)| !v.is_finite())
            .map(|(k, _)| format!("metric {k} is not a finite number")),
    };
    let sample = FitnessSample {
        id: derive_id("fit", &[&env.id]),
        system_id: env.system_id.clone(),
        generation,
        checksum: checksum.to_owned(),
        score: if error.is_none() { score } else { None },
        metrics: metrics.clone(),
        error,
        received_at: now,
    };
    let mut out = StageOutput {
        summary: format!("fitness for generation {generation} recorded"),
        ..StageOutput::default()
    };
    let Some(eval) = head
        .evaluation
        .clone()
        .filter(|e| head.status == HeadStatus::Evaluating && e.generation == generation)
    else {
        out.summary
            .push_str(" and ignored: not the generation under evaluation");
        out.writes.push(Write::PutFitnessSample { sample });
        return Ok(out);
    };
    let current = load_generation(deps, &env.system_id, generation).await?;
    if current.checksum != checksum {
        out.summary
            .push_str(" and ignored: checksum differs from the committed genes");
        out.writes.push(Write::PutFitnessSample { sample });
        return Ok(out);
    }
    let mut samples = deps.store.list_fitness(&env.system_id, generation).await?;
    samples.retain(|s| s.id != sample.id);
    samples.push(sample.clone());
    out.writes.push(Write::PutFitnessSample { sample });
    let summary = rollback::summarize(&samples, generation, &current.checksum);
    if summary.reports < eval.samples_required {
        // Counted on the head under a condition on the count read: a report committed
        // meanwhile makes this one read again and see both.
        let mut counted = head.clone();
        if let Some(open) = counted.evaluation.as_mut() {
            open.samples_seen = eval.samples_seen + 1;
        }
        out.writes.push(Write::CountSample {
            expected_generation: head.generation,
            expected_samples: eval.samples_seen,
            head: counted,
        });
        return Ok(out);
    }
    close_window(
        deps, env, system, head, eval, current, summary, now, &mut out,
    )
    .await?;
    Ok(out)
}

pub async fn handle_due(deps: &Deps, env: &Envelope, generation: u64) -> StageResult {
    let (system, head) = load_system(deps, &env.system_id).await?;
    let now = deps.clock.now();
    let Some(eval) = head
        .evaluation
        .clone()
        .filter(|e| head.status == HeadStatus::Evaluating && e.generation == generation)
    else {
        return Ok(StageOutput::noop(format!(
            "generation {generation} is not under evaluation"
        )));
    };
    if now < eval.deadline {
        return Ok(StageOutput::noop("the evaluation window is still open"));
    }
    let current = load_generation(deps, &env.system_id, generation).await?;
    let samples = deps.store.list_fitness(&env.system_id, generation).await?;
    let summary = rollback::summarize(&samples, generation, &current.checksum);
    let mut out = StageOutput::default();
    close_window(
        deps, env, system, head, eval, current, summary, now, &mut out,
    )
    .await?;
    Ok(out)
}

/// The Rollback Manager at the close of a window: keep, or roll back by committing the parent's
/// genes as a new generation. Inconclusive windows roll back.
#[allow(clippy::too_many_arguments)]
async fn close_window(
    deps: &Deps,
    env: &Envelope,
    mut system: SystemRecord,
    head: Head,
    eval: Evaluation,
    current: Generation,
    summary: FitnessSummary,
    now: DateTime<Utc>,
    out: &mut StageOutput,
) -> Result<(), StageError> {
    let outcome = rollback::verdict(
        summary,
        eval.samples_required,
        eval.baseline_fitness,
        deps.config.keep_tolerance,
    );
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
    let actual_impact = match (summary.mean, eval.baseline_fitness) {
        (Some(m), Some(b)) => Some(m - b),
        _ => None,
    };
    let analysis = match &decision_id {
        Some(id) => deps
            .store
            .get_decision(&env.system_id, id)
            .await?
            .map(|d| BedrockAnalysis {
                model_used: d.model_used,
                confidence: d.confidence,
                reasoning: cap(&d.reasoning, 300),
                predicted_impact: eval.predicted_impact,
                actual_impact: actual_impact.unwrap_or(0.0),
            }),
        None => None,
    };
    // The strategist's prediction error feeds its performance record (the router's history).
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
    out.writes.push(Write::PutHistory {
        system_id: env.system_id.clone(),
        entry: HistoryEntry {
            generation: eval.generation,
            fitness: summary.mean,
            outcome,
            baseline_fitness: eval.baseline_fitness,
            changes,
            predicted_impact: eval.predicted_impact,
            plan_step: eval.plan_step.clone(),
            closed_at: now,
        },
    });
    system.evaluation_deadline = None;

    let step_reason = |outcome: StepOutcome| match &eval.plan_step {
        Some(step) => CycleReason::Step {
            step: step.clone(),
            outcome,
        },
        None => CycleReason::HeadMoved,
    };

    let baseline_unmeasured = eval.baseline_fitness.is_none() && summary.mean.is_none();
    if outcome == EvaluationOutcome::Keep || baseline_unmeasured || eval.parent.is_none() {
        // A baseline is never rolled back: there is nothing before it to restore.
        let new_head = Head {
            status: HeadStatus::Stable,
            stable_generation: eval.generation,
            stable_fitness: summary.mean.or(eval.baseline_fitness),
            evaluation: None,
            rollback_streak: 0,
            updated_at: now,
            ..head.clone()
        };
        out.summary = format!(
            "generation {} kept with fitness {}",
            eval.generation,
            summary
                .mean
                .map_or("unmeasured".into(), |m| format!("{m:.4}"))
        );
        let mut ev = event(
            env,
            1,
            now,
            EventType::MutationKept,
            eval.generation,
            mutation_id,
            analysis,
            None,
        );
        ev.fitness_delta = actual_impact;
        out.writes.push(Write::PutEvent { event: ev });
        out.writes.push(Write::UpdateHead {
            expected_generation: head.generation,
            expected_status: HeadStatus::Evaluating,
            head: new_head,
        });
        out.messages.push(reply(
            env,
            "snapshot",
            0,
            eval.generation,
            now,
            Body::CycleRequested {
                reason: step_reason(StepOutcome::Kept {
                    actual_impact: actual_impact.unwrap_or(0.0),
                }),
            },
        ));
        if baseline_unmeasured {
            raise_conflict(
                env,
                out,
                eval.generation,
                now,
                ConflictKind::BaselineUnmeasured,
                Severity::High,
                format!(
                    "no valid fitness report for baseline generation {} by the window's end",
                    eval.generation
                ),
            );
        }
        out.writes.push(Write::PutSystem { system });
        return Ok(());
    }

    let restored_gen = eval.parent.unwrap_or(head.stable_generation);
    let restored = load_generation(deps, &env.system_id, restored_gen).await?;
    let reason = if outcome == EvaluationOutcome::Inconclusive {
        format!(
            "inconclusive: {} valid of {} required samples",
            summary.valid, eval.samples_required
        )
    } else {
        format!(
            "fitness {:.4} below parent {:.4}",
            summary.mean.unwrap_or(f64::NAN),
            eval.baseline_fitness.unwrap_or(f64::NAN)
        )
    };
    let next = head.generation + 1;
    let generation = Generation::new(
        env.system_id.clone(),
        next,
        Some(head.generation),
        restored.genes.clone(),
        Origin::Rollback {
            restored: restored_gen,
            rolled_back: eval.generation,
            reason: reason.clone(),
        },
        now,
    );
    let streak = head.rollback_streak + 1;
    let new_head = Head {
        generation: next,
        status: HeadStatus::Stable,
        stable_generation: next,
        stable_fitness: eval.baseline_fitness,
        evaluation: None,
        rollback_streak: streak,
        updated_at: now,
        ..head.clone()
    };
    out.summary = format!(
        "generation {} rolled back ({reason}); generation {next} restores {restored_gen}",
        eval.generation
    );
    let mut ev = event(
        env,
        1,
        now,
        if outcome == EvaluationOutcome::Inconclusive {
            EventType::EvaluationInconclusive
        } else {
            EventType::MutationRolledBack
        },
        eval.generation,
        mutation_id,
        analysis,
        Some(reason),
    );
    ev.fitness_delta = actual_impact;
    out.writes.push(Write::PutEvent { event: ev });
    out.messages.push(reply(
        env,
        "snapshot",
        1,
        next,
        now,
        Body::DnaRolledBack {
            generation: next,
            restored_generation: restored_gen,
            genes: serde_json::to_value(&generation.genes).unwrap_or_default(),
            checksum: generation.checksum.clone(),
        },
    ));
    out.writes.push(Write::PutGeneration { generation });
    out.writes.push(Write::UpdateHead {
        expected_generation: head.generation,
        expected_status: HeadStatus::Evaluating,
        head: new_head,
    });
    out.messages.push(reply(
        env,
        "snapshot",
        0,
        next,
        now,
        Body::CycleRequested {
            reason: step_reason(StepOutcome::RolledBack),
        },
    ));
    if streak >= deps.config.rollback_streak_conflict {
        raise_conflict(
            env,
            out,
            next,
            now,
            ConflictKind::RollbackStreak,
            // Near an optimum most moves regress, so a streak alone is no emergency: only a
            // long one (three times the threshold) is severe enough to pause for.
            if streak >= deps.config.rollback_streak_conflict * 3 {
                Severity::High
            } else {
                Severity::Medium
            },
            format!("{streak} consecutive rollbacks"),
        );
    }
    out.writes.push(Write::PutSystem { system });
    Ok(())
}

fn raise_conflict(
    env: &Envelope,
    out: &mut StageOutput,
    generation: u64,
    now: DateTime<Utc>,
    kind: ConflictKind,
    severity: Severity,
    description: String,
) {
    out.messages.push(reply(
        env,
        "snapshot",
        2,
        generation,
        now,
        Body::ConflictDetected {
            conflict: SystemConflict {
                kind,
                description,
                affected_components: vec![env.system_id.to_string()],
                severity,
                current_impact: "evolution of this system is not making progress".into(),
                available_resources: vec![],
                active_processes: 0,
                recent_changes: vec![],
            },
        },
    ));
}

#[allow(clippy::too_many_arguments)]
fn event(
    env: &Envelope,
    index: usize,
    at: DateTime<Utc>,
    event_type: EventType,
    generation: u64,
    mutation_id: Option<String>,
    bedrock_analysis: Option<BedrockAnalysis>,
    detail: Option<String>,
) -> EvolutionEvent {
    EvolutionEvent {
        id: derive_id("evt", &[&env.id, &index.to_string()]),
        timestamp: at,
        event_type,
        generation,
        fitness_delta: None,
        mutation_id,
        bedrock_analysis,
        system_context: None,
        storage_metadata: None,
        system_id: Some(env.system_id.clone()),
        detail: detail.map(|d| cap(&d, 500)),
    }
}
