//! The tick: the one timer of the system. Every minute it requests cycles for idle systems that
//! are due, closes evaluation windows whose deadline has passed, rejects approvals nobody
//! answered in time and applies the budget mode's cost action to each system's schedule.
//!
//! It works in two halves so that neither a transaction nor an invocation grows with the fleet
//! (see `docs/architecture.md`, "Message flow", and `docs/2026-12-04-fleet-scale.md`):
//! [`run_page`] reads one registry page, sends a [`Body::SystemTick`] to each system whose entry
//! says it may need attention and hands the next page on as a [`Body::TickPage`], and
//! [`handle_system`] does one system's work in one transaction of its own. The registry entry
//! carries everything the first half filters on (next cycle, window and approval deadlines, the
//! cost mode applied), so the tick reads no head.

use chrono::{DateTime, Duration, Utc};

use super::{Deps, REGISTRY_PAGE, StageOutput, StageResult, load_system};
use crate::domain::{
    Body, BudgetMode, CycleReason, Envelope, EventType, EvolutionEvent, HeadStatus, Outgoing,
    SystemId, derive_id,
};
use crate::store::{SystemRecord, Write};

/// Most a system's cycle is spread after the tick, so systems do not all call Bedrock at once.
const SPREAD_SECONDS: u64 = 45;

/// The idempotency key of the tick scheduled at `at` (one per minute).
pub fn tick_id(at: DateTime<Utc>) -> String {
    format!("tick:{}", at.format("%Y-%m-%dT%H:%M"))
}

/// Whether the registry entry says the system may need the tick this minute. A false positive
/// costs one message that ends as a no-op; a false negative would leave a system unattended,
/// so every deadline the per-system step acts on is on the entry.
pub fn needs_attention(system: &SystemRecord, mode: BudgetMode, now: DateTime<Utc>) -> bool {
    system.cost_mode != mode
        || (mode != BudgetMode::Paused && system.next_cycle_at <= now)
        || system.evaluation_deadline.is_some_and(|d| d <= now)
        || system.approval_expires_at.is_some_and(|d| d <= now)
}

/// The first half, for the scheduled tick: the registry's first page (see [`run_page`]).
pub async fn run(deps: &Deps, scheduled_at: DateTime<Utc>) -> StageResult {
    run_page(deps, &tick_id(scheduled_at), scheduled_at, None).await
}

/// The first half, one registry page at a time: one [`Body::SystemTick`] per system of the page
/// after `after` that needs attention, sent as a fan-out (not kept in the outbox, whose one
/// record could not hold a fleet's messages), and, when the page is full, a
/// [`Body::TickPage`] in the outbox for the next page. One invocation reads one page and sends
/// at most a page of messages, so its duration does not grow with the fleet. Every id is
/// derived from the tick and a system, so a repeated tick or page sends the same messages and
/// each system's step runs once.
pub async fn run_page(
    deps: &Deps,
    causation: &str,
    scheduled_at: DateTime<Utc>,
    after: Option<&SystemId>,
) -> StageResult {
    let now = deps.clock.now();
    let id = tick_id(scheduled_at);
    let mode = deps.control.budget_state().await?.mode;
    let page = deps.store.list_systems_page(after, REGISTRY_PAGE).await?;
    let mut out = StageOutput::default();
    for system in &page {
        if needs_attention(system, mode, now) {
            out.fanout.push(tick_message(
                &id,
                causation,
                &system.system_id,
                "tick",
                now,
                Body::SystemTick { scheduled_at },
            ));
        }
    }
    out.summary = format!(
        "tick: {} of {} system(s) need attention",
        out.fanout.len(),
        page.len()
    );
    if let (REGISTRY_PAGE, Some(last)) = (page.len(), page.last()) {
        out.messages.push(tick_message(
            &id,
            causation,
            &last.system_id,
            "page",
            now,
            Body::TickPage {
                scheduled_at,
                after: last.system_id.clone(),
            },
        ));
        out.summary.push_str(", more on the next page");
    }
    Ok(out)
}

