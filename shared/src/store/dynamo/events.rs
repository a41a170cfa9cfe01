//! Event bodies in S3 and the two ways of reading them back.
//!
//! History queries read DynamoDB for the recent window (30 days: the index items carry a copy of
//! each body) and the S3 month prefixes beyond it. The S3 objects are written before the index
//! items; after a refused transaction S3 is put back as the index says, and while index items
//! live (365 days) a body without one is not listed, so a crash between the two writes cannot
//! make an event appear that never committed.

use std::collections::HashSet;

use aws_sdk_s3::operation::get_object::GetObjectError;
use aws_sdk_s3::operation::list_objects_v2::ListObjectsV2Output;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{Delete, ObjectIdentifier};
use chrono::{DateTime, Datelike, Duration, TimeZone, Utc};
use tokio::task::JoinSet;

use super::commit::{EventBody, index_retention};
use super::item::{self, BODY, S3_KEY, SK, keys, sdk_error, ts};
use super::{DynamoStore, Query, Range};
use crate::domain::{EvolutionEvent, SystemId};
use crate::store::{StoreError, StoreResult};

/// Events this recent are read from DynamoDB; older ones from S3.
pub(super) fn recent_window() -> Duration {
    Duration::days(30)
}

/// Bodies fetched from S3 at once.
const FETCH_CONCURRENCY: usize = 16;

/// `DeleteObjects` takes at most this many keys.
const DELETE_BATCH: usize = 1_000;

/// One month folder of a system's event bodies.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Month {
    year: i32,
    month: u32,
    prefix: String,
}

impl DynamoStore {
    /// Stores an event body (compact, single-line JSON) under its deterministic key.
    pub(super) async fn put_event_body(&self, body: &EventBody) -> StoreResult<()> {
        self.put_json(&body.object, &body.json, "PutObject (event body)")
            .await
    }

    /// Stores an LLM call record (compact, single-line JSON) under its deterministic key.
    pub(super) async fn put_call_archive(
        &self,
        archive: &super::commit::CallArchive,
    ) -> StoreResult<()> {
        self.put_json(
            &archive.object,
            &archive.json,
            "PutObject (LLM call archive)",
        )
        .await
    }

    async fn put_json(&self, object: &str, json: &str, operation: &str) -> StoreResult<()> {
        self.s3
            .put_object()
            .bucket(&self.bucket)
            .key(object)
            .content_type("application/json")
            .body(ByteStream::from(json.to_owned().into_bytes()))
            .send()
            .await
            .map_err(|e| sdk_error(operation, &e))?;
        Ok(())
    }

    /// After a refused transaction: puts S3 back as the index says. A body no index item points
    /// at is deleted; a body that replaced a committed one (a refused rewrite of an event) gets
    /// the committed copy back. Best effort: a body left behind is never listed while index
    /// items live, and a redelivery overwrites it.
    pub(super) async fn restore_bodies(&self, bodies: &[EventBody]) {
        for body in bodies {
            let committed = match self.indexed_body(body).await {
                Ok(committed) => committed,
                Err(error) => {
                    tracing::warn!(
                        object = %body.object,
                        %error,
                        "cannot check an event body's index"
                    );
                    continue;
                }
            };
            let restored = match committed {
                Some(json) if json == body.json => continue,
                Some(json) => self
                    .put_event_body(&EventBody {
                        json,
                        ..body.clone()
                    })
                    .await
                    .err(),
                None => self
                    .s3
                    .delete_object()
                    .bucket(&self.bucket)
                    .key(&body.object)
                    .send()
                    .await
                    .err()
                    .map(|e| sdk_error("DeleteObject (orphaned body)", &e)),
            };
            if let Some(error) = restored {
                tracing::warn!(
                    object = %body.object,
                    %error,
                    "event body left as the refused transaction wrote it"
                );
            }
        }
    }

    /// The committed copy held by the index item that names the body's object, if any. The
    /// object key holds the month and the event id, not the time, so the item is looked for in
    /// the whole month.
    async fn indexed_body(&self, body: &EventBody) -> StoreResult<Option<String>> {
        let (start, end) = month_bounds(body.at);
        let range = Range::Between(
            format!("{}{}", keys::EVT, ts(start)),
            format!("{}{}", keys::EVT, ts(end)),
        );
        let query = Query::new(&body.index_pk, range).projection(&[SK, S3_KEY, BODY]);
        Ok(self
            .query(&query)
            .await?
            .iter()
            .find(|i| item::text(i, S3_KEY) == Some(body.object.as_str()))
            .and_then(|i| item::text(i, BODY).map(ToOwned::to_owned)))
    }

