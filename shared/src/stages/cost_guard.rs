//! cost-guard: compares the ledger with the budgets and sets the budget mode (Normal, Economy,
//! Paused). Every change is an alert. The router and the LLM layer obey the mode. Once a day it
//! also compares the ledger with the bill ([`reconcile`]).

use chrono::{DateTime, Utc};

use super::{Deps, RegistryPages, StageOutput, StageResult, load_system};
use crate::cost::billing::BillingSource;
use crate::cost::{LedgerScope, PeriodKey, format_usd, mode_for};
use crate::domain::{
    Alert, AlertLevel, Body, BudgetMode, BudgetPeriod, BudgetScope, Envelope, Outgoing, derive_id,
};
use crate::store::{BudgetState, SystemRecord, Write};
use crate::store::{RESERVATION_HOLD, ReclaimOutcome};

pub mod reconcile;

/// Expired holds one sweep reclaims at most; more wait for the next minute's sweep. Each is a
/// small transaction of its own, so a crash that left a fleet's calls held is undone in a few
/// sweeps without one sweep outliving its invocation.
const RECLAIM_BATCH: usize = 500;

/// Recomputes the mode from the global budgets. Per-system budgets are enforced by the ledger's
/// reservations (a system over its own budget gets the local engine) and reported here. Holds
/// whose calls never settled are reclaimed and alerted on, and once a day the bill is
/// reconciled with the ledger, where the budgets ask for it.
pub async fn handle(deps: &Deps, env: &Envelope) -> StageResult {
    #[cfg(feature = "billing")]
    let billing = reconcile::process_billing(deps).await;
    #[cfg(not(feature = "billing"))]
    let billing: Option<std::sync::Arc<dyn BillingSource>> = {
        if deps.config.budgets.reconcile.is_some() {
            tracing::debug!("built without a billing source: the bill is not reconciled");
        }
        None
    };
    sweep(deps, env, billing.as_deref()).await
}

/// [`handle`] with the billing source given (`None` leaves the bill alone).
pub async fn sweep(
    deps: &Deps,
    env: &Envelope,
    billing: Option<&dyn BillingSource>,
) -> StageResult {
    let now = deps.clock.now();
    let today = deps.money_clock.now();
    let current = deps.control.budget_state().await?;
    let (required, worst) = required_mode(deps, today).await?;
    let mut out = StageOutput::default();
    let mut alerts = Vec::new();
    if required != current.mode {
        out.writes.push(Write::SetBudgetMode {
            expected: current.mode,
            state: BudgetState {
                mode: required,
                changed_at: Some(now),
                reason: worst.clone(),
            },
        });
        alerts.push(mode_alert(env, current.mode, required, &worst, now));
    }
    let budgets = deps.config.budgets;
    let over = if budgets.system_daily.is_some() || budgets.system_monthly.is_some() {
        systems_over_budget(deps, env, today, now).await?
    } else {
        Vec::new()
    };
    let flagged = over.len();
    out.fanout = over;
    alerts.extend(reclaim_expired_holds(deps, env, now).await?);
    let bill = match (billing, budgets.reconcile) {
        (Some(source), Some(settings)) => {
            reconcile::run(deps, source, reconcile::builtin_models(), settings).await?
        }
        _ => reconcile::Reconciled::default(),
    };
    out.writes.extend(bill.writes);
    alerts.extend(bill.alerts);
    out.summary = if alerts.is_empty() {
        format!("budget mode stays {}", current.mode.as_str())
    } else {
        format!("{} alert(s), mode {}", alerts.len(), required.as_str())
    };
    if flagged > 0 {
        out.summary = format!(
            "{}, {flagged} system(s) newly over their own budget",
            out.summary
        );
    }
    if let Some(bill) = bill.summary {
        out.summary = format!("{}; {bill}", out.summary);
    }
    for (i, alert) in alerts.into_iter().enumerate() {
        out.raise(env, "cost-guard", i, 0, now, alert);
    }
    Ok(out)
}

