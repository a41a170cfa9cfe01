//! The sweep's daily run of the bill reconciliation (see `crate::cost::reconcile`): the first
//! sweep at or after the configured UTC hour asks the bill for the past days without a
//! comparison, and its records commit with the sweep's other writes. A record is keyed by its
//! day and conditioned like every other write, so a later sweep, a redelivered one or two
//! racing ones reconcile a day once.

#[cfg(feature = "billing")]
use std::sync::Arc;

use chrono::{DateTime, Duration, Timelike, Utc};

use crate::cost::billing::{BillingSource, ModelMap};
use crate::cost::format_usd;
use crate::cost::reconcile::{
    LOOKBACK_DAYS, Outcome, ReconcileSettings, Reconciliation, days_due, format_billed, format_bp,
    format_difference,
};
use crate::domain::{Alert, AlertLevel, derive_id};
use crate::stages::{Deps, StageError};
use std::collections::BTreeMap;

use chrono::NaiveDate;

use crate::cost::reconcile::{LedgerDay, Run, record};
use crate::cost::{LedgerScope, PeriodKey};
use crate::store::{CostLedger, StoreResult, Write};

/// What the day's run adds to the sweep.
#[derive(Debug, Default)]
pub struct Reconciled {
    pub writes: Vec<Write>,
    pub alerts: Vec<Alert>,
    /// For the sweep's summary, when the run asked the bill.
    pub summary: Option<String>,
}

/// This process's billing source, when the pipeline's budgets ask for the bill to be
/// reconciled (local runs have no bill to read, and never build one): Cost Explorer on the
/// process's credentials and endpoints, built on first use like its other SDK clients.
#[cfg(feature = "billing")]
pub(super) async fn process_billing(deps: &Deps) -> Option<Arc<dyn BillingSource>> {
    use crate::cost::billing::cost_explorer::CostExplorerBilling;
    static SOURCE: tokio::sync::OnceCell<Arc<dyn BillingSource>> =
        tokio::sync::OnceCell::const_new();
    deps.config.budgets.reconcile?;
    let source = SOURCE
        .get_or_init(|| async {
            Arc::new(CostExplorerBilling::from_env().await) as Arc<dyn BillingSource>
        })
        .await;
    Some(source.clone())
}

/// The day's run: nothing before `settings.hour_utc` or once every day of the lookback has its
/// record for today; otherwise one request for the days due and a record for each.
pub async fn run(
    deps: &Deps,
    source: &dyn BillingSource,
    models: &ModelMap,
    settings: ReconcileSettings,
) -> Result<Reconciled, StageError> {
    let now = deps.money_clock.now();
    if now.hour() < settings.hour_utc {
        return Ok(Reconciled::default());
    }
    let today = now.date_naive();
    let since = today - Duration::days(i64::from(LOOKBACK_DAYS));
    let recorded = deps.store.reconciliations(Some(since)).await?;
    let due = days_due(today, &recorded);
    if due.is_empty() {
        return Ok(Reconciled::default());
    }
    let run = reconcile_days(
        deps.ledger.as_ref(),
        source,
        models,
        &due,
        settings.threshold_bp,
        now,
    )
    .await?;
    let mut out = Reconciled::default();
    if let Some(error) = &run.error {
        tracing::warn!(%error, days = due.len(), "the bill could not be read: asking again at the next day's run");
        out.alerts.push(unavailable_alert(&error.to_string(), now));
    }
    let summaries: Vec<String> = run.records.iter().map(summary).collect();
    out.summary = Some(format!("bill: {}", summaries.join("; ")));
    for record in run.records {
        log(&record);
        out.alerts.extend(alert(&record));
        out.writes.push(Write::PutReconciliation { record });
    }
    Ok(out)
}

/// The alert of a compared day whose difference exceeded the threshold; one per day (its id is
/// the day's), whoever records the comparison.
pub fn alert(record: &Reconciliation) -> Option<Alert> {
    let Outcome::Compared(c) = &record.outcome else {
        return None;
    };
    if !c.exceeded {
        return None;
    }
    let share = c
        .difference_bp
        .map_or_else(|| "nothing billed".to_owned(), format_bp);
    let models: Vec<String> = c
        .models
        .iter()
        .filter(|m| m.difference_nano != 0)
        .map(|m| format!("{} {}", m.model, format_difference(m.difference_nano)))
        .collect();
    let unbilled = if c.unbilled {
        format!(" (still no billing data after {LOOKBACK_DAYS} days)")
    } else {
        String::new()
    };
    Some(Alert {
        id: derive_id("alr", &["bill", &record.day.to_string()]),
        level: AlertLevel::Warning,
        kind: "bill_reconciliation".into(),
        message: format!(
            "the bill for {} differs from the ledger by {} ({share}, over {}): billed {}{unbilled}, \
             ledger {}; by model: {}. The price list or the ledger drifted from what AWS \
             charges, or something else in the account uses Bedrock",
            record.day,
            format_difference(c.difference_nano),
            format_bp(i64::from(c.threshold_bp)).trim_start_matches('+'),
            format_billed(c.billed_nano),
            format_usd(record.ledger_nano),
            if models.is_empty() {
                "no split".to_owned()
            } else {
                models.join(", ")
            },
        ),
        system_id: None,
        at: record.checked_at,
    })
}

