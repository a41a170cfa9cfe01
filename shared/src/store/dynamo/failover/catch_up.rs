//! Whether a replica holds what its source wrote, and what a reader of a lagging replica sees.
//!
//! Global tables replicate item by item, in no order across items, and S3 replicates object by
//! object: a replica can hold a head whose generation item has not arrived, or an index item
//! whose body has not. The check compares what the move must not lose: every registry entry and
//! head (equal bodies), each head's generation, and every event index item since a point in time
//! with its body in the replica's bucket.

use aws_sdk_s3::operation::head_object::HeadObjectError;
use chrono::{DateTime, Utc};

use super::super::item::{self, BODY, PK, S3_KEY, SK, keys, sdk_error};
use super::super::{DynamoStore, Query, Range, since_range};
use crate::domain::{Generation, Head, SystemId};
use crate::store::{EvolutionStore, StoreResult};

/// A system's current DNA as one replica holds it.
#[derive(Debug, Clone, PartialEq)]
pub enum ReplicaView {
    Current {
        head: Head,
        generation: Box<Generation>,
    },
    /// The head arrived before the generation it points at: the DNA is not readable here yet.
    /// `newest` is the newest generation this replica holds.
    Lagging { head: Head, newest: Option<u64> },
}

/// What a replica lacks of its source; empty `lagging` when it has caught up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CatchUp {
    /// Systems compared.
    pub systems: usize,
    /// Event index items compared.
    pub events: usize,
    /// What is missing or different, one line each.
    pub lagging: Vec<String>,
}

impl CatchUp {
    pub fn caught_up(&self) -> bool {
        self.lagging.is_empty()
    }

    /// One line: the counts, and the first few differences.
    pub fn summary(&self) -> String {
        const SHOWN: usize = 5;
        let mut line = format!(
            "{} systems and {} events compared, {} behind",
            self.systems,
            self.events,
            self.lagging.len()
        );
        if !self.lagging.is_empty() {
            line.push_str(": ");
            line.push_str(&self.lagging[..self.lagging.len().min(SHOWN)].join("; "));
            if self.lagging.len() > SHOWN {
                line.push_str("; ...");
            }
        }
        line
    }
}

/// A record's JSON, to compare two replicas' copies.
fn body_of(item: Option<&item::Item>) -> Option<&str> {
    item.and_then(|i| item::text(i, BODY))
}

/// Event index attributes the comparison reads.
const EVENT_ATTRIBUTES: &[&str] = &[PK, SK, S3_KEY];

impl DynamoStore {
    /// The system's DNA in this replica: current, or lagging when the head points at a
    /// generation not replicated yet (never an error, never another generation's genes).
    pub async fn read_view(&self, id: &SystemId) -> StoreResult<Option<ReplicaView>> {
        let Some(head) = self.get_head(id).await? else {
            return Ok(None);
        };
        if let Some(generation) = self.get_generation(id, head.generation).await? {
            return Ok(Some(ReplicaView::Current {
                head,
                generation: Box::new(generation),
            }));
        }
        let newest: Option<Generation> = self
            .query_records(
                &Query::new(keys::system(id), Range::Prefix(keys::GEN.to_owned()))
                    .backward()
                    .limit(1),
            )
            .await?
            .into_iter()
            .next();
        Ok(Some(ReplicaView::Lagging {
            head,
            newest: newest.map(|g| g.generation),
        }))
    }

    /// What `replica` lacks of this store: the fence at `epoch`, every registry entry and head,
    /// each head's generation, and every event index item since `since` with its body.
    pub async fn catch_up(
        &self,
        replica: &DynamoStore,
        since: DateTime<Utc>,
        epoch: u64,
    ) -> StoreResult<CatchUp> {
        let mut report = CatchUp::default();
        self.fence_arrived(replica, epoch, &mut report).await?;
        let registry = self.query(&Query::new(keys::SYSTEMS, Range::All)).await?;
        for entry in &registry {
            let Some(id) = item::text(entry, SK).and_then(|sk| SystemId::parse(sk).ok()) else {
                continue;
            };
            report.systems += 1;
            let pk = keys::system(&id);
            // The registry entry is the one just listed; the head is read.
            let head = self.get(pk.clone(), keys::HEAD).await?;
            for (partition, sort, ours) in [
                (keys::SYSTEMS.to_owned(), id.to_string(), Some(entry)),
                (pk.clone(), keys::HEAD.to_owned(), head.as_ref()),
            ] {
                let theirs = replica.get(partition.clone(), sort.clone()).await?;
                if body_of(ours) != body_of(theirs.as_ref()) {
                    report.lagging.push(format!("{partition}/{sort} differs"));
                }
            }
            if let Some(ReplicaView::Lagging { head, newest }) = replica.read_view(&id).await? {
                report.lagging.push(format!(
                    "{id}: the head points at generation {}, the newest here is {}",
                    head.generation,
                    newest.map_or_else(|| "none".to_owned(), |g| g.to_string())
                ));
            }
            self.events_arrived(replica, &pk, since, &mut report)
                .await?;
        }
        Ok(report)
    }

    /// The record and every fence copy in `replica` are at `epoch`.
    async fn fence_arrived(
        &self,
        replica: &DynamoStore,
        epoch: u64,
        report: &mut CatchUp,
    ) -> StoreResult<()> {
        let record = replica.writer().await?.map(|r| r.epoch);
        if record != Some(epoch) {
            report.lagging.push(format!(
                "the writer record is at epoch {} (waiting for {epoch})",
                record.map_or_else(|| "none".to_owned(), |e| e.to_string())
            ));
        }
        let behind = replica
            .fence_copies()
            .await?
            .iter()
            .filter(|copy| copy.as_ref().map(|(_, e)| *e) != Some(epoch))
            .count();
        if behind > 0 {
            report
                .lagging
                .push(format!("{behind} fence copies not at epoch {epoch}"));
        }
        Ok(())
    }

    /// Every event index item of `pk` since `since` is in `replica`, and its body in the
    /// replica's bucket.
    async fn events_arrived(
        &self,
        replica: &DynamoStore,
        pk: &str,
        since: DateTime<Utc>,
        report: &mut CatchUp,
    ) -> StoreResult<()> {
        let range = since_range(keys::EVT, Some(since));
        let ours = self
            .query(&Query::new(pk, range.clone()).projection(EVENT_ATTRIBUTES))
            .await?;
        let theirs: std::collections::HashSet<String> = replica
            .query(&Query::new(pk, range).keys_only())
            .await?
            .iter()
            .filter_map(|i| item::text(i, SK).map(ToOwned::to_owned))
            .collect();
        for event in &ours {
            report.events += 1;
            let sk = item::text(event, SK).unwrap_or_default();
            if !theirs.contains(sk) {
                report.lagging.push(format!("{pk}/{sk} not replicated"));
                continue;
            }
            if let Some(object) = item::text(event, S3_KEY)
                && !replica.body_exists(object).await?
            {
                report
                    .lagging
                    .push(format!("s3://{}/{object} not replicated", replica.bucket));
            }
        }
        Ok(())
    }

    async fn body_exists(&self, object: &str) -> StoreResult<bool> {
        let found = self
            .s3
            .head_object()
            .bucket(&self.bucket)
            .key(object)
            .send()
            .await;
        match found {
            Ok(_) => Ok(true),
            Err(e)
                if e.as_service_error()
                    .is_some_and(HeadObjectError::is_not_found) =>
            {
                Ok(false)
            }
            Err(e) => Err(sdk_error("HeadObject", &e)),
        }
    }
}
