//! Control state on SQLite: the budget mode, circuit breakers, model performance, answer
//! checkpoints and the response cache, as rows of the `control` table.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::Connection;

use super::{
    PERFORMANCE_ROW, SqlResult, SqliteStore, encode, immediate, one, put, read_budget,
    read_control, ts, update_performance, write_control,
};
use crate::store::performance::PerformanceSnapshot;
use crate::store::{
    BudgetState, CachedAnswer, Checkpoint, CircuitState, ControlState, StoreResult,
};

#[async_trait]
impl ControlState for SqliteStore {
    async fn budget_state(&self) -> StoreResult<BudgetState> {
        read_budget(&self.conn())
    }

    async fn circuit(&self, model_id: &str) -> StoreResult<Option<CircuitState>> {
        read_circuit(&self.conn(), model_id)
    }

    async fn put_circuit(&self, state: &CircuitState) -> StoreResult<()> {
        write_circuit(&self.conn(), &state.model_id, state)
    }

    async fn update_circuit(
        &self,
        model_id: &str,
        change: &(dyn Fn(Option<CircuitState>) -> CircuitState + Sync),
    ) -> StoreResult<()> {
        let mut conn = self.conn();
        let db = immediate(&mut conn)?;
        let next = change(read_circuit(&db, model_id)?);
        write_circuit(&db, model_id, &next)?;
        db.commit().sql()
    }

    async fn update_performance(
        &self,
        change: &(dyn for<'p> Fn(&'p mut PerformanceSnapshot) + Sync),
    ) -> StoreResult<()> {
        let mut conn = self.conn();
        let db = immediate(&mut conn)?;
        update_performance(&db, change)?;
        db.commit().sql()
    }

    async fn performance(&self) -> StoreResult<PerformanceSnapshot> {
        Ok(read_control(&self.conn(), PERFORMANCE_ROW)?.unwrap_or_default())
    }

    async fn put_performance(&self, snapshot: &PerformanceSnapshot) -> StoreResult<()> {
        write_control(&self.conn(), PERFORMANCE_ROW, snapshot)
    }

    async fn checkpoint(&self, key: &str, now: DateTime<Utc>) -> StoreResult<Option<Checkpoint>> {
        let found: Option<Checkpoint> =
            read_control(&self.conn(), &format!("{CHECKPOINT_PREFIX}{key}"))?;
        Ok(found.filter(|c| c.expires_at > now))
    }

    async fn put_checkpoint(&self, checkpoint: &Checkpoint) -> StoreResult<()> {
        let name = format!("{CHECKPOINT_PREFIX}{}", checkpoint.key);
        write_control(&self.conn(), &name, checkpoint)
    }

    async fn cached_answer(
        &self,
        key: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<CachedAnswer>> {
        let found: Option<CachedAnswer> =
            read_control(&self.conn(), &format!("{CACHE_PREFIX}{key}"))?;
        Ok(found.filter(|c| c.expires_at > now))
    }

    async fn put_cached_answer(&self, entry: &CachedAnswer) -> StoreResult<()> {
        let conn = self.conn();
        // Expired entries are never read; drop them as new ones arrive so the file stays small.
        put(
            &conn,
            "DELETE FROM control WHERE name LIKE 'cache:%' \
             AND julianday(json_extract(body, '$.expires_at')) < julianday(?1)",
            [ts(entry.stored_at)],
        )?;
        write_control(&conn, &format!("{CACHE_PREFIX}{}", entry.key), entry)
    }
}

/// Prefix of the `control` rows holding LLM answer checkpoints.
const CHECKPOINT_PREFIX: &str = "checkpoint:";

/// Prefix of the `control` rows holding response-cache entries.
const CACHE_PREFIX: &str = "cache:";

fn read_circuit(conn: &Connection, model_id: &str) -> StoreResult<Option<CircuitState>> {
    one(
        conn,
        "circuits",
        "SELECT body FROM circuits WHERE model_id = ?1",
        [model_id],
    )
}

fn write_circuit(conn: &Connection, model_id: &str, state: &CircuitState) -> StoreResult<()> {
    put(
        conn,
        "INSERT OR REPLACE INTO circuits (model_id, body) VALUES (?1, ?2)",
        [model_id, &encode(state)?],
    )
}
