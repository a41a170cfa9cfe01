//! The cost ledger on SQLite: counters reserved and settled inside immediate transactions.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::TransactionBehavior;

use super::{
    SqlResult, SqliteStore, encode, exists, many, put, read_totals, since_key, ts, write_totals,
};
use crate::cost::{LedgerScope, PeriodKey, Totals};
use crate::store::StoreResult;
use crate::store::rules;
use crate::store::{
    CostLedger, Hold, LedgerEntry, Reclaim, ReclaimOutcome, Reservation, ReserveOutcome,
    SettleOutcome, Settlement,
};

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
        let hold = Hold::of(reservation);
        put(
            &db,
            "INSERT INTO holds (call_id, expires_at, body) VALUES (?1, ?2, ?3)",
            [hold.call_id.as_str(), &ts(hold.expires_at), &encode(&hold)?],
        )?;
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
        let held = db
            .execute(
                "DELETE FROM holds WHERE call_id = ?1",
                [settlement.call_id.as_str()],
            )
            .sql()?
            > 0;
        for (period, scope) in rules::counters(
            &settlement.system_id,
            &settlement.model_id,
            settlement.reserved_at,
        ) {
            let mut totals = read_totals(&db, &period, &scope)?;
            if held {
                rules::settle_into(&mut totals, settlement);
            } else {
                rules::count(&mut totals, settlement);
            }
            write_totals(&db, &period, &scope, &totals)?;
        }
        let entry = rules::ledger_entry(settlement);
        put(
            &db,
            "INSERT INTO ledger (call_id, at, body) VALUES (?1, ?2, ?3)",
            [entry.call_id.as_str(), &ts(entry.at), &encode(&entry)?],
        )?;
        db.commit().sql()?;
        Ok(if held {
            SettleOutcome::Settled
        } else {
            SettleOutcome::SettledAfterReclaim
        })
    }

    async fn holds(&self, expired_by: DateTime<Utc>, limit: usize) -> StoreResult<Vec<Hold>> {
        many(
            &self.conn(),
            "holds",
            "SELECT body FROM holds WHERE expires_at <= ?1 ORDER BY expires_at, call_id LIMIT ?2",
            rusqlite::params![ts(expired_by), i64::try_from(limit).unwrap_or(i64::MAX)],
        )
    }

    async fn reclaim(
        &self,
        hold: &Hold,
        by: &str,
        at: DateTime<Utc>,
    ) -> StoreResult<ReclaimOutcome> {
        let mut conn = self.conn();
        let db = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .sql()?;
        let deleted = db
            .execute(
                "DELETE FROM holds WHERE call_id = ?1",
                [hold.call_id.as_str()],
            )
            .sql()?;
        if deleted == 0 {
            return Ok(ReclaimOutcome::Gone);
        }
        for (period, scope) in rules::counters(&hold.system_id, &hold.model_id, hold.reserved_at) {
            let mut totals = read_totals(&db, &period, &scope)?;
            rules::release(&mut totals, hold.amount_nano);
            write_totals(&db, &period, &scope, &totals)?;
        }
        let reclaim = Reclaim {
            hold: hold.clone(),
            by: by.to_owned(),
            at,
        };
        put(
            &db,
            "INSERT INTO reclaims (call_id, at, body) VALUES (?1, ?2, ?3)",
            [hold.call_id.as_str(), &ts(at), &encode(&reclaim)?],
        )?;
        db.commit().sql()?;
        Ok(ReclaimOutcome::Reclaimed)
    }

    async fn reclaims(&self, since: Option<DateTime<Utc>>) -> StoreResult<Vec<Reclaim>> {
        many(
            &self.conn(),
            "reclaims",
            "SELECT body FROM reclaims WHERE at >= ?1 ORDER BY at, call_id",
            [since_key(since)],
        )
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
