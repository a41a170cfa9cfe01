//! The cost ledger on SQLite: counters reserved and settled inside immediate transactions.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::Connection;
use serde::Serialize;

use super::{
    SqlResult, SqliteStore, encode, exists, immediate, many, put, read_totals, since_key,
    sql_limit, ts, write_totals,
};
use crate::cost::{LedgerScope, PeriodKey, Totals};
use crate::store::StoreResult;
use crate::store::rules::{self, CallCounters};
use crate::store::{
    CostLedger, Hold, LedgerEntry, Reclaim, ReclaimOutcome, Reservation, ReserveOutcome,
    SettleOutcome, Settlement,
};

#[async_trait]
impl CostLedger for SqliteStore {
    async fn reserve(&self, reservation: &Reservation) -> StoreResult<ReserveOutcome> {
        let mut conn = self.conn();
        let db = immediate(&mut conn)?;
        if let Some(refused) =
            rules::refusal(reservation, |period, scope| read_totals(&db, period, scope))?
        {
            return Ok(refused);
        }
        adjust(&db, reservation.counters(), |totals| {
            rules::hold(totals, reservation.amount_nano);
        })?;
        let hold = Hold::of(reservation);
        insert_for_call(&db, HOLD_SQL, &hold.call_id, hold.expires_at, &hold)?;
        db.commit().sql()?;
        Ok(ReserveOutcome::Reserved)
    }

    async fn settle(&self, settlement: &Settlement) -> StoreResult<SettleOutcome> {
        let mut conn = self.conn();
        let db = immediate(&mut conn)?;
        if exists(
            &db,
            "SELECT 1 FROM ledger WHERE call_id = ?1",
            [settlement.call_id.as_str()],
        )? {
            return Ok(SettleOutcome::AlreadySettled);
        }
        let held = delete_hold(&db, &settlement.call_id)?;
        adjust(&db, settlement.counters(), |totals| {
            rules::settle(totals, settlement, held);
        })?;
        let entry = rules::ledger_entry(settlement);
        insert_for_call(&db, LEDGER_SQL, &entry.call_id, entry.at, &entry)?;
        db.commit().sql()?;
        Ok(rules::settled(held))
    }

    async fn holds(&self, expired_by: DateTime<Utc>, limit: usize) -> StoreResult<Vec<Hold>> {
        many(
            &self.conn(),
            "holds",
            "SELECT body FROM holds WHERE expires_at <= ?1 ORDER BY expires_at, call_id LIMIT ?2",
            rusqlite::params![ts(expired_by), sql_limit(limit)],
        )
    }

    async fn reclaim(
        &self,
        hold: &Hold,
        by: &str,
        at: DateTime<Utc>,
    ) -> StoreResult<ReclaimOutcome> {
        let mut conn = self.conn();
        let db = immediate(&mut conn)?;
        if !delete_hold(&db, &hold.call_id)? {
            return Ok(ReclaimOutcome::Gone);
        }
        adjust(&db, hold.counters(), |totals| {
            rules::release(totals, hold.amount_nano);
        })?;
        let reclaim = Reclaim {
            hold: hold.clone(),
            by: by.to_owned(),
            at,
        };
        insert_for_call(&db, RECLAIM_SQL, &hold.call_id, at, &reclaim)?;
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

const HOLD_SQL: &str = "INSERT INTO holds (call_id, expires_at, body) VALUES (?1, ?2, ?3)";

const LEDGER_SQL: &str = "INSERT INTO ledger (call_id, at, body) VALUES (?1, ?2, ?3)";

const RECLAIM_SQL: &str = "INSERT INTO reclaims (call_id, at, body) VALUES (?1, ?2, ?3)";

/// A record of one call (hold, ledger entry, reclaim): `sql` inserts its row of (call id, time,
/// body), and fails if the call has one already.
fn insert_for_call(
    db: &Connection,
    sql: &str,
    call_id: &str,
    at: DateTime<Utc>,
    record: &impl Serialize,
) -> StoreResult<()> {
    put(db, sql, [call_id, &ts(at), &encode(record)?])
}

/// Deletes the call's hold; whether it was there (else it was settled or reclaimed).
fn delete_hold(db: &Connection, call_id: &str) -> StoreResult<bool> {
    let deleted = db
        .execute("DELETE FROM holds WHERE call_id = ?1", [call_id])
        .sql()?;
    Ok(deleted > 0)
}

/// Applies `change` to each of the counters `keys` inside the open transaction.
fn adjust(
    db: &Connection,
    keys: Vec<(PeriodKey, LedgerScope)>,
    change: impl Fn(&mut Totals),
) -> StoreResult<()> {
    for (period, scope) in keys {
        let mut totals = read_totals(db, &period, &scope)?;
        change(&mut totals);
        write_totals(db, &period, &scope, &totals)?;
    }
    Ok(())
}
