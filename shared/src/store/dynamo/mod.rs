//! The cloud adapter: one DynamoDB table and one S3 bucket (docs/architecture.md, "Data model").
//!
//! Layout of the table (`PK`, `SK`, all strings):
//!
//! | PK | SK | record |
//! | --- | --- | --- |
//! | `SYSTEMS` | `<id>` | registry entry |
//! | `SYS#<id>` | `HEAD` | head pointer (`generation`, `status`) |
//! | `SYS#<id>` | `GEN#<gen:010>` | immutable generation |
//! | `SYS#<id>` | `EVT#<ts>#<event id>` | event index (`s3_key`, body copy, `ttl`) |
//! | `SYS#<id>` | `DEC#<ts>#<id>`, `DECID#<id>` | decision, written once |
//! | `SYS#<id>` | `FIT#<gen:010>#<id>` | fitness sample |
//! | `SYS#<id>` | `HIST#<gen:010>` | closed evaluation |
//! | `SYS#<id>` | `PLAN#<id>`, `ANALYSIS#<id>` | plan (written once), analysis |
//! | `SYS#<id>` | `CURSOR` | plan cursor (`version`) |
//! | `SYS#<id>` | `CALL#<ts>#<call id>` | LLM call record |
//! | `SYS#<id>` | `IDEMP#<key>` | reference to a completed record of the system |
//! | `CALLDAY#<yyyy-mm-dd>` | `<ts>#<call id>` | every system's calls by day |
//! | `CALLDAYS` | `<yyyy-mm-dd>` | the days with calls |
//! | `ALERTS` | `<ts>#<alert id>` | alert |
//! | `IDEMP#<key>` | `RECORD` | claim or outbox (`state`, `until`, `expires_at`, `sent`, `ttl`) |
//! | `CTRL` | `BUDGET`, `PERFORMANCE` | budget mode (`mode`), model performance (`revision`) |
//! | `CTRL` | `CIRCUIT#<model>`, `CKPT#<key>` | circuit breaker, answer checkpoint (`ttl`) |
//! | `CTRL` | `WRITER` | the region that writes (`epoch`); absent until the writer first moves |
//! | `FENCE` | `<nn>` | copies of the writer (`writer`, `epoch`) that transactions check |
//! | `CACHE#<key hash>` | `RECORD` | response-cache entry (`ttl`, `expires_at`) |
//! | `COST#<yyyy-mm-dd>`, `COST#<yyyy-mm>` | `TOTAL`, `SYS#<id>`, `MODEL#<id>` | counters |
//! | `LEDGER#<call id>` | `RECORD` | settled call, written once |
//! | `LEDGERDAY#<yyyy-mm-dd>` | `<ts>#<call id>` | settled calls by day |
//! | `LEDGERDAYS` | `<yyyy-mm-dd>` | the days with settled calls |
//! | `RECONCILE` | `<yyyy-mm-dd>` | the bill's reconciliation of the day (`billed`, `checked_on`) |
//!
//! `<ts>` is RFC 3339 with nanoseconds and `Z` (fixed width, so key order is time order). The
//! event index items expire 365 days after the event.
//!
//! Every record is a `body` string attribute holding its JSON beside the key and condition
//! attributes. Event bodies also go to S3 at
//! `evolution-events/system=<id>/<yyyy>/<mm>/<event id>.json`, before the transaction that indexes
//! them, so an index item never points at a missing body. Each LLM call record also goes to S3,
//! compact, at `llm-calls/year=<yyyy>/month=<mm>/<call id>.json` (the spend archive Athena reads;
//! kept when a system is purged, like the ledger).

mod commit;
mod control;
mod events;
mod evolution;
mod failover;
mod item;
mod ledger;

use std::sync::Arc;
use std::time::Duration as StdDuration;

pub use aws_sdk_dynamodb;
pub use aws_sdk_s3;
pub use failover::{
    CatchUp, FENCE_SHARDS, FailoverError, Move, Moved, ReplicaView, WriterRecord, move_writer,
};

use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, CancellationReason, DeleteRequest, KeySchemaElement, KeyType,
    ScalarAttributeType, TimeToLiveSpecification, TransactWriteItem, WriteRequest,
};
use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration};
use chrono::{DateTime, Utc};
use rand::Rng;
use serde::de::DeserializeOwned;

use super::rules::IdempotencyRecord;
use super::{StoreError, StoreResult};
use crate::clock::{Clock, SystemClock};
use item::{
    EXPIRES_AT, Expr, Item, PK, SENT, SK, TTL, build_error, decode, keys, s, sdk_error, ts,
};

/// `BatchWriteItem` takes at most this many requests.
const BATCH_SIZE: usize = 25;

/// How often a transaction cancelled only by conflicting transactions is tried again before the
/// caller hears `Unavailable`.
const CONFLICT_ATTEMPTS: u32 = 8;