/// Raised once per daily run whose request failed (its records are written once per day too).
fn unavailable_alert(reason: &str, now: DateTime<Utc>) -> Alert {
    Alert {
        id: derive_id("alr", &["bill-unavailable", &now.date_naive().to_string()]),
        level: AlertLevel::Warning,
        kind: "bill_unavailable".into(),
        message: format!(
            "the bill could not be read to reconcile the ledger ({reason}); the next day's run \
             asks again. Check the cost-guard role's ce:GetCostAndUsage permission"
        ),
        system_id: None,
        at: now,
    }
}

/// One day's outcome in a few words.
pub fn summary(record: &Reconciliation) -> String {
    match &record.outcome {
        Outcome::Compared(c) => format!(
            "{} billed {} ledger {} ({})",
            record.day,
            format_billed(c.billed_nano),
            format_usd(record.ledger_nano),
            c.difference_bp.map_or_else(|| "n/a".to_owned(), format_bp)
        ),
        Outcome::NotYetBilled { reason } => format!("{} not billed yet ({reason})", record.day),
    }
}

fn log(record: &Reconciliation) {
    match &record.outcome {
        Outcome::Compared(c) => tracing::info!(
            day = %record.day,
            billed_nano = c.billed_nano,
            ledger_nano = record.ledger_nano,
            difference_nano = c.difference_nano,
            difference_bp = c.difference_bp,
            exceeded = c.exceeded,
            "bill reconciled"
        ),
        Outcome::NotYetBilled { reason } => {
            tracing::info!(day = %record.day, %reason, "bill not reconciled yet");
        }
    }
}

/// The built-in catalog's model map, read once per process.
pub fn builtin_models() -> &'static ModelMap {
    static MODELS: std::sync::OnceLock<ModelMap> = std::sync::OnceLock::new();
    MODELS.get_or_init(ModelMap::builtin)
}

/// Asks the bill for `days` (ascending, not empty) in one request and records each against the
/// ledger's spend of it, as a run at `now` does.
pub async fn reconcile_days(
    ledger: &dyn CostLedger,
    source: &dyn BillingSource,
    models: &ModelMap,
    days: &[NaiveDate],
    threshold_bp: u32,
    now: DateTime<Utc>,
) -> StoreResult<Run> {
    let (Some(first), Some(last)) = (days.first(), days.last()) else {
        return Ok(Run {
            records: Vec::new(),
            error: None,
        });
    };
    let bills = source.daily_bills(*first, *last + Duration::days(1)).await;
    let mut records = Vec::with_capacity(days.len());
    for &day in days {
        let spent = ledger_day(ledger, models, day).await?;
        records.push(match &bills {
            Ok(bills) => record(
                day,
                bills.iter().find(|b| b.day == day),
                &spent,
                threshold_bp,
                now,
            ),
            Err(error) => Reconciliation {
                day,
                checked_at: now,
                ledger_nano: spent.total_nano,
                outcome: Outcome::NotYetBilled {
                    reason: error.to_string(),
                },
            },
        });
    }
    Ok(Run {
        records,
        error: bills.err(),
    })
}

/// The ledger's spend of `day`: its total, and per base model id the spend of the catalog's
/// models (one counter read each: the ledger keeps a counter per model and day).
pub async fn ledger_day(
    ledger: &dyn CostLedger,
    models: &ModelMap,
    day: NaiveDate,
) -> StoreResult<LedgerDay> {
    let period = PeriodKey::Day(day);
    let total_nano = ledger.totals(period, &LedgerScope::Total).await?.spent_nano;
    let mut by_model = BTreeMap::<String, u64>::new();
    for (id, base) in models.models() {
        let scope = LedgerScope::Model(id.to_owned());
        let spent = ledger.totals(period, &scope).await?.spent_nano;
        if spent > 0 {
            let sum = by_model.entry(base.to_owned()).or_default();
            *sum = sum.saturating_add(spent);
        }
    }
    Ok(LedgerDay {
        total_nano,
        by_model,
    })
}

#[cfg(test)]
mod tests;
