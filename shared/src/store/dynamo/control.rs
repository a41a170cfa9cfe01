//! Control state on DynamoDB: items of the `CTRL` partition and the response cache.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::item::{self, EXPIRES_AT, TTL, epoch_ceil, keys, s, ts};
use super::{DynamoStore, commit};
use crate::llm::performance::PerformanceSnapshot;
use crate::store::{
    BudgetState, CachedAnswer, Checkpoint, CircuitState, ControlState, StoreResult,
};

#[async_trait]
impl ControlState for DynamoStore {
    async fn budget_state(&self) -> StoreResult<BudgetState> {
        Ok(self
            .get_record(keys::CTRL, keys::BUDGET)
            .await?
            .unwrap_or_default())
    }

    async fn circuit(&self, model_id: &str) -> StoreResult<Option<CircuitState>> {
        self.get_record(keys::CTRL, keys::circuit(model_id)).await
    }

    async fn put_circuit(&self, state: &CircuitState) -> StoreResult<()> {
        self.put(item::record(
            keys::CTRL,
            keys::circuit(&state.model_id),
            state,
        )?)
        .await
    }

    async fn performance(&self) -> StoreResult<PerformanceSnapshot> {
        Ok(self
            .get_record(keys::CTRL, keys::PERFORMANCE)
            .await?
            .unwrap_or_default())
    }

    async fn put_performance(&self, snapshot: &PerformanceSnapshot) -> StoreResult<()> {
        self.put(commit::performance_item(snapshot)?).await
    }

    async fn checkpoint(&self, key: &str, now: DateTime<Utc>) -> StoreResult<Option<Checkpoint>> {
        let found: Option<Checkpoint> = self.get_record(keys::CTRL, keys::checkpoint(key)).await?;
        // TTL deletes late: an expired checkpoint still stored is ignored.
        Ok(found.filter(|c| c.expires_at > now))
    }

    async fn put_checkpoint(&self, checkpoint: &Checkpoint) -> StoreResult<()> {
        let mut item = item::record(keys::CTRL, keys::checkpoint(&checkpoint.key), checkpoint)?;
        item.insert(TTL.to_owned(), item::n(epoch_ceil(checkpoint.expires_at)));
        item.insert(EXPIRES_AT.to_owned(), s(ts(checkpoint.expires_at)));
        self.put(item).await
    }

    async fn cached_answer(
        &self,
        key: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<CachedAnswer>> {
        let found: Option<CachedAnswer> = self
            .get_record(&keys::cached_answer(key), keys::RECORD)
            .await?;
        // TTL deletes late (up to days): expiry is decided here, by the caller's clock.
        Ok(found.filter(|c| c.expires_at > now))
    }

    async fn put_cached_answer(&self, entry: &CachedAnswer) -> StoreResult<()> {
        let mut item = item::record(keys::cached_answer(&entry.key), keys::RECORD, entry)?;
        item.insert(TTL.to_owned(), item::n(epoch_ceil(entry.expires_at)));
        item.insert(EXPIRES_AT.to_owned(), s(ts(entry.expires_at)));
        self.put(item).await
    }
}
