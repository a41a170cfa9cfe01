//! Which region writes, and moving that writer (docs/architecture.md, "Region failover").
//!
//! The table is a global table and the bucket replicates to a bucket in each replica region, but
//! a conditional write is judged only by the replica that receives it, so exactly one region may
//! write. `CTRL`/`WRITER` names it, with an epoch that every change of writer raises; `FENCE`/`<nn>`
//! are copies of the writer in [`FENCE_SHARDS`] items, and every transaction checks the copy of
//! its shard: a region that is not the writer has every transaction refused (`Fenced`), so no
//! conditional write slips in while the writer moves. The check is spread over shards because a
//! `ConditionCheck` takes part in conflict detection like a write: one item checked by every
//! transaction would serialise the fleet's transactions.
//!
//! A move fences the old writer (no region writes), waits until the target replica holds what the
//! old one wrote ([`CatchUp`]), then makes the target the writer in the target region, conditioned
//! on the fence having arrived there.

mod catch_up;

use std::collections::HashMap;

use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    CancellationReason, ConditionCheck, Put, ReturnValuesOnConditionCheckFailure, TransactWriteItem,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::item::{self, BODY, Conditioned, Expr, Item, PK, build_error, keys, n, s, sdk_error};
use super::ledger::put;
use super::{DynamoStore, Query, Range};
use crate::domain::{Alert, AlertLevel};
use crate::store::{EvolutionStore, StoreError, StoreResult, Transaction, Write};

pub use catch_up::{CatchUp, ReplicaView};

/// The partition of the writer's copies.
const FENCE: &str = "FENCE";
/// The sort key of the writer record in the `CTRL` partition.
const WRITER: &str = "WRITER";
/// Attribute names of a fence copy.
const WRITER_ATTR: &str = "writer";
const EPOCH: &str = "epoch";
/// How many copies of the writer transactions check, spread by the partition they write first.
pub const FENCE_SHARDS: u32 = 16;

/// Who may write, and the history of the last change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriterRecord {
    /// The region whose transactions are accepted; `None` while fenced for a move.
    pub writer: Option<String>,
    /// The stack's own region, where `failback` returns to.
    pub home: String,
    /// Raised by every change, so a change conditioned on the epoch it read cannot be applied
    /// twice or over another operator's.
    pub epoch: u64,
    /// Where a move under way goes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moving_to: Option<String>,
    pub changed_at: DateTime<Utc>,
    pub changed_by: String,
}

/// The shard of the writer's copy that a transaction writing `pk` first checks (FNV-1a: stable
/// across builds and processes, unlike the standard library's hasher).
fn fence_shard(pk: &str) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in pk.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash % FENCE_SHARDS
}

fn shard_key(shard: u32) -> String {
    format!("{shard:02}")
}

/// The partition key of a transaction's first item.
fn first_partition(items: &[TransactWriteItem]) -> Option<String> {
    let first = items.first()?;
    let attributes = first
        .put()
        .map(Put::item)
        .or_else(|| first.update().map(aws_sdk_dynamodb::types::Update::key))
        .or_else(|| first.delete().map(aws_sdk_dynamodb::types::Delete::key))
        .or_else(|| first.condition_check().map(ConditionCheck::key))?;
    item::text(attributes, PK).map(ToOwned::to_owned)
}

/// Why a transaction was refused by the fence: the copy it checked, as stored.
pub(super) fn fenced_error(region: &str, reason: &CancellationReason) -> StoreError {
    let stored = reason.item();
    let writer = stored
        .and_then(|i| item::text(i, WRITER_ATTR))
        .filter(|w| !w.is_empty());
    let epoch = stored
        .and_then(|i| item::number(i, EPOCH).ok().flatten())
        .unwrap_or_default();
    StoreError::Fenced(match writer {
        Some(writer) => format!(
            "{region} is not the writer: {writer} is (epoch {epoch}); see `evolve failover --status`"
        ),
        None => format!(
            "the writer is moving (epoch {epoch}): no region writes until the move completes"
        ),
    })
}

