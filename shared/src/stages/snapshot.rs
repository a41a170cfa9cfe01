//! snapshot: the DNA keeper. Commits approved mutations as new immutable generations, collects
//! fitness reports, and when an evaluation window closes lets the Rollback Manager keep the
//! generation or commit its parent's genes again as a new generation.

use chrono::{DateTime, Duration, Utc};

use super::{
    Deps, StageError, StageOutput, StageResult, cap, load_generation, load_system, reply, rollback,
};
use crate::domain::{
    BedrockAnalysis, Body, CanaryRollout, CanaryWindow, Cohort, ConflictKind, Envelope, Evaluation,
    EventType, EvolutionEvent, FitnessSample, Generation, Head, HeadStatus, MetricName, Mutation,
    Origin, Outgoing, Recommendation, Severity, SystemConflict, apply_mutation, derive_id,
};
use crate::store::{SystemRecord, Write};

mod close;
mod operator_rollback;
mod verdict;
use close::close_window;
pub use operator_rollback::handle_rollback;

pub async fn handle_approved(
    deps: &Deps,
    env: &Envelope,
    decision_id: &str,
    mutation: &Mutation,
) -> StageResult {
    let (mut system, head) = load_system(deps, &env.system_id).await?;
    if let Some(stale) = stale_unless_stable(env, &head, "approval") {
        return Ok(stale);
    }
    check_approval(deps, env, decision_id, mutation, head.generation).await?;
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
    // With a canary share the candidate runs beside a control that keeps the parent's genes.
    let constraints = &system.settings.constraints;
    let canary = constraints.canary_share.map(|share| CanaryWindow {
        rollout: CanaryRollout::new(share, &parent),
        bake_seconds: constraints
            .canary_bake_seconds
            .unwrap_or(system.settings.evaluation_window_seconds),
        promoted_at: None,
        verdict: None,
        significance: None,
    });
    let evaluation = Evaluation {
        parent: Some(head.stable_generation),
        baseline_fitness: head.stable_fitness,
        plan_step: mutation.plan_step.clone(),
        predicted_impact: mutation.predicted_impact,
        canary: canary.clone().map(Box::new),
        ..open_window(&mut system, next, now)
    };
    let deadline = evaluation.deadline;
    let new_head = Head {
        generation: next,
        status: HeadStatus::Evaluating,
        evaluation: Some(evaluation),
        updated_at: now,
        ..head.clone()
    };
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
            canary: canary.map(|c| c.rollout),
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

/// A message meant for a stable head at the generation it was based on (a proposal, an
/// approval) that finds the head moved on or busy is stale: acknowledged as a no-op.
pub(crate) fn stale_unless_stable(env: &Envelope, head: &Head, what: &str) -> Option<StageOutput> {
    (head.status != HeadStatus::Stable || head.generation != env.base_generation).then(|| {
        StageOutput::noop(format!(
            "stale {what} for generation {} (head at {}, {})",
            env.base_generation,
            head.generation,
            head.status.as_str()
        ))
    })
}

/// The message alone is not trusted: the audit record must approve exactly this mutation
/// against exactly this generation.
async fn check_approval(
    deps: &Deps,
    env: &Envelope,
    decision_id: &str,
    mutation: &Mutation,
    generation: u64,
) -> Result<(), StageError> {
    let decision = deps
        .store
        .get_decision(&env.system_id, decision_id)
        .await?
        .ok_or_else(|| StageError::Inconsistent(format!("decision {decision_id} not found")))?;
    if decision.decision != Recommendation::Approve
        || decision.mutation.as_ref() != Some(mutation)
        || decision.base_generation != Some(generation)
    {
        return Err(StageError::Inconsistent(format!(
            "decision {decision_id} does not approve mutation {} on generation {generation}",
            mutation.id
        )));
    }
    Ok(())
}

/// The evaluation window of `generation`, opening now, as a baseline measurement (no parent,
/// no prediction; a candidate sets those). The registry entry gets the deadline, where the
/// tick looks for it.
fn open_window(system: &mut SystemRecord, generation: u64, now: DateTime<Utc>) -> Evaluation {
    let deadline = now + Duration::seconds(i64::from(system.settings.evaluation_window_seconds));
    system.evaluation_deadline = Some(deadline);
    Evaluation {
        generation,
        parent: None,
        baseline_fitness: None,
        started_at: now,
        deadline,
        samples_required: system.settings.samples_required,
        plan_step: None,
        predicted_impact: 0.0,
        samples_seen: 0,
        extended: false,
        canary: None,
    }
}

/// The generation after the head that commits `restored`'s genes again: a rollback never
/// moves the head backwards, so every generation stays immutable.
fn restoring(
    env: &Envelope,
    head: &Head,
    restored: Generation,
    rolled_back: u64,
    reason: String,
    now: DateTime<Utc>,
) -> Generation {
    Generation::new(
        env.system_id.clone(),
        head.generation + 1,
        Some(head.generation),
        restored.genes,
        Origin::Rollback {
            restored: restored.generation,
            rolled_back,
            reason,
        },
        now,
    )
}

/// Tells the evaluators that `generation` restores the genes of `restored`.
fn dna_rolled_back(
    env: &Envelope,
    index: usize,
    generation: &Generation,
    restored: u64,
    measure: bool,
    now: DateTime<Utc>,
) -> Outgoing {
    reply(
        env,
        "snapshot",
        index,
        generation.generation,
        now,
        Body::DnaRolledBack {
            generation: generation.generation,
            restored_generation: restored,
            genes: serde_json::to_value(&generation.genes).unwrap_or_default(),
            checksum: generation.checksum.clone(),
            measure,
        },
    )
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
    cohort: Option<Cohort>,
) -> StageResult {
    let (system, head) = load_system(deps, &env.system_id).await?;
    let now = deps.clock.now();
    // With objectives the fitness is computed from the metrics; a reported score is kept
    // only for systems that have none.
    let objectives = &system.settings.constraints.objectives;
    let (score, objective_error) = if objectives.is_empty() || error.is_some() {
        (score, None)
    } else {
        match crate::domain::judging::objective_fitness(objectives, metrics) {
            Ok(fitness) => (Some(fitness), None),
            Err(e) => (None, Some(e)),
        }
    };
    let error = match (score, error) {
        (_, Some(e)) => Some(cap(e, 500)),
        (_, None) if objective_error.is_some() => objective_error,
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
        cohort,
        received_at: now,
    };
    let mut out = StageOutput {
        summary: format!("fitness for generation {generation} recorded"),
        ..StageOutput::default()
    };
    let open = head
        .evaluation
        .clone()
        .filter(|_| head.status == HeadStatus::Evaluating);
    // A canary's control reports name the parent generation its instances keep running.
    if let Some(eval) = open.clone().filter(|e| {
        cohort == Some(Cohort::Control)
            && e.canary
                .as_ref()
                .is_some_and(|c| c.beside_control() && c.rollout.control_generation == generation)
    }) {
        let window = Open {
            system,
            head,
            eval,
            now,
        };
        return control_report(deps, env, window, sample, out).await;
    }
    let Some(eval) = open.filter(|e| e.generation == generation) else {
        out.summary
            .push_str(" and ignored: not the generation under evaluation");
        out.writes.push(Write::PutFitnessSample { sample });
        return Ok(out);
    };
    let current = load_generation(deps, &env.system_id, generation).await?;
    if current.checksum != checksum {
        out.summary
            .push_str(" and ignored: checksum differs from the committed genes");
        // The running system runs other genes than the ones committed: a conflict, raised
        // once per generation (at its first mismatching report).
        let earlier = deps.store.list_fitness(&env.system_id, generation).await?;
        if !earlier
            .iter()
            .any(|s| s.id != sample.id && s.checksum != current.checksum)
        {
            let context = conflict_context(deps, &env.system_id, &head).await?;
            raise_conflict(
                env,
                &mut out,
                generation,
                now,
                context.conflict(
                    env,
                    ConflictKind::ChecksumMismatch,
                    Severity::Medium,
                    format!(
                        "a fitness report for generation {generation} carries checksum {} but the \
                     committed genes' checksum is {}: the running system does not run the \
                     DNA it was sent",
                        cap(checksum, 64),
                        current.checksum
                    ),
                ),
            );
        }
        out.writes.push(Write::PutFitnessSample { sample });
        return Ok(out);
    }
    let mut samples = deps.store.list_fitness(&env.system_id, generation).await?;
    samples.retain(|s| s.id != sample.id);
    samples.push(sample.clone());
    out.writes.push(Write::PutFitnessSample { sample });
    let summary = rollback::summarize(&samples, generation, &current.checksum);
    let waiting = summary.reports < eval.samples_required
        || match &eval.canary {
            // A promoted canary bakes until its deadline, whatever it hears.
            Some(c) if !c.beside_control() => true,
            Some(c) => {
                let control =
                    verdict::control_samples(deps, &env.system_id, c, eval.started_at).await?;
                control.len() < eval.samples_required as usize
            }
            None => false,
        };
    if waiting {
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
        deps, env, system, head, eval, current, &samples, None, now, &mut out,
    )
    .await?;
    Ok(out)
}

/// An open window as a report found it.
struct Open {
    system: SystemRecord,
    head: Head,
    eval: Evaluation,
    now: DateTime<Utc>,
}

/// A control report of a running canary: kept with the parent generation's samples, and
/// closing the window once both sides have their samples.
async fn control_report(
    deps: &Deps,
    env: &Envelope,
    window: Open,
    sample: FitnessSample,
    mut out: StageOutput,
) -> StageResult {
    let Open {
        system,
        head,
        eval,
        now,
    } = window;
    let Some(canary) = eval.canary.as_ref() else {
        return Ok(out);
    };
    if sample.checksum != canary.rollout.control_checksum {
        out.summary
            .push_str(" and ignored: a control report with other genes than the parent's");
        out.writes.push(Write::PutFitnessSample { sample });
        return Ok(out);
    }
    out.summary = format!(
        "control report for generation {}'s canary recorded",
        eval.generation
    );
    let mut control =
        verdict::control_samples(deps, &env.system_id, canary, eval.started_at).await?;
    control.retain(|s| s.id != sample.id);
    let controls = control.len() + 1;
    out.writes.push(Write::PutFitnessSample {
        sample: sample.clone(),
    });
    let current = load_generation(deps, &env.system_id, eval.generation).await?;
    let samples = deps
        .store
        .list_fitness(&env.system_id, eval.generation)
        .await?;
    let canaries = rollback::summarize(&samples, eval.generation, &current.checksum).reports;
    let required = eval.samples_required as usize;
    if controls < required || (canaries as usize) < required {
        return Ok(out);
    }
    close_window(
        deps,
        env,
        system,
        head,
        eval,
        current,
        &samples,
        Some(&sample),
        now,
        &mut out,
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
    let mut out = StageOutput::default();
    close_window(
        deps, env, system, head, eval, current, &samples, None, now, &mut out,
    )
    .await?;
    Ok(out)
}

/// What a conflict's resolver sees of the system besides the conflict: the resources it can
/// fall back on, the processes the running system reported, and the latest changes.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ConflictContext {
    resources: Vec<String>,
    processes: u64,
    changes: Vec<String>,
}

/// How many closed windows a conflict's context lists as recent changes.
const RECENT_CHANGES: usize = 5;

/// The conflict context of `system` now, from its head, its recent history and the budget.
pub(crate) async fn conflict_context(
    deps: &Deps,
    system: &crate::domain::SystemId,
    head: &Head,
) -> Result<ConflictContext, StageError> {
    let history = deps.store.list_history(system, RECENT_CHANGES).await?;
    let mode = deps.control.budget_state().await?.mode;
    let changes = history
        .iter()
        .map(|h| {
            let what = if h.changes.is_empty() {
                "baseline".to_owned()
            } else {
                crate::domain::describe_changes(&h.changes)
            };
            format!("generation {}: {what} ({:?})", h.generation, h.outcome).to_lowercase()
        })
        .collect();
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let processes = history
        .iter()
        .rev()
        .find_map(|h| {
            h.metrics
                .iter()
                .find(|(k, _)| k.as_str() == "active_processes")
                .map(|(_, v)| v.max(0.0).round() as u64)
        })
        .unwrap_or(0);
    let stable = head
        .stable_fitness
        .map_or_else(|| "unmeasured".to_owned(), |f| format!("{f:.4}"));
    let resources = vec![
        format!(
            "stable generation {} (fitness {stable}) to roll back to",
            head.stable_generation
        ),
        format!("LLM budget mode {}", mode.as_str()),
        format!("{} consecutive rollback(s)", head.rollback_streak),
    ];
    Ok(ConflictContext {
        resources,
        processes,
        changes,
    })
}

impl ConflictContext {
    /// A conflict about `env`'s system, with what this context knows.
    pub(crate) fn conflict(
        &self,
        env: &Envelope,
        kind: ConflictKind,
        severity: Severity,
        description: String,
    ) -> SystemConflict {
        SystemConflict {
            kind,
            description,
            affected_components: vec![env.system_id.to_string()],
            severity,
            current_impact: "evolution of this system is not making progress".into(),
            available_resources: self.resources.clone(),
            active_processes: self.processes,
            recent_changes: self.changes.clone(),
        }
    }
}

fn raise_conflict(
    env: &Envelope,
    out: &mut StageOutput,
    generation: u64,
    now: DateTime<Utc>,
    conflict: SystemConflict,
) {
    out.messages.push(reply(
        env,
        "snapshot",
        2,
        generation,
        now,
        Body::ConflictDetected { conflict },
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
        trace_id: None,
        message_id: None,
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
