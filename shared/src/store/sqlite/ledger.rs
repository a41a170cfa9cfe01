//! The cost ledger on SQLite: counters reserved and settled inside immediate transactions.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::TransactionBehavior;

use super::{
    SqlResult, SqliteStore, encode, exists, many, put, read_totals, since_key, ts, write_totals,
};
use crate::cost::{
    CostLedger, LedgerEntry, LedgerScope, PeriodKey, Reservation, ReserveOutcome, SettleOutcome,
    Settlement, Totals,
};
use crate::store::StoreResult;
use crate::store::rules;

#[async_trait]
impl CostLedger for SqliteStore {
    async fn reserve(&self, reservation: &Reservation) -> StoreResult<ReserveOutcome> {
        let mut conn = self.conn();
        let db = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .sql()?;
        if let Some(refused) =
            rules::refusal(reservation, |period, scope| read_totals(&db, period, scope))?
        {
            return Ok(refused);
        }
        for (period, scope) in rules::counters(
            &reservation.system_id,
            &reservation.model_id,
            reservation.at,
        ) {
            let mut totals = read_totals(&db, &period, &scope)?;
            rules::hold(&mut totals, reservation.amount_nano);
            write_totals(&db, &period, &scope, &totals)?;
        }
        db.commit().sql()?;
        Ok(ReserveOutcome::Reserved)
    }

    async fn settle(&self, settlement: &Settlement) -> StoreResult<SettleOutcome> {
        let mut conn = self.conn();
        let db = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .sql()?;
        if exists(
            &db,
            "SELECT 1 FROM ledger WHERE call_id = ?1",
            [settlement.call_id.as_str()],
        )? {
            return Ok(SettleOutcome::AlreadySettled);
        }
        for (period, scope) in rules::counters(
            &settlement.system_id,
            &settlement.model_id,
            settlement.reserved_at,
        ) {
            let mut totals = read_totals(&db, &period, &scope)?;
            rules::settle_into(&mut totals, settlement);
            write_totals(&db, &period, &scope, &totals)?;
        }
        let entry = rules::ledger_entry(settlement);
        put(
            &db,
            "INSERT INTO ledger (call_id, at, body) VALUES (?1, ?2, ?3)",
            [entry.call_id.as_str(), &ts(entry.at), &encode(&entry)?],
        )?;
        db.commit().sql()?;
        Ok(SettleOutcome::Settled)
    }

    async fn totals(&self, period: PeriodKey, scope: &LedgerScope) -> StoreResult<Totals> {
        read_totals(&self.conn(), &period, scope)
    }

    async fn entries(&self, since: Option<DateTime<Utc>>) -> StoreResult<Vec<LedgerEntry>> {
        many(
            &self.conn(),
            "ledger",
            "SELECT body FROM ledger WHERE at >= ?1 ORDER BY at, call_id",
            [since_key(since)],
        )
    }
}
