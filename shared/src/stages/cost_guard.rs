//! cost-guard: compares the ledger with the budgets and sets the budget mode (Normal, Economy,
//! Paused). Every change is an alert. The router and the LLM layer obey the mode.

use super::{Deps, StageOutput, StageResult, reply};
use crate::cost::{LedgerScope, PeriodKey, format_usd, mode_for};
use crate::domain::{
    Alert, AlertLevel, Body, BudgetMode, BudgetPeriod, BudgetScope, Envelope, derive_id,
};
use crate::store::{BudgetState, Write};

/// Recomputes the mode from the global budgets. Per-system budgets are enforced by the ledger's
/// reservations (a system over its own budget gets the local engine) and reported here.
pub async fn handle(deps: &Deps, env: &Envelope) -> StageResult {
    let now = deps.clock.now();
    let today = deps.money_clock.now();
    let budgets = deps.config.budgets;
    let current = deps.control.budget_state().await?;
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
        alerts.push(Alert {
            id: derive_id("alr", &[&env.id, "mode"]),
            level: match required {
                BudgetMode::Normal => AlertLevel::Info,
                BudgetMode::Economy => AlertLevel::Warning,
                BudgetMode::Paused => AlertLevel::Critical,
            },
            kind: "budget_mode".into(),
            message: format!(
                "budget mode {} -> {}: {worst}",
                current.mode.as_str(),
                required.as_str()
            ),
            system_id: None,
            at: now,
        });
    }
    if let Some(limit) = budgets.system_daily.or(budgets.system_monthly) {
        for system in deps.store.list_systems().await? {
            for (period, limit) in [
                (BudgetPeriod::Day, budgets.system_daily),
                (BudgetPeriod::Month, budgets.system_monthly),
            ] {
                let Some(limit) = limit else { continue };
                let key = PeriodKey::of(period, today);
                let totals = deps
                    .ledger
                    .totals(key, &LedgerScope::System(system.system_id.clone()))
                    .await?;
                if mode_for(totals.spent_nano, limit, budgets.economy_percent) == BudgetMode::Paused
                {
                    alerts.push(Alert {
                        id: derive_id("alr", &[&key.key(), system.system_id.as_str()]),
                        level: AlertLevel::Warning,
                        kind: "system_budget".into(),
                        message: format!(
                            "{} spent {} of its {} budget {}: its LLM roles use the local engine",
                            system.system_id,
                            format_usd(totals.spent_nano),
                            key.key(),
                            format_usd(limit)
                        ),
                        system_id: Some(system.system_id.clone()),
                        at: now,
                    });
                }
            }
            let _ = limit;
        }
    }
    out.summary = if alerts.is_empty() {
        format!("budget mode stays {}", current.mode.as_str())
    } else {
        format!("{} alert(s), mode {}", alerts.len(), required.as_str())
    };
    for (i, alert) in alerts.into_iter().enumerate() {
        out.writes.push(Write::PutAlert {
            alert: alert.clone(),
        });
        out.messages.push(reply(
            env,
            "cost-guard",
            i,
            0,
            now,
            Body::AlertRaised { alert },
        ));
    }
    Ok(out)
}
