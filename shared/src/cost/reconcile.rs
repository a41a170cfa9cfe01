//! The bill, reconciled: once a day the ledger's spend of a past UTC day is compared with what
//! AWS billed for it, and the comparison is recorded, keyed by the day.
//!
//! Cost Explorer fills a day in over the following hours, so a run looks back a few days: each
//! day without a recorded comparison is asked for again at the next day's run, and compared once
//! billing data for it exists, or against nothing at its last run. Each run is one request
//! (Cost Explorer charges per request), so a day that is not billed yet waits for the next
//! day's run rather than the next minute's sweep.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use super::billing::{BillingError, DailyBill, OTHER};

/// The difference that raises an alert, in basis points of the bill: 2%.
pub const DEFAULT_THRESHOLD_BP: u32 = 200;

/// The UTC hour from which a day's run may start: by then Cost Explorer has most of the
/// previous day.
pub const DEFAULT_HOUR_UTC: u32 = 6;

/// Days a run looks back: a day is asked for at this many daily runs before it is compared
/// against whatever was billed by then.
pub const LOOKBACK_DAYS: u32 = 3;

/// When the daily reconciliation runs and what difference it alerts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconcileSettings {
    /// An alert when |billed − ledger| exceeds this share of the bill, in basis points.
    pub threshold_bp: u32,
    /// The first sweep at or after this UTC hour runs the day's reconciliation.
    pub hour_utc: u32,
}

impl Default for ReconcileSettings {
    fn default() -> Self {
        Self {
            threshold_bp: DEFAULT_THRESHOLD_BP,
            hour_utc: DEFAULT_HOUR_UTC,
        }
    }
}

/// One day's reconciliation as recorded: a comparison, written once, or a day not billed yet,
/// rewritten at most once per daily run until it is compared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reconciliation {
    /// The UTC day reconciled.
    pub day: NaiveDate,
    /// When the run that wrote this record ran.
    pub checked_at: DateTime<Utc>,
    /// What the ledger counted as spent that day, in nano-USD.
    pub ledger_nano: u64,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    Compared(Comparison),
    /// No billing data for the day yet, or the bill could not be read (`reason` says which);
    /// the next daily run asks again.
    NotYetBilled {
        reason: String,
    },
}

/// The bill against the ledger for one day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Comparison {
    /// What AWS billed, in nano-USD (negative for a day of credits).
    pub billed_nano: i64,
    /// Billed minus ledger: positive when AWS charged more than the ledger counted.
    pub difference_nano: i64,
    /// The difference in basis points of the bill; `None` when nothing was billed.
    pub difference_bp: Option<i64>,
    /// The threshold it was judged against.
    pub threshold_bp: u32,
    /// Whether the difference exceeded the threshold (and an alert was raised).
    pub exceeded: bool,
    /// Per model (base model id), and `other` for what neither side could name.
    pub models: Vec<ModelRow>,
    /// Compared against nothing: the day was still not billed at its last run.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unbilled: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelRow {
    pub model: String,
    pub billed_nano: i64,
    pub ledger_nano: u64,
    pub difference_nano: i64,
}

/// The ledger's spend of one day, total and per base model id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LedgerDay {
    pub total_nano: u64,
    pub by_model: BTreeMap<String, u64>,
}

impl Reconciliation {
    pub fn is_compared(&self) -> bool {
        matches!(self.outcome, Outcome::Compared(_))
    }

    /// The UTC day of the run that wrote it.
    pub fn checked_on(&self) -> NaiveDate {
        self.checked_at.date_naive()
    }

    /// Why `self` may not replace `stored`, or `None` when it may: a comparison is written
    /// once (over nothing, or over a day not billed yet), and a day not billed yet is written
    /// once per daily run. Every store checks this same rule (DynamoDB as a condition on
    /// `billed` and `checked_on`).
    pub fn refused_over(&self, stored: Option<&Self>) -> Option<String> {
        let stored = stored?;
        if stored.is_compared() {
            return Some(format!("{} is reconciled already", self.day));
        }
        (!self.is_compared() && stored.checked_on() >= self.checked_on()).then(|| {
            format!(
                "{} was asked for on {} already",
                self.day,
                stored.checked_on()
            )
        })
    }
}

/// The days a run on `run_day` asks the bill for: those of the last [`LOOKBACK_DAYS`] that have
/// no comparison and were not asked for on `run_day`, oldest first.
pub fn days_due(run_day: NaiveDate, recorded: &[Reconciliation]) -> Vec<NaiveDate> {
    (1..=i64::from(LOOKBACK_DAYS))
        .rev()
        .map(|back| run_day - Duration::days(back))
        .filter(|day| {
            let stored = recorded.iter().find(|r| r.day == *day);
            stored.is_none_or(|s| !s.is_compared() && s.checked_on() < run_day)
        })
        .collect()
}

