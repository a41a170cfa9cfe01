//! The cost ledger port: reserve a call's worst case before it, settle its actual cost after
//! it, and reclaim what a crashed call left held. The store adapters implement it beside the
//! other ports; the arithmetic (periods, scopes, budgets, modes) is `crate::cost`'s.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{StoreResult, Usage};
use crate::cost::{BudgetLimit, LedgerScope, PeriodKey, Totals};
use crate::domain::{BudgetPeriod, BudgetScope, SystemId};

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