/// The mode the global budgets call for, with the reason (the budget most spent).
pub(crate) async fn required_mode(
    deps: &Deps,
    today: DateTime<Utc>,
) -> Result<(BudgetMode, String), super::StageError> {
    let budgets = deps.config.budgets;
    let mut required = BudgetMode::Normal;
    let mut worst = String::from("within all budgets");
    for limit in budgets
        .limits()
        .into_iter()
        .filter(|l| l.scope == BudgetScope::Global)
    {
        let totals = deps
            .ledger
            .totals(PeriodKey::of(limit.period, today), &LedgerScope::Total)
            .await?;
        let mode = mode_for(totals.spent_nano, limit.limit_nano, budgets.economy_percent);
        if mode > required {
            required = mode;
            worst = format!(
                "{} spend {} of budget {}",
                match limit.period {
                    BudgetPeriod::Day => "daily",
                    BudgetPeriod::Month => "monthly",
                },
                format_usd(totals.spent_nano),
                format_usd(limit.limit_nano)
            );
        }
    }
    Ok((required, worst))
}

fn mode_alert(
    env: &Envelope,
    current: BudgetMode,
    required: BudgetMode,
    worst: &str,
    now: DateTime<Utc>,
) -> Alert {
    Alert {
        id: derive_id("alr", &[&env.id, "mode"]),
        level: match required {
            BudgetMode::Normal => AlertLevel::Info,
            BudgetMode::Economy => AlertLevel::Warning,
            BudgetMode::Paused => AlertLevel::Critical,
        },
        kind: "budget_mode".into(),
        message: format!(
            "budget mode {} -> {}: {worst}",
            current.as_str(),
            required.as_str()
        ),
        system_id: None,
        at: now,
    }
}

/// Releases every hold past its expiry (its call's process died between reserve and settle, or
/// its settlement failed), so a crash cannot leave the budget held and the fleet silently on the
/// local engine. Returns the alert naming what this sweep message reclaimed, also in an earlier
/// delivery of it that died before committing (each reclaim records the message's id).
async fn reclaim_expired_holds(
    deps: &Deps,
    env: &Envelope,
    now: DateTime<Utc>,
) -> Result<Option<Alert>, super::StageError> {
    for hold in deps.ledger.holds(now, RECLAIM_BATCH).await? {
        if deps.ledger.reclaim(&hold, &env.id, now).await? == ReclaimOutcome::Reclaimed {
            tracing::warn!(
                call_id = %hold.call_id,
                system_id = %hold.system_id,
                model_id = %hold.model_id,
                amount_nano = hold.amount_nano,
                reserved_at = %hold.reserved_at,
                "reclaimed a reservation whose call never settled"
            );
        }
    }
    let since = env.sent_at.min(now) - chrono::Duration::minutes(1);
    let reclaimed: Vec<_> = deps
        .ledger
        .reclaims(Some(since))
        .await?
        .into_iter()
        .filter(|r| r.by == env.id)
        .collect();
    if reclaimed.is_empty() {
        return Ok(None);
    }
    let amount: u64 = reclaimed.iter().map(|r| r.hold.amount_nano).sum();
    let mut systems: Vec<&str> = reclaimed
        .iter()
        .map(|r| r.hold.system_id.as_str())
        .collect();
    systems.sort_unstable();
    systems.dedup();
    let shown = systems.len().min(10);
    Ok(Some(Alert {
        id: derive_id("alr", &[&env.id, "reclaimed"]),
        level: AlertLevel::Warning,
        kind: "reservations_reclaimed".into(),
        message: format!(
            "reclaimed {} reservation(s) held over {} minutes ({} in total; systems {}{}): \
             their calls never settled, so a process died mid-call or could not reach the \
             ledger; look for crashed invocations or workers around those times",
            reclaimed.len(),
            RESERVATION_HOLD.num_minutes(),
            format_usd(amount),
            systems[..shown].join(", "),
            if systems.len() > shown { ", ..." } else { "" },
        ),
        system_id: None,
        at: now,
    }))
}