    /// Events of `id` from `since` on, in (timestamp, id) order, at most `limit`: S3 for the part
    /// of the range older than the recent window, DynamoDB for the rest.
    pub(super) async fn events(
        &self,
        id: &SystemId,
        since: Option<DateTime<Utc>>,
        limit: usize,
    ) -> StoreResult<Vec<EvolutionEvent>> {
        let now = self.clock.now();
        let cutoff = now - recent_window();
        if limit == 0 {
            return Ok(Vec::new());
        }
        // Recent events come from the index items' body copies.
        if since.is_some_and(|since| since >= cutoff) {
            return self.records_since(id, keys::EVT, since, limit).await;
        }
        let mut events = self.archived_events(id, since, cutoff, now, limit).await?;
        if events.len() < limit {
            let left = limit - events.len();
            let rest = self.records_since(id, keys::EVT, Some(cutoff), left);
            events.extend(rest.await?);
        }
        events.truncate(limit);
        Ok(events)
    }

    /// Events in `[since, cutoff)` from the S3 month prefixes, month by month.
    async fn archived_events(
        &self,
        id: &SystemId,
        since: Option<DateTime<Utc>>,
        cutoff: DateTime<Utc>,
        now: DateTime<Utc>,
        limit: usize,
    ) -> StoreResult<Vec<EvolutionEvent>> {
        let first = since.map(|s| (s.year(), s.month()));
        let last = (cutoff.year(), cutoff.month());
        let mut out = Vec::new();
        for month in self.event_months(id).await? {
            let at = (month.year, month.month);
            if first.is_some_and(|first| at < first) || at > last {
                continue;
            }
            let objects = self.object_keys(&month.prefix).await?;
            let mut events = self.fetch_events(objects).await?;
            events
                .retain(|e| since.is_none_or(|since| e.timestamp >= since) && e.timestamp < cutoff);
            self.drop_unindexed(id, &mut events, now).await?;
            events.sort_by(|a, b| (a.timestamp, &a.id).cmp(&(b.timestamp, &b.id)));
            out.extend(events);
            if out.len() >= limit {
                break;
            }
        }
        out.truncate(limit);
        Ok(out)
    }

    /// Keeps the events whose index item exists, and those old enough for it to have expired.
    async fn drop_unindexed(
        &self,
        id: &SystemId,
        events: &mut Vec<EvolutionEvent>,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        let indexed_since = now - index_retention();
        let (Some(low), Some(high)) = (
            events.iter().map(|e| e.timestamp).min(),
            events.iter().map(|e| e.timestamp).max(),
        ) else {
            return Ok(());
        };
        if high <= indexed_since {
            return Ok(());
        }
        let range = Range::Between(
            format!("{}{}", keys::EVT, ts(low)),
            format!("{}{}$", keys::EVT, ts(high)),
        );
        let indexed: HashSet<String> = self
            .query(&Query::new(keys::system(id), range).keys_only())
            .await?
            .iter()
            .filter_map(|i| item::text(i, SK).map(ToOwned::to_owned))
            .collect();
        events.retain(|e| {
            e.timestamp <= indexed_since || indexed.contains(&keys::event(e.timestamp, &e.id))
        });
        Ok(())
    }

    /// The month folders under `evolution-events/system=<id>/`, ascending.
    async fn event_months(&self, id: &SystemId) -> StoreResult<Vec<Month>> {
        let mut months = Vec::new();
        for year_prefix in self.folders(&item::event_prefix(id)).await? {
            let Some(year) = last_segment(&year_prefix).and_then(|y| y.parse().ok()) else {
                continue;
            };
            for month_prefix in self.folders(&year_prefix).await? {
                let Some(month) = last_segment(&month_prefix).and_then(|m| m.parse().ok()) else {
                    continue;
                };
                months.push(Month {
                    year,
                    month,
                    prefix: month_prefix,
                });
            }
        }
        months.sort();
        Ok(months)
    }

