//! Control state on SQLite: the budget mode, circuit breakers, model performance, answer
//! checkpoints and the response cache, as rows of the `control` table.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use rusqlite::TransactionBehavior;

use super::{PERFORMANCE_ROW, SqlResult, SqliteStore, encode, one, put, read_budget, ts};
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
        one(
            &self.conn(),
            "circuits",
            "SELECT body FROM circuits WHERE model_id = ?1",
            [model_id],
        )
    }

    async fn put_circuit(&self, state: &CircuitState) -> StoreResult<()> {
        put(
            &self.conn(),
            "INSERT OR REPLACE INTO circuits (model_id, body) VALUES (?1, ?2)",
            [state.model_id.as_str(), &encode(state)?],
        )
    }

    async fn update_circuit(
        &self,
        model_id: &str,
        change: &(dyn Fn(Option<CircuitState>) -> CircuitState + Sync),
    ) -> StoreResult<()> {
        let mut conn = self.conn();
        let db = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .sql()?;
        let stored = one(
            &db,
            "circuits",
            "SELECT body FROM circuits WHERE model_id = ?1",
            [model_id],
        )?;
        let next = change(stored);
        put(
            &db,
            "INSERT OR REPLACE INTO circuits (model_id, body) VALUES (?1, ?2)",
            [model_id, &encode(&next)?],
        )?;
        db.commit().sql()
    }

    async fn update_performance(
        &self,
        change: &(dyn for<'p> Fn(&'p mut PerformanceSnapshot) + Sync),
    ) -> StoreResult<()> {
        let mut conn = self.conn();
        let db = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .sql()?;
        let mut perf: PerformanceSnapshot = one(
            &db,
            "control",
            "SELECT body FROM control WHERE name = ?1",
            [PERFORMANCE_ROW],
        )?
        .unwrap_or_default();
        change(&mut perf);
        put(
            &db,
            "INSERT OR REPLACE INTO control (name, body) VALUES (?1, ?2)",
            [PERFORMANCE_ROW, &encode(&perf)?],
        )?;
        db.commit().sql()
    }

    async fn performance(&self) -> StoreResult<PerformanceSnapshot> {
        Ok(one(
            &self.conn(),
            "control",
            "SELECT body FROM control WHERE name = ?1",
            [PERFORMANCE_ROW],
        )?
        .unwrap_or_default())
    }

    async fn put_performance(&self, snapshot: &PerformanceSnapshot) -> StoreResult<()> {
        put(
            &self.conn(),
            "INSERT OR REPLACE INTO control (name, body) VALUES (?1, ?2)",
            [PERFORMANCE_ROW, &encode(snapshot)?],
        )
    }

    async fn checkpoint(&self, key: &str, now: DateTime<Utc>) -> StoreResult<Option<Checkpoint>> {
        let found: Option<Checkpoint> = one(
            &self.conn(),
            "control",
            "SELECT body FROM control WHERE name = ?1",
            [format!("{CHECKPOINT_PREFIX}{key}")],
        )?;
        Ok(found.filter(|c| c.expires_at > now))
    }

    async fn put_checkpoint(&self, checkpoint: &Checkpoint) -> StoreResult<()> {
        put(
            &self.conn(),
            "INSERT OR REPLACE INTO control (name, body) VALUES (?1, ?2)",
            [
                format!("{CHECKPOINT_PREFIX}{}", checkpoint.key),
                encode(checkpoint)?,
            ],
        )
    }

    async fn cached_answer(
        &self,
        key: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<CachedAnswer>> {
        let found: Option<CachedAnswer> = one(
            &self.conn(),
            "control",
            "SELECT body FROM control WHERE name = ?1",
            [format!("{CACHE_PREFIX}{key}")],
        )?;
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
        put(
            &conn,
            "INSERT OR REPLACE INTO control (name, body) VALUES (?1, ?2)",
            [format!("{CACHE_PREFIX}{}", entry.key), encode(entry)?],
        )
    }
}

/// Prefix of the `control` rows holding LLM answer checkpoints.
const CHECKPOINT_PREFIX: &str = "checkpoint:";

/// Prefix of the `control` rows holding response-cache entries.
const CACHE_PREFIX: &str = "cache:";