impl DynamoStore {
    /// The check that this store's region is the writer, to send with a transaction: its first
    /// item's shard copy names this region, or has never been written (a stack that never moved
    /// its writer). `None` when the client has no region (it cannot send requests anyway).
    pub(super) fn fence_check(
        &self,
        items: &[TransactWriteItem],
    ) -> StoreResult<Option<TransactWriteItem>> {
        let Some(region) = &self.region else {
            return Ok(None);
        };
        let shard = fence_shard(&first_partition(items).unwrap_or_default());
        let mut expr = Expr::default();
        let pk = expr.name(PK);
        let writer = expr.name(WRITER_ATTR);
        let mine = expr.value(s(region));
        let check = ConditionCheck::builder()
            .table_name(&self.table)
            .set_key(Some(item::key(FENCE, shard_key(shard))))
            .conditioned(
                format!("attribute_not_exists({pk}) OR {writer} = {mine}"),
                &expr,
            )
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .build()
            .map_err(|e| build_error(&e))?;
        Ok(Some(
            TransactWriteItem::builder().condition_check(check).build(),
        ))
    }

    /// The region this store's clients send to.
    pub fn region(&self) -> Option<&str> {
        self.region.as_deref()
    }

    /// The writer record as this region's replica holds it; `None` before any move.
    pub async fn writer(&self) -> StoreResult<Option<WriterRecord>> {
        self.get_record(keys::CTRL, WRITER).await
    }

    /// Each fence copy in this replica, as (writer, epoch); `None` for a copy not written here.
    pub async fn fence_copies(&self) -> StoreResult<Vec<Option<(String, u64)>>> {
        let mut copies = vec![None; FENCE_SHARDS as usize];
        for copy in self.query(&Query::new(FENCE, Range::All)).await? {
            let slot = item::text(&copy, item::SK)
                .and_then(|sk| sk.parse::<usize>().ok())
                .and_then(|shard| copies.get_mut(shard));
            if let Some(slot) = slot {
                *slot = Some((
                    item::text(&copy, WRITER_ATTR)
                        .unwrap_or_default()
                        .to_owned(),
                    u64::try_from(item::number(&copy, EPOCH)?.unwrap_or_default())
                        .unwrap_or_default(),
                ));
            }
        }
        Ok(copies)
    }

    /// Writes the writer record and every fence copy in one transaction of this region,
    /// conditioned on the record this region holds being at `expected_epoch` (absent: `None`).
    /// It carries no fence check of its own: it is what moves the fence.
    async fn set_writer(
        &self,
        record: &WriterRecord,
        expected_epoch: Option<u64>,
    ) -> StoreResult<()> {
        let mut expr = Expr::default();
        let condition = match expected_epoch {
            None => format!("attribute_not_exists({})", expr.name(PK)),
            Some(epoch) => format!("{} = {}", expr.name(EPOCH), expr.value(n(epoch))),
        };
        let mut head = item::record(keys::CTRL, WRITER, record)?;
        head.insert(EPOCH.to_owned(), n(record.epoch));
        let mut items = vec![put(&self.table, head, Some((condition, expr)))?];
        let writer = record.writer.clone().unwrap_or_default();
        let body = item::encode(record)?;
        for shard in 0..FENCE_SHARDS {
            let copy: Item = HashMap::from([
                (PK.to_owned(), s(FENCE)),
                (item::SK.to_owned(), s(shard_key(shard))),
                (WRITER_ATTR.to_owned(), s(&writer)),
                (EPOCH.to_owned(), n(record.epoch)),
                (BODY.to_owned(), s(&body)),
            ]);
            items.push(put(&self.table, copy, None)?);
        }
        let sent = self
            .dynamo
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await;
        match sent {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.as_service_error(),
                    Some(TransactWriteItemsError::TransactionCanceledException(_))
                ) =>
            {
                Err(StoreError::ConditionFailed(format!(
                    "the writer record in {} is no longer at epoch {}: another change came first",
                    self.region.as_deref().unwrap_or("this region"),
                    expected_epoch.map_or_else(|| "none".to_owned(), |e| e.to_string())
                )))
            }
            Err(e) => Err(sdk_error("TransactWriteItems (writer)", &e)),
        }
    }
}