/// The largest `Limit` sent with a query; larger caps page by DynamoDB's 1 MB instead.
const MAX_PAGE: i32 = 1_000;

/// How often a claim re-reads a record that changed under it.
const CLAIM_ATTEMPTS: u32 = 5;

/// The evolution store, control state and cost ledger on DynamoDB and S3.
#[derive(Debug, Clone)]
pub struct DynamoStore {
    dynamo: aws_sdk_dynamodb::Client,
    s3: aws_sdk_s3::Client,
    table: String,
    bucket: String,
    /// The region the clients send to: transactions are refused unless it is the writer
    /// (docs/architecture.md, "Region failover").
    region: Option<String>,
    /// Decides which events count as recent (read from DynamoDB) and which as history (S3).
    clock: Arc<dyn Clock>,
}

/// A sort-key range of one partition.
#[derive(Debug, Clone)]
enum Range {
    All,
    Prefix(String),
    /// Inclusive on both ends.
    Between(String, String),
    /// Strictly above the key: the next page after the last key seen.
    After(String),
}

/// One `Query`: a partition, a key range, a direction and a cap.
#[derive(Debug, Clone)]
struct Query {
    pk: String,
    range: Range,
    forward: bool,
    limit: usize,
    /// Attributes to return; all when `None`.
    projection: Option<&'static [&'static str]>,
}

impl Query {
    fn new(pk: impl Into<String>, range: Range) -> Self {
        Self {
            pk: pk.into(),
            range,
            forward: true,
            limit: usize::MAX,
            projection: None,
        }
    }

    fn limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    fn backward(mut self) -> Self {
        self.forward = false;
        self
    }

    fn keys_only(self) -> Self {
        self.projection(&[PK, SK])
    }

    fn projection(mut self, attributes: &'static [&'static str]) -> Self {
        self.projection = Some(attributes);
        self
    }
}

/// Sort keys `<prefix><ts(since)>...` from `since` on; all of them when `since` is `None`. The
/// prefix ends with `#`; `$` is the next character, so it bounds the prefix from above.
fn since_range(prefix: &str, since: Option<DateTime<Utc>>) -> Range {
    match since {
        None => Range::Prefix(prefix.to_owned()),
        Some(since) => Range::Between(format!("{prefix}{}", ts(since)), upper(prefix)),
    }
}

/// The smallest key above every key that starts with `prefix` (which ends with `#`).
fn upper(prefix: &str) -> String {
    format!("{}$", prefix.trim_end_matches('#'))
}

/// Sort keys that are bare timestamps (`<ts>#<id>`), from `since` on. Times start with a digit,
/// so `~` bounds them from above.
fn time_range(since: Option<DateTime<Utc>>) -> Range {
    match since {
        None => Range::All,
        Some(since) => Range::Between(ts(since), "~".to_owned()),
    }
}

/// Why a transaction did not apply.
#[derive(Debug)]
enum TransactFailure {
    /// Cancelled: nothing was written.
    Cancelled {
        reasons: Vec<CancellationReason>,
        message: String,
    },
    /// Any other error; the outcome may be unknown (a timeout after the write).
    Store(StoreError),
}

impl DynamoStore {
    /// A store on `table` and `bucket`, which must exist (the deployment template creates them;
    /// [`DynamoStore::create_resources`] does for tests).
    pub fn new(
        dynamo: aws_sdk_dynamodb::Client,
        s3: aws_sdk_s3::Client,
        table: String,
        bucket: String,
    ) -> Self {
        let region = dynamo.config().region().map(ToString::to_string);
        Self {
            dynamo,
            s3,
            table,
            bucket,
            region,
            clock: Arc::new(SystemClock),
        }
    }

