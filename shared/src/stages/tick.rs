//! The tick: the one timer of the system. Every minute it requests cycles for idle systems that
//! are due, closes evaluation windows whose deadline has passed and rejects approvals nobody
//! answered in time.

use chrono::{DateTime, Duration, Utc};

use super::{Deps, StageOutput, StageResult};
use crate::domain::{
    Body, BudgetMode, CycleReason, Envelope, EventType, EvolutionEvent, HeadStatus, Outgoing,
    derive_id,
};
use crate::store::{SystemRecord, Write};

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
    let mut actions = 0;
    let mode = deps.control.budget_state().await?.mode;
    for mut system in deps.store.list_systems().await? {
        let Some(head) = deps.store.get_head(&system.system_id).await? else {
            continue;
        };
        if system.cost_mode != mode {
            actions += 1;
            out.writes
                .push(cost_action(&id, &mut system, head.generation, mode, now));
            out.writes.push(Write::PutSystem {
                system: system.clone(),
            });
        }
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
            (HeadStatus::Stable, _)
                if system.next_cycle_at <= now && mode != BudgetMode::Paused =>
            {
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
                let interval = system
                    .effective_cycle_interval(mode)
                    .unwrap_or(system.settings.cycle_interval_seconds);
                system.next_cycle_at = now + Duration::seconds(i64::from(interval));
                // One write per system per tick: drop the cost action's copy of the entry.
                out.writes.retain(|w| {
                    !matches!(w, Write::PutSystem { system: s } if s.system_id == system.system_id)
                });
                out.writes.push(Write::PutSystem { system });
            }
            _ => {}
        }
    }
    out.summary = format!(
        "tick: {cycles} cycle(s) requested, {due} window(s) due, {expired} approval(s) \
         expired, {actions} cost action(s)"
    );
    Ok(out)
}

/// The cost optimizer's action on one system's schedule for the budget mode, as an audit event:
/// Economy stretches the cycle interval (and the cycle already scheduled), Paused stops the
/// scheduled cycles (evaluations, rollbacks and approvals still close), Normal restores the
/// configured interval. The registry entry is changed in place; the caller writes it.
fn cost_action(
    tick_id: &str,
    system: &mut SystemRecord,
    generation: u64,
    mode: BudgetMode,
    now: DateTime<Utc>,
) -> Write {
    let base = system.settings.cycle_interval_seconds;
    let detail = match system.effective_cycle_interval(mode) {
        Some(interval) if mode == BudgetMode::Normal => {
            let restored = now + Duration::seconds(i64::from(interval));
            if system.next_cycle_at > restored {
                system.next_cycle_at = restored;
            }
            format!("budget mode normal: cycle interval restored to {interval} s")
        }
        Some(interval) => {
            let stretched = now + Duration::seconds(i64::from(interval));
            if system.next_cycle_at < stretched {
                system.next_cycle_at = stretched;
            }
            format!(
                "budget mode {}: cycle interval {base} s -> {interval} s, next cycle at {}",
                mode.as_str(),
                system
                    .next_cycle_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            )
        }
        None => format!(
            "budget mode {}: scheduled cycles stopped (evaluations, rollbacks and approvals \
             still close)",
            mode.as_str()
        ),
    };
    system.cost_mode = mode;
    Write::PutEvent {
        event: EvolutionEvent {
            id: derive_id("evt", &[tick_id, system.system_id.as_str(), "cost"]),
            timestamp: now,
            event_type: EventType::CostActionApplied,
            generation,
            fitness_delta: None,
            mutation_id: None,
            bedrock_analysis: None,
            system_context: None,
            storage_metadata: None,
            system_id: Some(system.system_id.clone()),
            detail: Some(detail),
        },
    }
}