/// A move of the writer, as an operator asks for it.
#[derive(Debug, Clone)]
pub struct Move {
    /// Who asks (the caller's ARN), for the record and the audit alert.
    pub actor: String,
    /// Event index items from here on must have reached the target, with their bodies.
    pub since: DateTime<Utc>,
    /// How long to wait for the target to catch up before the fence is lifted again.
    pub timeout: std::time::Duration,
    /// How long to wait between two catch-up checks.
    pub poll: std::time::Duration,
    pub now: DateTime<Utc>,
    /// The old writer's region cannot be reached: promote the target without fencing the old
    /// writer or waiting for it. What the old region wrote and did not replicate is lost; its
    /// fence arrives by replication when it comes back.
    pub force: bool,
}

/// A completed move.
#[derive(Debug, Clone)]
pub struct Moved {
    pub from: String,
    pub to: String,
    pub record: WriterRecord,
    /// The last catch-up check (none for a forced move).
    pub catch_up: Option<CatchUp>,
    /// Catch-up checks made.
    pub checks: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum FailoverError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Refused before anything changed.
    #[error("{0}")]
    Refused(String),
    /// The target did not catch up in time; the old writer was un-fenced (or says why not).
    #[error("{region} did not catch up within {timeout_s} s ({}); {restored}", .catch_up.summary())]
    Lagging {
        region: String,
        timeout_s: u64,
        catch_up: CatchUp,
        restored: String,
    },
}

fn region_of(store: &DynamoStore, role: &str) -> Result<String, FailoverError> {
    store
        .region()
        .map(ToOwned::to_owned)
        .ok_or_else(|| FailoverError::Refused(format!("the {role} store's client has no region")))
}

/// Moves the writer from `from`'s region to `to`'s: fence, wait for the target to catch up,
/// promote the target, audit with a critical alert written in the target.
pub async fn move_writer(
    from: &DynamoStore,
    to: &DynamoStore,
    plan: &Move,
) -> Result<Moved, FailoverError> {
    let (source, target) = (region_of(from, "source")?, region_of(to, "target")?);
    if source == target {
        return Err(FailoverError::Refused(format!(
            "{target} is already the region this command writes to"
        )));
    }
    if plan.force {
        return force(to, &source, &target, plan).await;
    }
    let current = from.writer().await?;
    let home = current.as_ref().map_or(source.clone(), |r| r.home.clone());
    let fence_epoch = match &current {
        // Resuming a move to the same region that was interrupted after its fence.
        Some(r) if r.writer.is_none() && r.moving_to.as_deref() == Some(target.as_str()) => r.epoch,
        Some(r) if r.writer.as_deref() != Some(source.as_str()) => {
            return Err(FailoverError::Refused(format!(
                "{source} is not the writer: the record there says {} (epoch {})",
                r.writer.as_deref().unwrap_or("none (a move is under way)"),
                r.epoch
            )));
        }
        _ => {
            let fenced = WriterRecord {
                writer: None,
                home: home.clone(),
                epoch: current.as_ref().map_or(0, |r| r.epoch) + 1,
                moving_to: Some(target.clone()),
                changed_at: plan.now,
                changed_by: plan.actor.clone(),
            };
            from.set_writer(&fenced, current.as_ref().map(|r| r.epoch))
                .await?;
            fenced.epoch
        }
    };
    let started = tokio::time::Instant::now();
    let mut checks = 0;
    let catch_up = loop {
        let report = from.catch_up(to, plan.since, fence_epoch).await?;
        checks += 1;
        if report.caught_up() {
            break report;
        }
        if started.elapsed() >= plan.timeout {
            let restored = WriterRecord {
                writer: Some(source.clone()),
                home,
                epoch: fence_epoch + 1,
                moving_to: None,
                changed_at: plan.now,
                changed_by: plan.actor.clone(),
            };
            let restored = match from.set_writer(&restored, Some(fence_epoch)).await {
                Ok(()) => format!("{source} writes again (epoch {})", fence_epoch + 1),
                Err(e) => format!("{source} stays fenced: lifting the fence failed: {e}"),
            };
            return Err(FailoverError::Lagging {
                region: target,
                timeout_s: plan.timeout.as_secs(),
                catch_up: report,
                restored,
            });
        }
        tokio::time::sleep(plan.poll).await;
    };
    let record = WriterRecord {
        writer: Some(target.clone()),
        home,
        epoch: fence_epoch + 1,
        moving_to: None,
        changed_at: plan.now,
        changed_by: plan.actor.clone(),
    };
    to.set_writer(&record, Some(fence_epoch)).await?;
    audit(to, &source, &record, "").await?;
    Ok(Moved {
        from: source,
        to: target,
        record,
        catch_up: Some(catch_up),
        checks,
    })
}

