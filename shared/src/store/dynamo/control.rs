//! Control state on DynamoDB: items of the `CTRL` partition and the response cache.

use async_trait::async_trait;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use chrono::{DateTime, Utc};

use super::item::{self, Conditioned, EXPIRES_AT, Expr, TTL, epoch_ceil, keys, s, ts};
use super::{DynamoStore, commit};
use crate::store::performance::PerformanceSnapshot;
use crate::store::{
    BudgetState, CachedAnswer, Checkpoint, CircuitState, ControlState, StoreError, StoreResult,
};

/// How often an update of a control item is tried again after another writer changed it
/// between the read and the conditional write.
const UPDATE_ATTEMPTS: u32 = 20;

impl DynamoStore {
    /// Read, change, write back conditioned on the revision read (absent: on no item), again
    /// while another writer got there first: an optimistic lock on one `CTRL` item. `build`
    /// makes the new item (with a new revision) from the stored one.
    async fn update_record(
        &self,
        sk: String,
        build: &(dyn Fn(Option<&item::Item>) -> StoreResult<item::Item> + Sync),
    ) -> StoreResult<()> {
        for _ in 0..UPDATE_ATTEMPTS {
            let found = self.get(keys::CTRL, sk.clone()).await?;
            let seen = found
                .as_ref()
                .and_then(|f| item::text(f, item::REVISION).map(ToOwned::to_owned));
            let mut next = build(found.as_ref())?;
            next.insert(item::REVISION.to_owned(), s(commit::new_revision()));
            let mut expr = Expr::default();
            let condition = match (&found, &seen) {
                (None, _) => format!("attribute_not_exists({})", expr.name(item::PK)),
                (Some(_), None) => {
                    format!("attribute_not_exists({})", expr.name(item::REVISION))
                }
                (Some(_), Some(seen)) => {
                    let revision = expr.name(item::REVISION);
                    format!("{revision} = {}", expr.value(s(seen)))
                }
            };
            let written = self
                .dynamo
                .put_item()
                .table_name(&self.table)
                .set_item(Some(next))
                .conditioned(condition, &expr)
                .send()
                .await;
            match written {
                Ok(_) => return Ok(()),
                Err(e)
                    if e.as_service_error()
                        .is_some_and(PutItemError::is_conditional_check_failed_exception) => {}
                Err(e) => return Err(item::sdk_error("PutItem", &e)),
            }
        }
        Err(StoreError::ConditionFailed(format!(
            "{}/{sk} kept changing under {UPDATE_ATTEMPTS} updates",
            keys::CTRL
        )))
    }
}

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

    async fn update_circuit(
        &self,
        model_id: &str,
        change: &(dyn Fn(Option<CircuitState>) -> CircuitState + Sync),
    ) -> StoreResult<()> {
        self.update_record(keys::circuit(model_id), &|found| {
            let stored = found.map(item::decode::<CircuitState>).transpose()?;
            item::record(keys::CTRL, keys::circuit(model_id), &change(stored))
        })
        .await
    }

    async fn update_performance(
        &self,
        change: &(dyn for<'p> Fn(&'p mut PerformanceSnapshot) + Sync),
    ) -> StoreResult<()> {
        self.update_record(keys::PERFORMANCE.to_owned(), &|found| {
            let mut perf: PerformanceSnapshot =
                found.map(item::decode).transpose()?.unwrap_or_default();
            change(&mut perf);
            commit::performance_item(&perf)
        })
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