    /// The same store judging "recent" by another clock (tests with virtual time).
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Creates the table (string `PK` and `SK`, on-demand billing, TTL on `ttl`) and the bucket.
    /// For tests and local stand-ins; the deployment template owns the real resources.
    pub async fn create_resources(&self) -> StoreResult<()> {
        let attribute = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(|e| build_error(&e))
        };
        let key = |name: &str, kind| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(kind)
                .build()
                .map_err(|e| build_error(&e))
        };
        self.dynamo
            .create_table()
            .table_name(&self.table)
            .attribute_definitions(attribute(PK)?)
            .attribute_definitions(attribute(SK)?)
            .key_schema(key(PK, KeyType::Hash)?)
            .key_schema(key(SK, KeyType::Range)?)
            .billing_mode(BillingMode::PayPerRequest)
            .send()
            .await
            .map_err(|e| sdk_error("CreateTable", &e))?;
        self.dynamo
            .update_time_to_live()
            .table_name(&self.table)
            .time_to_live_specification(
                TimeToLiveSpecification::builder()
                    .attribute_name(TTL)
                    .enabled(true)
                    .build()
                    .map_err(|e| build_error(&e))?,
            )
            .send()
            .await
            .map_err(|e| sdk_error("UpdateTimeToLive", &e))?;
        let mut bucket = self.s3.create_bucket().bucket(&self.bucket);
        let region = self.s3.config().region().map(ToString::to_string);
        if let Some(region) = region.filter(|r| r != "us-east-1") {
            bucket = bucket.create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from(region.as_str()))
                    .build(),
            );
        }
        bucket
            .send()
            .await
            .map_err(|e| sdk_error("CreateBucket", &e))?;
        Ok(())
    }

    async fn get(&self, pk: impl Into<String>, sk: impl Into<String>) -> StoreResult<Option<Item>> {
        let output = self
            .dynamo
            .get_item()
            .table_name(&self.table)
            .set_key(Some(item::key(pk, sk)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_error("GetItem", &e))?;
        Ok(output.item)
    }

    async fn get_record<T: DeserializeOwned>(
        &self,
        pk: impl Into<String>,
        sk: impl Into<String>,
    ) -> StoreResult<Option<T>> {
        self.get(pk, sk).await?.as_ref().map(decode).transpose()
    }

    /// Every item of a query (following pages), at most `query.limit`.
    async fn query(&self, query: &Query) -> StoreResult<Vec<Item>> {
        let mut out = Vec::new();
        if query.limit == 0 {
            return Ok(out);
        }
        let mut expr = Expr::default();
        let pk_name = expr.name(PK);
        let pk_value = expr.value(s(&query.pk));
        let partition = format!("{pk_name} = {pk_value}");
        let condition = match &query.range {
            Range::All => partition,
            Range::Prefix(prefix) => {
                let sk = expr.name(SK);
                let prefix = expr.value(s(prefix));
                format!("{partition} AND begins_with({sk}, {prefix})")
            }
            Range::Between(low, high) => {
                let sk = expr.name(SK);
                let low = expr.value(s(low));
                let high = expr.value(s(high));
                format!("{partition} AND {sk} BETWEEN {low} AND {high}")
            }
            Range::After(low) => {
                let sk = expr.name(SK);
                let low = expr.value(s(low));
                format!("{partition} AND {sk} > {low}")
            }
        };
        let projection = query.projection.map(|attributes| {
            attributes
                .iter()
                .map(|a| expr.name(a))
                .collect::<Vec<_>>()
                .join(", ")
        });
        let mut start: Option<Item> = None;
        loop {
            // Small remainders cap the page; otherwise DynamoDB's 1 MB page applies.
            let page = i32::try_from(query.limit - out.len())
                .ok()
                .filter(|page| *page <= MAX_PAGE);
            let output = self
                .dynamo
                .query()
                .table_name(&self.table)
                .key_condition_expression(&condition)
                .set_expression_attribute_names(expr.names())
                .set_expression_attribute_values(expr.values())
                .set_projection_expression(projection.clone())
                .scan_index_forward(query.forward)
                .consistent_read(true)
                .set_limit(page)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| sdk_error("Query", &e))?;
            out.extend(output.items.unwrap_or_default());
            match output.last_evaluated_key {
                Some(next) if out.len() < query.limit && !next.is_empty() => start = Some(next),
                _ => break,
            }
        }
        out.truncate(query.limit);
        Ok(out)
    }

    async fn query_records<T: DeserializeOwned>(&self, query: &Query) -> StoreResult<Vec<T>> {
        self.query(query).await?.iter().map(decode).collect()
    }

    /// One `TransactWriteItems`, tried again while it is cancelled only by conflicts with other
    /// transactions (nothing was written then), with an optional client request token.
    ///
    /// Every transaction also checks that this region is the writer (the fence check goes last,
    /// so the callers' cancellation reasons keep their items' positions).
    async fn transact(
        &self,
        mut items: Vec<TransactWriteItem>,
        mut token: Option<String>,
    ) -> Result<(), TransactFailure> {
        let checked = match self.fence_check(&items) {
            Ok(check) => check.is_some_and(|check| {
                items.push(check);
                true
            }),
            Err(e) => return Err(TransactFailure::Store(e)),
        };
        let mut attempt = 0;
        loop {
            let result = self
                .dynamo
                .transact_write_items()
                .set_transact_items(Some(items.clone()))
                .set_client_request_token(token.clone())
                .send()
                .await;
            let Err(error) = result else {
                return Ok(());
            };
            if let Some(TransactWriteItemsError::TransactionCanceledException(cancelled)) =
                error.as_service_error()
            {
                let mut reasons = cancelled.cancellation_reasons().to_vec();
                let conflict_only = reasons
                    .iter()
                    .any(|r| r.code() == Some("TransactionConflict"))
                    && reasons
                        .iter()
                        .all(|r| matches!(r.code(), None | Some("None" | "TransactionConflict")));
                if conflict_only && attempt + 1 < CONFLICT_ATTEMPTS {
                    attempt += 1;
                    backoff(attempt).await;
                    // A fresh token: the cancelled request's token is not reused.
                    token = token.map(|t| request_token(&[&t, &attempt.to_string()]));
                    continue;
                }
                // The fence check's reason is taken off either way: the callers read the
                // reasons by their own items' positions.
                if checked
                    && let Some(check) = reasons.pop()
                    && check.code() == Some("ConditionalCheckFailed")
                {
                    let region = self.region.as_deref().unwrap_or_default();
                    return Err(TransactFailure::Store(failover::fenced_error(
                        region, &check,
                    )));
                }
                return Err(TransactFailure::Cancelled {
                    reasons,
                    message: cancelled.message().unwrap_or_default().to_owned(),
                });
            }
            return Err(TransactFailure::Store(sdk_error(
                "TransactWriteItems",
                &error,
            )));
        }
    }

    /// Deletes items by key, 25 a request, until none is left unprocessed.
    async fn delete_all(&self, keys: Vec<Item>) -> StoreResult<()> {
        for chunk in keys.chunks(BATCH_SIZE) {
            let mut requests = chunk
                .iter()
                .map(|key| {
                    DeleteRequest::builder()
                        .set_key(Some(key.clone()))
                        .build()
                        .map(|delete| WriteRequest::builder().delete_request(delete).build())
                        .map_err(|e| build_error(&e))
                })
                .collect::<StoreResult<Vec<_>>>()?;
            let mut attempt = 0;
            while !requests.is_empty() {
                let output = self
                    .dynamo
                    .batch_write_item()
                    .request_items(&self.table, requests)
                    .send()
                    .await
                    .map_err(|e| sdk_error("BatchWriteItem", &e))?;
                requests = output
                    .unprocessed_items
                    .and_then(|mut left| left.remove(&self.table))
                    .unwrap_or_default();
                if !requests.is_empty() {
                    attempt += 1;
                    if attempt >= CONFLICT_ATTEMPTS {
                        return Err(StoreError::Unavailable(format!(
                            "{} deletes left unprocessed after {attempt} attempts",
                            requests.len()
                        )));
                    }
                    backoff(attempt).await;
                }
            }
        }
        Ok(())
    }

    /// A `PutItem` of control state (last writer wins).
    async fn put(&self, item: Item) -> StoreResult<()> {
        self.dynamo
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(|e| sdk_error("PutItem", &e))?;
        Ok(())
    }

    /// The stored idempotency record, with the `sent` flag `mark_sent` keeps beside its body.
    async fn idempotency_record(&self, key: &str) -> StoreResult<Option<IdempotencyRecord>> {
        let Some(item) = self.get(keys::idempotency(key), keys::RECORD).await? else {
            return Ok(None);
        };
        let mut record: IdempotencyRecord = decode(&item)?;
        if item::flag(&item, SENT) {
            record.mark_sent();
        }
        // `mark_sent` moves the expiry beside the body.
        if let Some(expires_at) =
            item::text(&item, EXPIRES_AT).and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        {
            record.keep_until(expires_at.with_timezone(&Utc));
        }
        Ok(Some(record))
    }
}

