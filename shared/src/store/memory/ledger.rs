//! The cost ledger held in process memory, under the same rules as the other stores.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::super::rules::{self, CallCounters};
use super::{MemoryStore, in_time_order};
use crate::cost::{LedgerScope, PeriodKey, Totals};
use crate::store::{
    CostLedger, Hold, LedgerEntry, Reclaim, ReclaimOutcome, Reservation, ReserveOutcome,
    SettleOutcome, Settlement, StoreResult,
};

#[async_trait]
impl CostLedger for MemoryStore {
    async fn reserve(&self, reservation: &Reservation) -> StoreResult<ReserveOutcome> {
        let mut state = self.lock();
        if let Some(refused) =
            rules::refusal(reservation, |period, scope| Ok(state.totals(period, scope)))?
        {
            return Ok(refused);
        }
        state.adjust(reservation.counters(), |totals| {
            rules::hold(totals, reservation.amount_nano);
        });
        state
            .holds
            .insert(reservation.call_id.clone(), Hold::of(reservation));
        Ok(ReserveOutcome::Reserved)
    }

    async fn settle(&self, settlement: &Settlement) -> StoreResult<SettleOutcome> {
        let mut state = self.lock();
        if state.ledger.contains_key(&settlement.call_id) {
            return Ok(SettleOutcome::AlreadySettled);
        }
        let held = state.holds.remove(&settlement.call_id).is_some();
        state.adjust(settlement.counters(), |totals| {
            rules::settle(totals, settlement, held);
        });
        state
            .ledger
            .insert(settlement.call_id.clone(), rules::ledger_entry(settlement));
        Ok(rules::settled(held))
    }

    async fn holds(&self, expired_by: DateTime<Utc>, limit: usize) -> StoreResult<Vec<Hold>> {
        let holds: Vec<Hold> = self
            .lock()
            .holds
            .values()
            .filter(|h| h.expires_at <= expired_by)
            .cloned()
            .collect();
        Ok(rules::soonest(holds, limit))
    }

    async fn reclaim(
        &self,
        hold: &Hold,
        by: &str,
        at: DateTime<Utc>,
    ) -> StoreResult<ReclaimOutcome> {
        let mut state = self.lock();
        if state.holds.remove(&hold.call_id).is_none() {
            return Ok(ReclaimOutcome::Gone);
        }
        state.adjust(hold.counters(), |totals| {
            rules::release(totals, hold.amount_nano);
        });
        state.reclaims.push(Reclaim {
            hold: hold.clone(),
            by: by.to_owned(),
            at,
        });
        Ok(ReclaimOutcome::Reclaimed)
    }

    async fn reclaims(&self, since: Option<DateTime<Utc>>) -> StoreResult<Vec<Reclaim>> {
        let state = self.lock();
        Ok(in_time_order(
            state.reclaims.iter(),
            |r| r.at,
            |r| (r.at, r.hold.call_id.clone()),
            since,
            usize::MAX,
        ))
    }

    async fn totals(&self, period: PeriodKey, scope: &LedgerScope) -> StoreResult<Totals> {
        Ok(self.lock().totals(&period, scope))
    }

    async fn entries(&self, since: Option<DateTime<Utc>>) -> StoreResult<Vec<LedgerEntry>> {
        let state = self.lock();
        Ok(in_time_order(
            state.ledger.values(),
            |e| e.at,
            |e| (e.at, e.call_id.clone()),
            since,
            usize::MAX,
        ))
    }
}
