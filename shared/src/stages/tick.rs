//! The tick: the one timer of the system. Every minute it requests cycles for idle systems that
//! are due, closes evaluation windows whose deadline has passed and rejects approvals nobody
//! answered in time.

use chrono::{DateTime, Duration, Utc};

use super::{Deps, StageOutput, StageResult};
use crate::domain::{Body, CycleReason, Envelope, HeadStatus, Outgoing, derive_id};
use crate::store::Write;

/// Most a system's cycle is spread after the tick, so systems do not all call Bedrock at once.
const SPREAD_SECONDS: u64 = 45;

/// The idempotency key of the tick scheduled at `at` (one per minute).
pub fn tick_id(at: DateTime<Utc>) -> String {
    format!("tick:{}", at.format("%Y-%m-%dT%H:%M"))
}

pub async fn run(deps: &Deps, scheduled_at: DateTime<Utc>) -> StageResult {
    let now = deps.clock.now();
    let id = tick_id(scheduled_at);
    let mut out = StageOutput::default();
    let mut cycles = 0;
    let mut due = 0;
    let mut expired = 0;
    for mut system in deps.store.list_systems().await? {
        let Some(head) = deps.store.get_head(&system.system_id).await? else {
            continue;
        };
        let message = |kind: &str, body: Body| Envelope {
            id: derive_id("msg", &[&id, system.system_id.as_str(), kind]),
            causation_id: id.clone(),
            system_id: system.system_id.clone(),
            base_generation: head.generation,
            sent_at: now,
            body,
        };
        match (&head.status, &head.evaluation) {
            (HeadStatus::Evaluating, Some(eval)) if eval.deadline <= now => {
                due += 1;
                out.messages.push(Outgoing::new(message(
                    "due",
                    Body::EvaluationDue {
                        generation: eval.generation,
                    },
                )));
            }
            (HeadStatus::AwaitingApproval, _)
                if head.approval.as_ref().is_some_and(|a| a.expires_at <= now) =>
            {
                expired += 1;
                let decision_id = head
                    .approval
                    .as_ref()
                    .map(|a| a.decision_id.clone())
                    .unwrap_or_default();
                out.messages.push(Outgoing::new(message(
                    "expire",
                    Body::ApprovalExpired { decision_id },
                )));
            }
            (HeadStatus::Stable, _) if system.next_cycle_at <= now => {
                cycles += 1;
                let spread =
                    u64::from_str_radix(&derive_id("s", &[system.system_id.as_str()])[2..10], 16)
                        .unwrap_or(0)
                        % SPREAD_SECONDS;
                out.messages.push(
                    Outgoing::new(message(
                        "cycle",
                        Body::CycleRequested {
                            reason: CycleReason::Scheduled,
                        },
                    ))
                    .delayed(spread as u32),
                );
                system.next_cycle_at =
                    now + Duration::seconds(i64::from(system.settings.cycle_interval_seconds));
                out.writes.push(Write::PutSystem { system });
            }
            _ => {}
        }
    }
    out.summary = format!(
        "tick: {cycles} cycle(s) requested, {due} window(s) due, {expired} approval(s) expired"
    );
    Ok(out)
}