    /// The sub-folders (common prefixes) directly under `prefix`.
    async fn folders(&self, prefix: &str) -> StoreResult<Vec<String>> {
        self.listing(prefix, Some("/"), |page| {
            page.common_prefixes()
                .iter()
                .filter_map(|p| p.prefix().map(ToOwned::to_owned))
                .collect()
        })
        .await
    }

    /// Every object key under `prefix`.
    async fn object_keys(&self, prefix: &str) -> StoreResult<Vec<String>> {
        self.listing(prefix, None, |page| {
            page.contents()
                .iter()
                .filter_map(|o| o.key().map(ToOwned::to_owned))
                .collect()
        })
        .await
    }

    /// What `names` takes from every page of the listing under `prefix`, split at `delimiter`
    /// when there is one.
    async fn listing(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
        names: impl Fn(&ListObjectsV2Output) -> Vec<String>,
    ) -> StoreResult<Vec<String>> {
        let mut out = Vec::new();
        let mut token = None;
        loop {
            let output = self
                .s3
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_delimiter(delimiter.map(ToOwned::to_owned))
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| sdk_error("ListObjectsV2", &e))?;
            out.extend(names(&output));
            match output.next_continuation_token {
                Some(next) if output.is_truncated == Some(true) => token = Some(next),
                _ => break,
            }
        }
        Ok(out)
    }

    /// The bodies of `objects`, fetched a few at a time; one deleted meanwhile is skipped.
    async fn fetch_events(&self, objects: Vec<String>) -> StoreResult<Vec<EvolutionEvent>> {
        let mut events = Vec::with_capacity(objects.len());
        for chunk in objects.chunks(FETCH_CONCURRENCY) {
            let mut fetches = JoinSet::new();
            for object in chunk {
                let (s3, bucket, object) = (self.s3.clone(), self.bucket.clone(), object.clone());
                fetches.spawn(async move { fetch_event(&s3, &bucket, &object).await });
            }
            while let Some(joined) = fetches.join_next().await {
                let fetched = joined.map_err(|e| {
                    StoreError::Unavailable(format!("event body fetch failed: {e}"))
                })?;
                events.extend(fetched?);
            }
        }
        Ok(events)
    }

    /// Deletes every event body of a system (after its index items are gone).
    pub(super) async fn delete_event_bodies(&self, id: &SystemId) -> StoreResult<()> {
        let objects = self.object_keys(&item::event_prefix(id)).await?;
        for chunk in objects.chunks(DELETE_BATCH) {
            let identifiers = chunk
                .iter()
                .map(|key| ObjectIdentifier::builder().key(key).build())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| StoreError::Invalid(format!("request cannot be built: {e}")))?;
            let delete = Delete::builder()
                .set_objects(Some(identifiers))
                .quiet(true)
                .build()
                .map_err(|e| StoreError::Invalid(format!("request cannot be built: {e}")))?;
            let output = self
                .s3
                .delete_objects()
                .bucket(&self.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| sdk_error("DeleteObjects", &e))?;
            if let Some(failed) = output.errors().first() {
                return Err(StoreError::Unavailable(format!(
                    "{} event bodies not deleted, first {}: {}",
                    output.errors().len(),
                    failed.key().unwrap_or("?"),
                    failed.code().unwrap_or("?")
                )));
            }
        }
        Ok(())
    }
}

async fn fetch_event(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    object: &str,
) -> StoreResult<Option<EvolutionEvent>> {
    let output = match s3.get_object().bucket(bucket).key(object).send().await {
        Ok(output) => output,
        Err(error) if matches!(error.as_service_error(), Some(GetObjectError::NoSuchKey(_))) => {
            return Ok(None);
        }
        Err(error) => return Err(sdk_error("GetObject (event body)", &error)),
    };
    let bytes = output
        .body
        .collect()
        .await
        .map_err(|e| StoreError::Unavailable(format!("reading event body {object}: {e}")))?
        .into_bytes();
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| StoreError::Corrupt(format!("event body {object}: {e}")))
}

/// The first instant of `at`'s UTC month and of the next one.
fn month_bounds(at: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
    let (year, month) = (at.year(), at.month());
    let (next_year, next_month) = if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    };
    let start = |y, m| {
        Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0)
            .single()
            .unwrap_or(at)
    };
    (start(year, month), start(next_year, next_month))
}

/// `2026` of `evolution-events/system=x/2026/`.
fn last_segment(prefix: &str) -> Option<&str> {
    prefix.trim_end_matches('/').rsplit('/').next()
}