/// A message of the tick `id` about `system`; `kind` keeps its messages about one system apart,
/// and the derived id makes a repeated tick send the same message again.
fn tick_message(
    id: &str,
    causation: &str,
    system: &SystemId,
    kind: &str,
    now: DateTime<Utc>,
    body: Body,
) -> Outgoing {
    Outgoing::new(Envelope {
        id: derive_id("msg", &[id, system.as_str(), kind]),
        causation_id: causation.to_owned(),
        system_id: system.clone(),
        base_generation: 0,
        sent_at: now,
        traceparent: None,
        body,
    })
}

/// The second half: one system's tick in one transaction, from its head and registry entry as
/// they are now (a late or repeated message finds nothing left to do).
pub async fn handle_system(
    deps: &Deps,
    env: &Envelope,
    scheduled_at: DateTime<Utc>,
) -> StageResult {
    let now = deps.clock.now();
    let id = tick_id(scheduled_at);
    let mode = deps.control.budget_state().await?.mode;
    let (mut system, head) = load_system(deps, &env.system_id).await?;
    let mut out = StageOutput::default();
    let mut changed = false;
    let mut done = Vec::new();
    if system.cost_mode != mode {
        out.writes
            .push(cost_action(&id, &mut system, head.generation, mode, now));
        changed = true;
        done.push("cost action");
    }
    let message = |kind: &str, body: Body| Envelope {
        id: derive_id("msg", &[&id, system.system_id.as_str(), kind]),
        causation_id: env.id.clone(),
        system_id: system.system_id.clone(),
        base_generation: head.generation,
        sent_at: now,
        traceparent: None,
        body,
    };
    let mut messages = Vec::new();
    match (&head.status, &head.evaluation) {
        (HeadStatus::Evaluating, Some(eval)) if eval.deadline <= now => {
            done.push("window due");
            messages.push(Outgoing::new(message(
                "due",
                Body::EvaluationDue {
                    generation: eval.generation,
                },
            )));
        }
        (HeadStatus::AwaitingApproval, _)
            if head.approval.as_ref().is_some_and(|a| a.expires_at <= now) =>
        {
            done.push("approval expired");
            let decision_id = head
                .approval
                .as_ref()
                .map(|a| a.decision_id.clone())
                .unwrap_or_default();
            messages.push(Outgoing::new(message(
                "expire",
                Body::ApprovalExpired { decision_id },
            )));
        }
        (HeadStatus::Stable, _) if system.next_cycle_at <= now && mode != BudgetMode::Paused => {
            done.push("cycle requested");
            let spread =
                u64::from_str_radix(&derive_id("s", &[system.system_id.as_str()])[2..10], 16)
                    .unwrap_or(0)
                    % SPREAD_SECONDS;
            messages.push(
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
            changed = true;
        }
        _ => {}
    }
    // A held approval that was answered: its deadline no longer concerns the tick.
    if system.approval_expires_at.is_some() && head.status != HeadStatus::AwaitingApproval {
        system.approval_expires_at = None;
        changed = true;
    }
    if changed {
        out.writes.push(Write::PutSystem { system });
    }
    out.messages = messages;
    out.summary = if done.is_empty() {
        format!("tick: nothing due (head {})", head.status.as_str())
    } else {
        format!("tick: {}", done.join(", "))
    };
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
            trace_id: None,
            message_id: None,
            id: derive_id("evt", &[tick_id, system.system_id.as_str(), "cost"]),
            timestamp: now,
            event_type: EventType::CostActionApplied,
            generation,
            fitness_delta: None,
            mutation_id: None,
            bedrock_analysis: None,
            system_id: Some(system.system_id.clone()),
            system_context: None,
            storage_metadata: None,
            detail: Some(detail),
        },
    }
}