/// A move without the old writer: the target's copy of the record decides the epoch.
async fn force(
    to: &DynamoStore,
    source: &str,
    target: &str,
    plan: &Move,
) -> Result<Moved, FailoverError> {
    let seen = to.writer().await?;
    let record = WriterRecord {
        writer: Some(target.to_owned()),
        home: seen.as_ref().map_or(source.to_owned(), |r| r.home.clone()),
        // Two past what the target saw: above a fence the old region may have raised and not
        // replicated, so the old region's copy loses when replication resumes.
        epoch: seen.as_ref().map_or(0, |r| r.epoch) + 2,
        moving_to: None,
        changed_at: plan.now,
        changed_by: plan.actor.clone(),
    };
    to.set_writer(&record, seen.as_ref().map(|r| r.epoch))
        .await?;
    audit(
        to,
        source,
        &record,
        " without fencing the old writer or checking what reached this region (--force): \
         writes the old region made and did not replicate are not here",
    )
    .await?;
    Ok(Moved {
        from: source.to_owned(),
        to: target.to_owned(),
        record,
        catch_up: None,
        checks: 0,
    })
}

/// A critical alert in the new writer's store: who moved the writer, from where, to where.
async fn audit(
    to: &DynamoStore,
    source: &str,
    record: &WriterRecord,
    how: &str,
) -> StoreResult<()> {
    let target = record.writer.as_deref().unwrap_or_default();
    let alert = Alert {
        id: format!("writer-moved-{}", record.epoch),
        level: AlertLevel::Critical,
        kind: "writer_moved".into(),
        message: format!(
            "the writer moved from {source} to {target} (epoch {}) by {}{how}",
            record.epoch, record.changed_by
        ),
        system_id: None,
        at: record.changed_at,
    };
    to.commit(Transaction {
        writes: vec![Write::PutAlert { alert }],
        completion: None,
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_stable_and_spread() {
        assert_eq!(fence_shard("SYS#alpha"), fence_shard("SYS#alpha"));
        let used: std::collections::BTreeSet<u32> = (0..200)
            .map(|i| fence_shard(&format!("SYS#svc-{i}")))
            .collect();
        assert_eq!(used.len(), FENCE_SHARDS as usize, "{used:?}");
    }

    #[test]
    fn a_transactions_shard_is_its_first_partitions() {
        let item = item::key("SYS#alpha", "HEAD");
        let put = Put::builder()
            .table_name("t")
            .set_item(Some(item))
            .build()
            .expect("put");
        let items = vec![TransactWriteItem::builder().put(put).build()];
        assert_eq!(first_partition(&items).as_deref(), Some("SYS#alpha"));
        assert_eq!(first_partition(&[]), None);
    }
}