/// Whether a run on `run_day` is the last to ask for `day`.
pub fn last_run_for(day: NaiveDate, run_day: NaiveDate) -> bool {
    run_day - day >= Duration::days(i64::from(LOOKBACK_DAYS))
}

/// Why a day without billing data is not compared yet.
pub const NOT_BILLED: &str = "no billing data for the day yet";

/// What one run found: a record per day asked for, and why the bill could not be read, if it
/// could not (then every day is recorded as not billed yet, with that reason).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub records: Vec<Reconciliation>,
    pub error: Option<BillingError>,
}

/// The record of `day` a run at `now` writes: compared when billed; compared against nothing at
/// the day's last run; otherwise not billed yet.
pub fn record(
    day: NaiveDate,
    bill: Option<&DailyBill>,
    ledger: &LedgerDay,
    threshold_bp: u32,
    now: DateTime<Utc>,
) -> Reconciliation {
    let outcome = match bill {
        Some(bill) => Outcome::Compared(compare(bill, ledger, threshold_bp)),
        None if last_run_for(day, now.date_naive()) => {
            let nothing = DailyBill {
                day,
                ..DailyBill::default()
            };
            Outcome::Compared(Comparison {
                unbilled: true,
                ..compare(&nothing, ledger, threshold_bp)
            })
        }
        None => Outcome::NotYetBilled {
            reason: NOT_BILLED.to_owned(),
        },
    };
    Reconciliation {
        day,
        checked_at: now,
        ledger_nano: ledger.total_nano,
        outcome,
    }
}

/// Compares a day's bill with the ledger's spend of the day.
pub fn compare(bill: &DailyBill, ledger: &LedgerDay, threshold_bp: u32) -> Comparison {
    let billed = bill.total_nano();
    let difference = signed_difference(billed, ledger.total_nano);
    let billed_abs = i128::from(billed).abs();
    let difference_abs = i128::from(difference).abs();
    Comparison {
        billed_nano: billed,
        difference_nano: difference,
        difference_bp: (billed != 0)
            .then(|| saturate(i128::from(difference) * 10_000 / billed_abs)),
        threshold_bp,
        exceeded: difference_abs * 10_000 > i128::from(threshold_bp) * billed_abs,
        models: model_rows(bill, ledger),
        unbilled: false,
    }
}

/// A row per model either side names, then `other`: the bill's unnamed usage types against the
/// ledger's spend on models the catalog does not know.
fn model_rows(bill: &DailyBill, ledger: &LedgerDay) -> Vec<ModelRow> {
    let mut models: Vec<&String> = bill.by_model.keys().chain(ledger.by_model.keys()).collect();
    models.sort_unstable();
    models.dedup();
    let mut rows: Vec<ModelRow> = models
        .into_iter()
        .map(|model| {
            row(
                model,
                bill.by_model.get(model).copied().unwrap_or_default(),
                ledger.by_model.get(model).copied().unwrap_or_default(),
            )
        })
        .collect();
    let named: u64 = ledger.by_model.values().sum();
    let ledger_other = ledger.total_nano.saturating_sub(named);
    if bill.other_nano != 0 || ledger_other != 0 {
        rows.push(row(OTHER, bill.other_nano, ledger_other));
    }
    rows
}

fn row(model: &str, billed_nano: i64, ledger_nano: u64) -> ModelRow {
    ModelRow {
        model: model.to_owned(),
        billed_nano,
        ledger_nano,
        difference_nano: signed_difference(billed_nano, ledger_nano),
    }
}

fn signed_difference(billed: i64, ledger: u64) -> i64 {
    saturate(i128::from(billed) - i128::from(ledger))
}

fn saturate(value: i128) -> i64 {
    i64::try_from(value).unwrap_or(if value < 0 { i64::MIN } else { i64::MAX })
}

/// A billed amount (negative for credits) as dollars for humans: `$1.005000`, `-$0.001200`.
pub fn format_billed(nano: i64) -> String {
    let sign = if nano < 0 { "-" } else { "" };
    format!("{sign}{}", super::format_usd(nano.unsigned_abs()))
}

/// A difference as signed dollars for humans: `+$0.100000`, `-$0.001200`, `$0.000000`.
pub fn format_difference(nano: i64) -> String {
    let sign = match nano.signum() {
        1 => "+",
        -1 => "-",
        _ => "",
    };
    format!("{sign}{}", super::format_usd(nano.unsigned_abs()))
}

/// Basis points as a signed percentage with two decimals: `+2.35%`.
pub fn format_bp(bp: i64) -> String {
    let sign = if bp < 0 { "-" } else { "+" };
    let abs = bp.unsigned_abs();
    format!("{sign}{}.{:02}%", abs / 100, abs % 100)
}

#[cfg(test)]
mod tests;
