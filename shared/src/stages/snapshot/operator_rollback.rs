//! An operator's (or a conflict resolution's) rollback to an earlier generation.

use chrono::Duration;

use super::event;
use crate::domain::{
    Alert, AlertLevel, Body, Envelope, Evaluation, EventType, Generation, Head, HeadStatus, Origin,
    derive_id,
};
use crate::stages::{
    Deps, StageError, StageOutput, StageResult, cap, load_generation, load_system, reply,
};
use crate::store::Write;

/// Operator (or conflict-resolution) rollback: commits the target generation's genes as a new
/// generation and measures it afresh as a baseline.
pub async fn handle_rollback(
    deps: &Deps,
    env: &Envelope,
    to_generation: Option<u64>,
    requested_by: &str,
    reason: &str,
) -> StageResult {
    let (mut system, head) = load_system(deps, &env.system_id).await?;
    if env.base_generation != head.generation {
        return Ok(StageOutput::noop(format!(
            "stale rollback request for generation {} (head at {})",
            env.base_generation, head.generation
        )));
    }
    let target = match to_generation {
        Some(g) => g,
        None => default_target(deps, &env.system_id, &head).await?,
    };
    if target >= head.generation {
        return Err(StageError::Inconsistent(format!(
            "cannot roll back to generation {target}: the head is at {}",
            head.generation
        )));
    }
    let restored = load_generation(deps, &env.system_id, target).await?;
    let now = deps.clock.now();
    let next = head.generation + 1;
    let why = format!("requested by {requested_by}: {}", cap(reason, 200));
    let generation = Generation::new(
        env.system_id.clone(),
        next,
        Some(head.generation),
        restored.genes.clone(),
        Origin::Rollback {
            restored: target,
            rolled_back: head.generation,
            reason: why.clone(),
        },
        now,
    );
    let deadline = now + Duration::seconds(i64::from(system.settings.evaluation_window_seconds));
    let new_head = Head {
        generation: next,
        status: HeadStatus::Evaluating,
        evaluation: Some(Evaluation {
            generation: next,
            parent: None,
            baseline_fitness: None,
            started_at: now,
            deadline,
            samples_required: system.settings.samples_required,
            plan_step: None,
            predicted_impact: 0.0,
            samples_seen: 0,
        }),
        rollback_streak: 0,
        updated_at: now,
        approval: None,
        ..head.clone()
    };
    system.evaluation_deadline = Some(deadline);
    let mut out = StageOutput {
        summary: format!("operator rollback: generation {next} restores {target}"),
        ..StageOutput::default()
    };
    // A decision held for approval is moot once the operator moves the head: close it in the
    // audit trail so nothing is left pending.
    if let Some(pending) = &head.approval {
        if let Some(held) = deps
            .store
            .get_decision(&env.system_id, &pending.decision_id)
            .await?
        {
            out.writes.push(Write::PutDecision {
                decision: crate::domain::DecisionRecord {
                    decision_id: derive_id("dec", &[&env.id]),
                    timestamp: now,
                    model_used: crate::stages::decide::OPERATOR_MODEL_ID.into(),
                    decision: crate::domain::Recommendation::Reject,
                    confidence: 1.0,
                    reasoning: format!("superseded by an operator rollback ({why})"),
                    decided_by: Some(crate::domain::DecidedBy::Operator),
                    approver: Some(cap(requested_by, 200)),
                    resolves: Some(pending.decision_id.clone()),
                    ..held
                },
            });
        }
    }
    out.writes.push(Write::PutEvent {
        event: event(
            env,
            0,
            now,
            EventType::OperatorRollback,
            next,
            None,
            None,
            Some(why.clone()),
        ),
    });
    let alert = Alert {
        id: derive_id("alr", &[&env.id]),
        level: AlertLevel::Warning,
        kind: "rollback".into(),
        message: format!(
            "{}: generation {next} restores {target} ({why})",
            env.system_id
        ),
        system_id: Some(env.system_id.clone()),
        at: now,
    };
    out.messages.push(reply(
        env,
        "snapshot",
        0,
        next,
        now,
        Body::DnaRolledBack {
            generation: next,
            restored_generation: target,
            genes: serde_json::to_value(&generation.genes).unwrap_or_default(),
            checksum: generation.checksum.clone(),
        },
    ));
    out.messages.push(reply(
        env,
        "snapshot",
        1,
        next,
        now,
        Body::AlertRaised {
            alert: alert.clone(),
        },
    ));
    out.writes.push(Write::PutAlert { alert });
    out.writes.push(Write::PutGeneration { generation });
    out.writes.push(Write::UpdateHead {
        expected_generation: head.generation,
        expected_status: head.status,
        head: new_head,
    });
    out.writes.push(Write::PutSystem { system });
    Ok(out)
}

/// The generation whose genes preceded the current ones: the parent of the current mutation,
/// looking through earlier rollbacks.
async fn default_target(
    deps: &Deps,
    id: &crate::domain::SystemId,
    head: &Head,
) -> Result<u64, StageError> {
    if let Some(eval) = head
        .evaluation
        .as_ref()
        .filter(|_| head.status == HeadStatus::Evaluating)
    {
        if let Some(parent) = eval.parent {
            return Ok(parent);
        }
    }
    let mut g = load_generation(deps, id, head.generation).await?;
    for _ in 0..64 {
        match g.origin {
            Origin::Mutation { .. } => {
                return g.parent.ok_or_else(|| {
                    StageError::Inconsistent(format!("generation {} has no parent", g.generation))
                });
            }
            Origin::Rollback { restored, .. } => g = load_generation(deps, id, restored).await?,
            Origin::Initial => break,
        }
    }
    Err(StageError::Inconsistent(
        "nothing to roll back to: the current genes are the initial ones".into(),
    ))
}
