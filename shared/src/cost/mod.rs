//! Money: integer nano-USD, budgets, budget modes, and the cost ledger port.
//!
//! Money is never a float here. Prices are nano-USD per million tokens and a call's cost is
//! computed in `u128` and rounded once (docs/architecture.md, "Exactly once").

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::{BudgetMode, BudgetPeriod, BudgetScope, SystemId};

pub mod billing;
pub mod reconcile;

/// Nano-USD per US dollar.
pub const NANO_PER_USD: u64 = 1_000_000_000;

/// Formats nano-USD as dollars for humans, e.g. `$0.005541`.
pub fn format_usd(nano: u64) -> String {
    format!(
        "${}.{:06}",
        nano / NANO_PER_USD,
        (nano % NANO_PER_USD) / 1_000
    )
}

/// Nano-USD as a float dollar amount, for display fields like the seed's `cost_usd` only.
pub fn nano_to_usd(nano: u64) -> f64 {
    nano as f64 / NANO_PER_USD as f64
}

/// A UTC calendar bucket a ledger counter belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PeriodKey {
    Day(NaiveDate),
    Month { year: i32, month: u32 },
}

impl PeriodKey {
    pub fn of(period: BudgetPeriod, at: DateTime<Utc>) -> Self {
        match period {
            BudgetPeriod::Day => Self::Day(at.date_naive()),
            BudgetPeriod::Month => Self::Month {
                year: at.year(),
                month: at.month(),
            },
        }
    }

    /// The DynamoDB partition key form: `COST#2026-11-27` or `COST#2026-11`.
    pub fn key(&self) -> String {
        match self {
            Self::Day(d) => format!("COST#{}", d.format("%Y-%m-%d")),
            Self::Month { year, month } => format!("COST#{year:04}-{month:02}"),
        }
    }
}

/// Which counter inside a period.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum LedgerScope {
    Total,
    System(SystemId),
    Model(String),
}

impl LedgerScope {
    /// The DynamoDB sort key form: `TOTAL`, `SYS#<id>`, `MODEL#<id>`.
    pub fn key(&self) -> String {
        match self {
            Self::Total => "TOTAL".into(),
            Self::System(id) => format!("SYS#{id}"),
            Self::Model(m) => format!("MODEL#{m}"),
        }
    }
}

/// Budgets in nano-USD; `None` means unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budgets {
    pub global_daily: Option<u64>,
    pub global_monthly: Option<u64>,
    pub system_daily: Option<u64>,
    pub system_monthly: Option<u64>,
    /// Spend share (percent of a budget) at which the mode becomes Economy.
    pub economy_percent: u32,
    /// The daily check of the ledger against the bill; `None` where there is no bill to read
    /// (local runs), so the sweep leaves it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconcile: Option<reconcile::ReconcileSettings>,
}

/// One budget that a reservation must fit in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetLimit {
    pub scope: BudgetScope,
    pub period: BudgetPeriod,
    pub limit_nano: u64,
}

impl Budgets {
    /// The limits that apply to a call for `system` (global ones always, system ones for it).
    pub fn limits(&self) -> Vec<BudgetLimit> {
        let mut out = Vec::new();
        let mut push = |scope, period, limit: Option<u64>| {
            if let Some(limit_nano) = limit {
                out.push(BudgetLimit {
                    scope,
                    period,
                    limit_nano,
                });
            }
        };
        push(BudgetScope::Global, BudgetPeriod::Day, self.global_daily);
        push(
            BudgetScope::Global,
            BudgetPeriod::Month,
            self.global_monthly,
        );
        push(BudgetScope::System, BudgetPeriod::Day, self.system_daily);
        push(
            BudgetScope::System,
            BudgetPeriod::Month,
            self.system_monthly,
        );
        out
    }
}

/// Spend counters of one scope in one period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub spent_nano: u64,
    pub reserved_nano: u64,
    pub calls: u64,
}

/// The mode a spend level calls for: Paused at or above 100% of any budget, Economy at or above
/// `economy_percent`, else Normal.
pub fn mode_for(spent_nano: u64, limit_nano: u64, economy_percent: u32) -> BudgetMode {
    if limit_nano == 0 {
        return if spent_nano > 0 {
            BudgetMode::Paused
        } else {
            BudgetMode::Normal
        };
    }
    let percent = u128::from(spent_nano) * 100 / u128::from(limit_nano);
    if percent >= 100 {
        BudgetMode::Paused
    } else if percent >= u128::from(economy_percent) {
        BudgetMode::Economy
    } else {
        BudgetMode::Normal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_follow_spend_share() {
        assert_eq!(mode_for(0, 100, 80), BudgetMode::Normal);
        assert_eq!(mode_for(79, 100, 80), BudgetMode::Normal);
        assert_eq!(mode_for(80, 100, 80), BudgetMode::Economy);
        assert_eq!(mode_for(100, 100, 80), BudgetMode::Paused);
        assert_eq!(mode_for(u64::MAX, u64::MAX - 1, 80), BudgetMode::Paused);
    }

    #[test]
    fn dollars_format_without_floats() {
        assert_eq!(format_usd(5_541_000), "$0.005541");
        assert_eq!(format_usd(12 * NANO_PER_USD + 340_000_000), "$12.340000");
    }

    #[test]
    fn period_keys_are_utc_calendar_buckets() {
        let at = DateTime::parse_from_rfc3339("2026-11-27T23:59:59Z")
            .expect("time")
            .with_timezone(&Utc);
        assert_eq!(
            PeriodKey::of(BudgetPeriod::Day, at).key(),
            "COST#2026-11-27"
        );
        assert_eq!(PeriodKey::of(BudgetPeriod::Month, at).key(), "COST#2026-11");
    }
}
