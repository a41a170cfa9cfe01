//! decide's operator side: verdicts on held approvals (an operator's or the clock's) and
//! resumes of paused heads. Both are audited with who and when, and both move the head with one
//! conditional write, so a repeated or stale request is an acknowledged no-op.

use chrono::{DateTime, Utc};

use super::{OPERATOR_MODEL_ID, event, no_cost, push_outcome, resume};
use crate::domain::{
    Alert, AlertLevel, Body, DecidedBy, DecisionRecord, Envelope, EventType, Head, HeadStatus,
    PendingApproval, Recommendation, derive_id,
};
use crate::stages::{Deps, StageError, StageOutput, StageResult, cap, load_system, reply};
use crate::store::Write;

/// A human's (or the clock's) answer to a pending approval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Approve,
    Reject,
    /// Nobody answered before the deadline: a rejection by the tick.
    Expire,
}

/// Resolves a pending approval. The resolution is a decision record of its own (records are
/// written once) pointing back at the pending one, committed with the head's move out of
/// `AwaitingApproval`: of two racing verdicts exactly one wins, and a duplicate is a no-op.
pub async fn handle_verdict(
    deps: &Deps,
    env: &Envelope,
    decision_id: &str,
    verdict: Verdict,
    approver: &str,
    note: Option<&str>,
) -> StageResult {
    let (_, head) = load_system(deps, &env.system_id).await?;
    let now = deps.clock.now();
    let pending = match awaited(&head, decision_id, verdict, now) {
        Ok(pending) => pending,
        Err(noop) => return Ok(noop),
    };
    let held = deps
        .store
        .get_decision(&env.system_id, decision_id)
        .await?
        .ok_or_else(|| {
            StageError::Inconsistent(format!("pending decision {decision_id} has no record"))
        })?;
    let approver = cap(approver, 200);
    let (decision, decided_by, reasoning) = verdict.ruling(&approver, &pending);
    let reasoning = match note.map(|n| cap(n, 500)) {
        Some(note) => format!("{reasoning}: {note}"),
        None => reasoning,
    };
    let record = DecisionRecord {
        decision_id: derive_id("dec", &[&env.id]),
        timestamp: now,
        model_used: OPERATOR_MODEL_ID.into(),
        decision,
        confidence: 1.0,
        reasoning,
        cost_analysis: no_cost(),
        base_generation: Some(head.generation),
        mutation: Some(pending.mutation.clone()),
        decided_by: Some(decided_by),
        approver: Some(approver),
        resolves: Some(decision_id.to_owned()),
        ..held
    };
    let mut out = StageOutput::default();
    out.writes.push(Write::ResolveApproval {
        expected_generation: head.generation,
        decision_id: decision_id.to_owned(),
        head: Head {
            status: HeadStatus::Stable,
            approval: None,
            updated_at: now,
            ..head.clone()
        },
    });
    pass_on(&mut out, env, &pending, &record, head.generation, now);
    if verdict == Verdict::Expire {
        out.raise(
            env,
            "decide",
            1,
            head.generation,
            now,
            expiry_alert(env, decision_id, now),
        );
    }
    out.summary = format!(
        "{} pending decision {decision_id} ({})",
        verdict.past_tense(),
        record.reasoning
    );
    out.writes.push(Write::PutDecision { decision: record });
    Ok(out)
}

/// An approval sends the held mutation on to snapshot; a rejection hands a plan step back to
/// the plan cursor.
fn pass_on(
    out: &mut StageOutput,
    env: &Envelope,
    pending: &PendingApproval,
    record: &DecisionRecord,
    generation: u64,
    now: DateTime<Utc>,
) {
    if record.decision == Recommendation::Approve {
        out.messages.push(reply(
            env,
            "decide",
            0,
            generation,
            now,
            Body::MutationApproved {
                decision_id: record.decision_id.clone(),
                mutation: pending.mutation.clone(),
            },
        ));
    } else {
        push_outcome(out, env, &pending.mutation, record, generation, now);
    }
}

/// The approval `decision_id` holds the head for, when this verdict may resolve it now. A
/// verdict on anything else, or an expiry before the deadline, is acknowledged as a no-op.
fn awaited(
    head: &Head,
    decision_id: &str,
    verdict: Verdict,
    now: DateTime<Utc>,
) -> Result<PendingApproval, StageOutput> {
    let pending = match (&head.status, &head.approval) {
        (HeadStatus::AwaitingApproval, Some(p)) if p.decision_id == decision_id => (**p).clone(),
        _ => {
            return Err(StageOutput::noop(format!(
                "decision {decision_id} is not awaiting approval (head is {})",
                head.status.as_str()
            )));
        }
    };
    if verdict == Verdict::Expire && now < pending.expires_at {
        return Err(StageOutput::noop(format!(
            "decision {decision_id} waits until {}",
            pending.expires_at
        )));
    }
    Ok(pending)
}