/// Exponential backoff with jitter: 10 ms, 20 ms, 40 ms, ... plus up to 10 ms.
async fn backoff(attempt: u32) {
    let base = 10_u64 << attempt.min(6);
    let jitter = rand::rng().random_range(0..10_u64);
    tokio::time::sleep(StdDuration::from_millis(base + jitter)).await;
}

/// A client request token (at most 36 characters) derived from the request's content.
fn request_token(parts: &[&str]) -> String {
    let joined = parts.join("\u{1f}");
    crate::domain::sha256_hex(joined.as_bytes())[..36].to_owned()
}

/// The key of the idempotency record of `key`.
fn idempotency_key(key: &str) -> Item {
    item::key(keys::idempotency(key), keys::RECORD)
}

/// The outcome of a conditional write whose failed condition means there was nothing for it to
/// do, which is not an error.
fn unless_condition_failed<T, E>(
    result: Result<T, aws_sdk_dynamodb::error::SdkError<E>>,
    operation: &str,
) -> StoreResult<()>
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match result {
        Err(error) if is_condition_failure(&error) => Ok(()),
        Err(error) => Err(sdk_error(operation, &error)),
        Ok(_) => Ok(()),
    }
}

fn is_condition_failure<E>(error: &aws_sdk_dynamodb::error::SdkError<E>) -> bool
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata,
{
    error
        .as_service_error()
        .and_then(aws_sdk_dynamodb::error::ProvideErrorMetadata::code)
        == Some("ConditionalCheckFailedException")
}