/// Pages through the registry and returns one [`Body::SystemOverBudget`] per system at or over
/// its own budget in a period it was not yet alerted for. Each goes out as a fan-out message of
/// its own (its id fixed by the period and the system), so the sweep's one transaction stays
/// the same size however many systems are over.
async fn systems_over_budget(
    deps: &Deps,
    env: &Envelope,
    today: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Vec<Outgoing>, super::StageError> {
    let budgets = deps.config.budgets;
    let mut out = Vec::new();
    let mut pages = RegistryPages::default();
    while let Some(page) = pages.next(deps).await? {
        for system in &page {
            for (period, limit) in [
                (BudgetPeriod::Day, budgets.system_daily),
                (BudgetPeriod::Month, budgets.system_monthly),
            ] {
                let Some(limit) = limit else { continue };
                let key = PeriodKey::of(period, today).key();
                if system.budget_alerts.contains(&key) {
                    continue;
                }
                let totals = deps
                    .ledger
                    .totals(
                        PeriodKey::of(period, today),
                        &LedgerScope::System(system.system_id.clone()),
                    )
                    .await?;
                if mode_for(totals.spent_nano, limit, budgets.economy_percent) == BudgetMode::Paused
                {
                    out.push(Outgoing::new(Envelope {
                        id: derive_id("msg", &[&key, system.system_id.as_str(), "over-budget"]),
                        causation_id: env.id.clone(),
                        system_id: system.system_id.clone(),
                        base_generation: 0,
                        sent_at: now,
                        traceparent: None,
                        body: Body::SystemOverBudget {
                            period,
                            period_key: key,
                            spent_nano: totals.spent_nano,
                            limit_nano: limit,
                        },
                    }));
                }
            }
        }
    }
    Ok(out)
}

/// Raises a system's over-budget alert once for the period: the registry entry remembers the
/// period (conditioned on its version, so two sweeps racing commit one alert), and the alert is
/// recorded and published in the same transaction.
pub async fn handle_system_over_budget(
    deps: &Deps,
    env: &Envelope,
    period_key: &str,
    spent_nano: u64,
    limit_nano: u64,
) -> StageResult {
    let now = deps.clock.now();
    let (mut system, _) = load_system(deps, &env.system_id).await?;
    if system.budget_alerts.iter().any(|k| k == period_key) {
        return Ok(StageOutput::noop(format!(
            "{} was already alerted for {period_key}",
            system.system_id
        )));
    }
    remember_alert(&mut system, period_key, deps.money_clock.now());
    let alert = Alert {
        id: derive_id("alr", &[period_key, system.system_id.as_str()]),
        level: AlertLevel::Warning,
        kind: "system_budget".into(),
        message: format!(
            "{} spent {} of its {period_key} budget {}: its LLM roles use the local engine",
            system.system_id,
            format_usd(spent_nano),
            format_usd(limit_nano)
        ),
        system_id: Some(system.system_id.clone()),
        at: now,
    };
    let mut out = StageOutput::default();
    out.writes.push(Write::PutSystem { system });
    out.raise(env, "cost-guard", 0, 0, now, alert);
    out.summary = format!("over-budget alert for {period_key}");
    Ok(out)
}

/// Adds the period to the entry's alerted periods and forgets periods that are over (only the
/// current day and month can still be crossed).
fn remember_alert(system: &mut SystemRecord, period_key: &str, today: DateTime<Utc>) {
    let current = [
        PeriodKey::of(BudgetPeriod::Day, today).key(),
        PeriodKey::of(BudgetPeriod::Month, today).key(),
    ];
    system.budget_alerts.retain(|k| current.contains(k));
    system.budget_alerts.push(period_key.to_owned());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alerted_periods_keep_only_the_current_day_and_month() {
        let at = |text: &str| {
            DateTime::parse_from_rfc3339(text)
                .expect("time")
                .with_timezone(&Utc)
        };
        let mut system = crate::store::SystemRecord {
            system_id: crate::domain::SystemId::parse("svc").expect("id"),
            schema: crate::domain::GeneSchema::new(),
            settings: crate::store::SystemSettings::default(),
            created_at: at("2026-11-01T00:00:00Z"),
            next_cycle_at: at("2026-11-01T00:00:00Z"),
            evaluation_deadline: None,
            cost_mode: BudgetMode::Normal,
            approval_expires_at: None,
            budget_alerts: vec!["COST#2026-11-30".into(), "COST#2026-11".into()],
            version: 0,
        };
        remember_alert(&mut system, "COST#2026-12-01", at("2026-12-01T08:00:00Z"));
        assert_eq!(system.budget_alerts, ["COST#2026-12-01"]);
        remember_alert(&mut system, "COST#2026-12", at("2026-12-01T09:00:00Z"));
        assert_eq!(system.budget_alerts, ["COST#2026-12-01", "COST#2026-12"]);
    }
}
