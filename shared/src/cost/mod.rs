//! Money: integer nano-USD, budgets, budget modes, and the cost ledger port.
//!
//! Money is never a float here. Prices are nano-USD per million tokens and a call's cost is
//! computed in `u128` and rounded once (docs/architecture.md, "Exactly once").

use async_trait::async_trait;
use chrono::{DateTime, Datelike, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::{BudgetMode, BudgetPeriod, BudgetScope, SystemId};
use crate::store::{StoreResult, Usage};

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

/// A worst-case hold on the budget before a call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reservation {
    pub call_id: String,
    pub system_id: SystemId,
    pub model_id: String,
    pub amount_nano: u64,
    pub at: DateTime<Utc>,
    /// Budgets the reservation must fit in; it is refused if any would be exceeded.
    pub limits: Vec<BudgetLimit>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ReserveOutcome {
    Reserved,
    Refused {
        scope: BudgetScope,
        period: BudgetPeriod,
        committed_nano: u64,
        limit_nano: u64,
    },
}

/// The actual cost after a call, releasing its reservation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settlement {
    pub call_id: String,
    pub system_id: SystemId,
    pub model_id: String,
    pub reserved_nano: u64,
    /// When the reservation was made: its counters are the ones released.
    pub reserved_at: DateTime<Utc>,
    pub actual_nano: u64,
    pub usage: Usage,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SettleOutcome {
    Settled,
    /// A retried settlement: counted once already.
    AlreadySettled,
    /// The call outlived its hold, which the sweep had reclaimed: the cost is counted and
    /// nothing is released a second time.
    SettledAfterReclaim,
}

/// How long a reservation holds before the sweep may reclaim it. Longer than any invocation can
/// run (a Lambda's is at most 15 minutes; one Bedrock request is bounded by its role's timeout),
/// so only the hold of a call whose process died is reclaimed, and a budget a crash left held is
/// whole again within this window plus one sweep. See `docs/architecture.md`, "Money".
pub const RESERVATION_HOLD: chrono::Duration = chrono::Duration::minutes(15);

/// A reservation not yet settled, as the ledger keeps it: what the sweep needs to release it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub call_id: String,
    pub system_id: SystemId,
    pub model_id: String,
    pub amount_nano: u64,
    pub reserved_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

impl Hold {
    pub fn of(reservation: &Reservation) -> Self {
        Self {
            call_id: reservation.call_id.clone(),
            system_id: reservation.system_id.clone(),
            model_id: reservation.model_id.clone(),
            amount_nano: reservation.amount_nano,
            reserved_at: reservation.at,
            expires_at: reservation.at + RESERVATION_HOLD,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReclaimOutcome {
    /// The hold was released and the reclaim recorded.
    Reclaimed,
    /// Settled or reclaimed already: nothing changed.
    Gone,
}

/// A hold the sweep released because its call never settled, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reclaim {
    pub hold: Hold,
    /// The sweep message that reclaimed it: a redelivered sweep finds what it reclaimed before.
    pub by: String,
    pub at: DateTime<Utc>,
}

/// One settled call, as recorded (`LEDGER#<call id>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub call_id: String,
    pub system_id: SystemId,
    pub model_id: String,
    pub cost_nano: u64,
    pub usage: Usage,
    pub at: DateTime<Utc>,
}

/// The cost ledger port: reserve before a call, settle after it; the sweep reclaims what a
/// crashed call left held.
#[async_trait]
pub trait CostLedger: Send + Sync + std::fmt::Debug {
    /// Holds `amount_nano` in every period and scope of the call, unless a limit would be
    /// exceeded (spent + reserved + amount > limit), and records the [`Hold`]; atomic across all
    /// counters.
    async fn reserve(&self, reservation: &Reservation) -> StoreResult<ReserveOutcome>;
    /// Releases the reservation and records the actual cost with the per-call entry, in one
    /// transaction; a second settlement of the same call id changes nothing. If the hold was
    /// reclaimed meanwhile, only the cost is counted.
    async fn settle(&self, settlement: &Settlement) -> StoreResult<SettleOutcome>;
    /// Holds whose expiry is at or before `expired_by`, soonest expiry first, at most `limit`.
    async fn holds(&self, expired_by: DateTime<Utc>, limit: usize) -> StoreResult<Vec<Hold>>;
    /// Releases a hold whose call never settled and records the [`Reclaim`], in one transaction;
    /// a hold already settled or reclaimed is [`ReclaimOutcome::Gone`].
    async fn reclaim(
        &self,
        hold: &Hold,
        by: &str,
        at: DateTime<Utc>,
    ) -> StoreResult<ReclaimOutcome>;
    /// Reclaims recorded at or after `since`, in time order.
    async fn reclaims(&self, since: Option<DateTime<Utc>>) -> StoreResult<Vec<Reclaim>>;
    async fn totals(&self, period: PeriodKey, scope: &LedgerScope) -> StoreResult<Totals>;
    /// Settled calls in ascending time order.
    async fn entries(&self, since: Option<DateTime<Utc>>) -> StoreResult<Vec<LedgerEntry>>;
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
