//! An operator's (or a conflict resolution's) rollback to an earlier generation.

use chrono::{DateTime, Utc};

use super::{dna_rolled_back, event, open_window, restoring};
use crate::domain::{
    Alert, AlertLevel, DecidedBy, DecisionRecord, Envelope, EventType, Head, HeadStatus, Origin,
    Recommendation, derive_id,
};
use crate::stages::decide::OPERATOR_MODEL_ID;
use crate::stages::{
    Deps, StageError, StageOutput, StageResult, cap, load_generation, load_system,
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
    let target = rollback_target(deps, env, &head, to_generation).await?;
    let restored = load_generation(deps, &env.system_id, target).await?;
    let now = deps.clock.now();
    let why = format!("requested by {requested_by}: {}", cap(reason, 200));
    let generation = restoring(env, &head, restored, head.generation, why.clone(), now);
    let next = generation.generation;
    let new_head = Head {
        generation: next,
        status: HeadStatus::Evaluating,
        evaluation: Some(open_window(&mut system, next, now)),
        rollback_streak: 0,
        updated_at: now,
        approval: None,
        ..head.clone()
    };
    let mut out = StageOutput {
        summary: format!("operator rollback: generation {next} restores {target}"),
        ..StageOutput::default()
    };
    if let Some(superseded) = supersede_pending(deps, env, &head, requested_by, &why, now).await? {
        out.writes.push(Write::PutDecision {
            decision: superseded,
        });
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
    out.messages
        .push(dna_rolled_back(env, 0, &generation, target, true, now));
    out.raise(
        env,
        "snapshot",
        1,
        next,
        now,
        rollback_alert(env, next, target, &why, now),
    );
    out.writes.push(Write::PutGeneration { generation });
    out.writes.push(Write::UpdateHead {
        expected_generation: head.generation,
        expected_status: head.status,
        head: new_head,
    });
    out.writes.push(Write::PutSystem { system });
    Ok(out)
}

/// The warning every rollback raises: operators who did not ask for it hear of it too.
fn rollback_alert(env: &Envelope, next: u64, target: u64, why: &str, now: DateTime<Utc>) -> Alert {
    Alert {
        id: derive_id("alr", &[&env.id]),
        level: AlertLevel::Warning,
        kind: "rollback".into(),
        message: format!(
            "{}: generation {next} restores {target} ({why})",
            env.system_id
        ),
        system_id: Some(env.system_id.clone()),
        at: now,
    }
}

/// A decision held for approval is moot once the operator moves the head: its closing record,
/// so that nothing is left pending in the audit trail.
async fn supersede_pending(
    deps: &Deps,
    env: &Envelope,
    head: &Head,
    requested_by: &str,
    why: &str,
    now: DateTime<Utc>,
) -> Result<Option<DecisionRecord>, StageError> {
    let Some(pending) = &head.approval else {
        return Ok(None);
    };
    let held = deps
        .store
        .get_decision(&env.system_id, &pending.decision_id)
        .await?;
    Ok(held.map(|held| DecisionRecord {
        decision_id: derive_id("dec", &[&env.id]),
        timestamp: now,
        model_used: OPERATOR_MODEL_ID.into(),
        decision: Recommendation::Reject,
        confidence: 1.0,
        reasoning: format!("superseded by an operator rollback ({why})"),
        decided_by: Some(DecidedBy::Operator),
        approver: Some(cap(requested_by, 200)),
        resolves: Some(pending.decision_id.clone()),
        ..held
    }))
}

/// The generation asked for, or by default the one before the current genes; never the head
/// itself or a later one.
async fn rollback_target(
    deps: &Deps,
    env: &Envelope,
    head: &Head,
    to_generation: Option<u64>,
) -> Result<u64, StageError> {
    let target = match to_generation {
        Some(g) => g,
        None => default_target(deps, &env.system_id, head).await?,
    };
    if target >= head.generation {
        return Err(StageError::Inconsistent(format!(
            "cannot roll back to generation {target}: the head is at {}",
            head.generation
        )));
    }
    Ok(target)
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