impl Verdict {
    /// The resolving record's decision, who made it, and why.
    fn ruling(
        self,
        approver: &str,
        pending: &PendingApproval,
    ) -> (Recommendation, DecidedBy, String) {
        match self {
            Self::Approve => (
                Recommendation::Approve,
                DecidedBy::Operator,
                format!("approved by {approver}"),
            ),
            Self::Reject => (
                Recommendation::Reject,
                DecidedBy::Operator,
                format!("rejected by {approver}"),
            ),
            Self::Expire => (
                Recommendation::Reject,
                DecidedBy::Expiry,
                format!(
                    "expired: nobody answered by {}",
                    pending
                        .expires_at
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ),
            ),
        }
    }

    fn past_tense(self) -> &'static str {
        match self {
            Self::Approve => "approved",
            Self::Reject => "rejected",
            Self::Expire => "expired",
        }
    }
}

/// An approval nobody answered is rejected by the clock; the operators hear of it.
fn expiry_alert(env: &Envelope, decision_id: &str, now: DateTime<Utc>) -> Alert {
    Alert {
        id: derive_id("alr", &[&env.id]),
        level: AlertLevel::Warning,
        kind: "approval".into(),
        message: format!(
            "decision {decision_id} on {} expired without an answer and was rejected",
            env.system_id
        ),
        system_id: Some(env.system_id.clone()),
        at: now,
    }
}

/// An operator's resume of a paused head (`evolve resume`). Decide consumes it because decide
/// owns the paused state: conflict resolution is what pauses a head (and may resume it), so
/// both ways out of `Paused` are decided in one stage, against one conditional head update.
///
/// The head goes back to stable at the same generation with its rollback streak cleared (a
/// streak is the usual reason for a pause; kept, the next rollback would pause it again at
/// once), and the registry entry's next cycle is brought forward to now, so the next tick
/// requests a cycle (within the budget mode's rules, like any scheduled cycle). An event keeps
/// who resumed, when, why the head was paused and the note. A head that is not paused, or
/// that moved since the operator saw it, is left as it is: a repeated or stale resume is
/// acknowledged, not an error.
pub async fn handle_resume(
    deps: &Deps,
    env: &Envelope,
    requested_by: &str,
    note: Option<&str>,
) -> StageResult {
    let (mut system, head) = load_system(deps, &env.system_id).await?;
    if head.status != HeadStatus::Paused {
        return Ok(StageOutput::noop(format!(
            "{} is not paused (head is {})",
            env.system_id,
            head.status.as_str()
        )));
    }
    if head.generation != env.base_generation {
        return Ok(StageOutput::noop(format!(
            "stale resume for generation {} (head paused at {})",
            env.base_generation, head.generation
        )));
    }
    let now = deps.clock.now();
    let paused_since = head
        .updated_at
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let why = pause_reason(deps, &head).await?;
    let mut detail = format!(
        "resumed by {}; paused since {paused_since}: {why}",
        cap(requested_by, 200)
    );
    if let Some(note) = note {
        detail = format!("{detail}; note: {}", cap(note, 500));
    }
    let mut out = StageOutput::default();
    out.writes.push(resume(&head, now));
    out.writes.push(Write::PutEvent {
        event: event(
            env,
            now,
            EventType::OperatorResume,
            head.generation,
            detail.clone(),
        ),
    });
    if system.next_cycle_at > now {
        system.next_cycle_at = now;
        out.writes.push(Write::PutSystem { system });
    }
    out.summary = detail;
    Ok(out)
}

/// Why `head` was paused: the detail of the conflict resolution committed with the pause (same
/// transaction, so same time as the head's last update).
async fn pause_reason(deps: &Deps, head: &Head) -> Result<String, StageError> {
    let events = deps
        .store
        .list_events(&head.system_id, Some(head.updated_at), 20)
        .await?;
    Ok(events
        .into_iter()
        .find(|e| e.event_type == EventType::ConflictResolved && e.timestamp == head.updated_at)
        .and_then(|e| e.detail)
        .unwrap_or_else(|| "no conflict resolution recorded with the pause".to_owned()))
}
