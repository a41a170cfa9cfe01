//! Keys, attributes, expressions and error mapping of the single-table layout (docs/architecture.md, "Data model").
//!
//! Every record is an item with `PK`, `SK`, a `body` string attribute holding its JSON (so typed
//! values such as a gene's `2.50` survive: DynamoDB would normalise a number map), and the few
//! plain attributes that conditions and TTL need.

use std::collections::HashMap;
use std::error::Error as StdError;

use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, Datelike, SecondsFormat, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::domain::SystemId;
use crate::store::{StoreError, StoreResult};

/// One DynamoDB item.
pub(super) type Item = HashMap<String, AttributeValue>;

/// Partition and sort key attribute names.
pub(super) const PK: &str = "PK";
pub(super) const SK: &str = "SK";
/// The record's JSON.
pub(super) const BODY: &str = "body";
/// Epoch seconds after which DynamoDB deletes the item.
pub(super) const TTL: &str = "ttl";

/// Condition attributes.
pub(super) const GENERATION: &str = "generation";
pub(super) const STATUS: &str = "status";
/// The decision a head holds for approval (on the head item while it awaits one).
pub(super) const APPROVAL: &str = "approval_id";
/// Reports counted into the open evaluation window (on the head item while it evaluates).
pub(super) const SAMPLES: &str = "samples_seen";
pub(super) const VERSION: &str = "version";
pub(super) const MODE: &str = "mode";
pub(super) const STATE: &str = "state";
pub(super) const UNTIL: &str = "until";
pub(super) const EXPIRES_AT: &str = "expires_at";
pub(super) const SENT: &str = "sent";
pub(super) const S3_KEY: &str = "s3_key";
pub(super) const SYSTEM: &str = "system_id";
/// Optimistic-lock token of the performance record, which transactions read and rewrite.
pub(super) const REVISION: &str = "revision";

/// Ledger counter attributes (integer nano-USD).
pub(super) const SPENT: &str = "spent";
pub(super) const RESERVED: &str = "reserved";
pub(super) const COMMITTED: &str = "committed";
pub(super) const CALLS: &str = "calls";

/// The highest generation `GEN#<gen:010>` keys can hold in sort order.
pub(super) const MAX_GENERATION: u64 = 9_999_999_999;

/// Partition and sort keys of every record kind.
pub(super) mod keys {
    use chrono::{DateTime, Utc};

    use super::{MAX_GENERATION, day, ts};
    use crate::domain::SystemId;
    use crate::store::{StoreError, StoreResult};

    pub(in crate::store::dynamo) const SYSTEMS: &str = "SYSTEMS";
    pub(in crate::store::dynamo) const HEAD: &str = "HEAD";
    pub(in crate::store::dynamo) const CURSOR: &str = "CURSOR";
    pub(in crate::store::dynamo) const ALERTS: &str = "ALERTS";
    pub(in crate::store::dynamo) const CTRL: &str = "CTRL";
    pub(in crate::store::dynamo) const BUDGET: &str = "BUDGET";
    pub(in crate::store::dynamo) const PERFORMANCE: &str = "PERFORMANCE";
    pub(in crate::store::dynamo) const CALL_DAYS: &str = "CALLDAYS";
    pub(in crate::store::dynamo) const LEDGER_DAYS: &str = "LEDGERDAYS";
    pub(in crate::store::dynamo) const RECLAIM_DAYS: &str = "RECLAIMDAYS";
    pub(in crate::store::dynamo) const RECONCILE: &str = "RECONCILE";
    /// Holds are spread over this many partitions, so reserving and settling at fleet scale
    /// does not write one hot partition; the sweep queries them all.
    pub(in crate::store::dynamo) const HOLD_SHARDS: u32 = 8;
    /// The sort key of single-item partitions (`IDEMP#`, `LEDGER#`).
    pub(in crate::store::dynamo) const RECORD: &str = "RECORD";

    pub(in crate::store::dynamo) const EVT: &str = "EVT#";
    pub(in crate::store::dynamo) const DEC: &str = "DEC#";
    pub(in crate::store::dynamo) const GEN: &str = "GEN#";
    pub(in crate::store::dynamo) const HIST: &str = "HIST#";
    pub(in crate::store::dynamo) const CALL: &str = "CALL#";
    pub(in crate::store::dynamo) const IDEMP: &str = "IDEMP#";

    pub(in crate::store::dynamo) fn system(id: &SystemId) -> String {
        format!("SYS#{id}")
    }

    /// `GEN#<gen:010>`; larger numbers would break the sort order, so they are refused.
    pub(in crate::store::dynamo) fn generation(generation: u64) -> StoreResult<String> {
        if generation > MAX_GENERATION {
            return Err(StoreError::Invalid(format!(
                "generation {generation} exceeds the largest storable generation {MAX_GENERATION}"
            )));
        }
        Ok(format!("{GEN}{generation:010}"))
    }

    pub(in crate::store::dynamo) fn history(generation: u64) -> StoreResult<String> {
        Ok(format!("{HIST}{}", &generation_digits(generation)?))
    }

    pub(in crate::store::dynamo) fn fitness_prefix(generation: u64) -> StoreResult<String> {
        Ok(format!("FIT#{}#", generation_digits(generation)?))
    }

    pub(in crate::store::dynamo) fn fitness(
        generation: u64,
        sample_id: &str,
    ) -> StoreResult<String> {
        Ok(format!("{}{sample_id}", fitness_prefix(generation)?))
    }

    fn generation_digits(number: u64) -> StoreResult<String> {
        Ok(generation(number)?[GEN.len()..].to_owned())
    }

    pub(in crate::store::dynamo) fn event(at: DateTime<Utc>, event_id: &str) -> String {
        format!("{EVT}{}#{event_id}", ts(at))
    }

    pub(in crate::store::dynamo) fn decision(at: DateTime<Utc>, decision_id: &str) -> String {
        format!("{DEC}{}#{decision_id}", ts(at))
    }

    /// The decision's id item: makes "written once" hold per id and serves `get_decision`.
    pub(in crate::store::dynamo) fn decision_id(decision_id: &str) -> String {
        format!("DECID#{decision_id}")
    }

    pub(in crate::store::dynamo) fn plan(plan_id: &str) -> String {
        format!("PLAN#{plan_id}")
    }

    pub(in crate::store::dynamo) fn analysis(analysis_id: &str) -> String {
        format!("ANALYSIS#{analysis_id}")
    }

    /// `<ts>#<id>`: sorts by time, then id.
    pub(in crate::store::dynamo) fn timed(at: DateTime<Utc>, id: &str) -> String {
        format!("{}#{id}", ts(at))
    }

    pub(in crate::store::dynamo) fn call(at: DateTime<Utc>, call_id: &str) -> String {
        format!("{CALL}{}", timed(at, call_id))
    }

    /// The day partition listing every system's LLM calls (`list_llm_calls(None, ..)`).
    pub(in crate::store::dynamo) fn call_day(day: &str) -> String {
        format!("CALLDAY#{day}")
    }

    pub(in crate::store::dynamo) fn call_day_of(at: DateTime<Utc>) -> String {
        call_day(&day(at))
    }

    pub(in crate::store::dynamo) fn idempotency(key: &str) -> String {
        format!("{IDEMP}{key}")
    }

    pub(in crate::store::dynamo) fn ledger(call_id: &str) -> String {
        format!("LEDGER#{call_id}")
    }

    pub(in crate::store::dynamo) fn ledger_day(day: &str) -> String {
        format!("LEDGERDAY#{day}")
    }

    /// The partition of a call's hold: a stable hash of its id picks the shard.
    pub(in crate::store::dynamo) fn hold_shard(call_id: &str) -> String {
        let hash = call_id
            .bytes()
            .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
        holds(hash % HOLD_SHARDS)
    }

    pub(in crate::store::dynamo) fn holds(shard: u32) -> String {
        format!("HOLDS#{shard}")
    }

    pub(in crate::store::dynamo) fn reclaim_day(day: &str) -> String {
        format!("RECLAIMDAY#{day}")
    }

    pub(in crate::store::dynamo) fn circuit(model_id: &str) -> String {
        format!("CIRCUIT#{model_id}")
    }

    pub(in crate::store::dynamo) fn checkpoint(key: &str) -> String {
        format!("CKPT#{key}")
    }

    /// `CACHE#<key hash>`: one partition per response-cache entry, so entries spread over the
    /// table's partitions instead of heating the `CTRL` one.
    pub(in crate::store::dynamo) fn cached_answer(key: &str) -> String {
        format!("CACHE#{key}")
    }
}

/// RFC 3339 with nanoseconds and `Z`: fixed width, so text order is time order.
pub(super) fn ts(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

/// The UTC day, `yyyy-mm-dd`.
pub(super) fn day(at: DateTime<Utc>) -> String {
    format!("{:04}-{:02}-{:02}", at.year(), at.month(), at.day())
}

/// Epoch seconds, rounded up so a TTL never fires before the instant it stands for.
pub(super) fn epoch_ceil(at: DateTime<Utc>) -> i64 {
    let secs = at.timestamp();
    if at.timestamp_subsec_nanos() > 0 {
        secs.saturating_add(1)
    } else {
        secs
    }
}

pub(super) fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

pub(super) fn n(value: impl std::fmt::Display) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

pub(super) fn key(pk: impl Into<String>, sk: impl Into<String>) -> Item {
    HashMap::from([(PK.to_owned(), s(pk)), (SK.to_owned(), s(sk))])
}

pub(super) fn encode<T: Serialize>(value: &T) -> StoreResult<String> {
    serde_json::to_string(value)
        .map_err(|e| StoreError::Invalid(format!("record cannot be encoded: {e}")))
}

/// An item holding `value` as its JSON body.
pub(super) fn record<T: Serialize>(
    pk: impl Into<String>,
    sk: impl Into<String>,
    value: &T,
) -> StoreResult<Item> {
    let mut item = key(pk, sk);
    item.insert(BODY.to_owned(), s(encode(value)?));
    Ok(item)
}

pub(super) fn text<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    match item.get(name) {
        Some(AttributeValue::S(value)) => Some(value),
        _ => None,
    }
}

/// A number attribute as a signed integer, when it is one.
pub(super) fn number(item: &Item, name: &str) -> StoreResult<Option<i128>> {
    match item.get(name) {
        None => Ok(None),
        Some(AttributeValue::N(value)) => value.parse().map(Some).map_err(|_| {
            StoreError::Corrupt(format!("attribute {name} holds {value}, not an integer"))
        }),
        Some(_) => Err(StoreError::Corrupt(format!(
            "attribute {name} is not a number"
        ))),
    }
}

/// A counter attribute, clamped into `u64` (a counter below zero reads as zero).
pub(super) fn counter(item: &Item, name: &str) -> StoreResult<u64> {
    let value = number(item, name)?.unwrap_or(0);
    Ok(u64::try_from(value.max(0)).unwrap_or(u64::MAX))
}

pub(super) fn flag(item: &Item, name: &str) -> bool {
    matches!(item.get(name), Some(AttributeValue::Bool(true)))
}

/// The record an item's `body` holds.
pub(super) fn decode<T: DeserializeOwned>(item: &Item) -> StoreResult<T> {
    let body = text(item, BODY)
        .ok_or_else(|| StoreError::Corrupt(format!("item {} has no body", describe_key(item))))?;
    serde_json::from_str(body)
        .map_err(|e| StoreError::Corrupt(format!("item {}: {e}", describe_key(item))))
}

pub(super) fn describe_key(item: &Item) -> String {
    format!(
        "{}/{}",
        text(item, PK).unwrap_or("?"),
        text(item, SK).unwrap_or("?")
    )
}

/// Expression attribute names and values, always through placeholders so that reserved words
/// (`status`, `state`, `ttl`, ...) need no thought.
#[derive(Debug, Default)]
pub(super) struct Expr {
    pub(super) names: HashMap<String, String>,
    pub(super) values: HashMap<String, AttributeValue>,
}

impl Expr {
    pub(super) fn name(&mut self, attribute: &str) -> String {
        let placeholder = format!("#{attribute}");
        self.names.insert(placeholder.clone(), attribute.to_owned());
        placeholder
    }

    pub(super) fn value(&mut self, value: AttributeValue) -> String {
        let placeholder = format!(":v{}", self.values.len());
        self.values.insert(placeholder.clone(), value);
        placeholder
    }

    pub(super) fn names(&self) -> Option<HashMap<String, String>> {
        (!self.names.is_empty()).then(|| self.names.clone())
    }

    pub(super) fn values(&self) -> Option<HashMap<String, AttributeValue>> {
        (!self.values.is_empty()).then(|| self.values.clone())
    }
}

/// A request that can carry a condition expression, with the placeholders collected for it.
pub(super) trait Conditioned: Sized {
    #[must_use]
    fn conditioned(self, expression: impl Into<String>, expr: &Expr) -> Self;
}

/// The request builders share no trait for their condition setters, so each gets the same one.
macro_rules! conditioned {
    ($($builder:ty),+ $(,)?) => {$(
        impl Conditioned for $builder {
            fn conditioned(self, expression: impl Into<String>, expr: &Expr) -> Self {
                self.condition_expression(expression)
                    .set_expression_attribute_names(expr.names())
                    .set_expression_attribute_values(expr.values())
            }
        }
    )+};
}

conditioned!(
    aws_sdk_dynamodb::operation::put_item::builders::PutItemFluentBuilder,
    aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder,
    aws_sdk_dynamodb::operation::delete_item::builders::DeleteItemFluentBuilder,
    aws_sdk_dynamodb::types::builders::PutBuilder,
    aws_sdk_dynamodb::types::builders::DeleteBuilder,
    aws_sdk_dynamodb::types::builders::ConditionCheckBuilder,
);

/// Error codes that mean the request itself is wrong: retrying it cannot help.
const INVALID_CODES: [&str; 4] = [
    "ValidationException",
    "SerializationException",
    "ItemCollectionSizeLimitExceededException",
    "InvalidArgument",
];

/// Maps an SDK error onto the port: a malformed request is `Invalid`; an authorization failure
/// (IAM or KMS) is `Denied`, a security event that is logged here and never retried; throttling,
/// 5xx, timeouts, dispatch failures and other deployment problems (a missing table) are
/// `Unavailable`, so the message is redelivered rather than dropped.
pub(super) fn sdk_error<E>(what: &str, error: &SdkError<E>) -> StoreError
where
    E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
{
    let detail = DisplayErrorContext(error);
    match error {
        SdkError::ServiceError(context) => {
            let code = context.err().code().unwrap_or("unknown");
            let status = context.raw().status().as_u16();
            if crate::security::is_authorization_error(code) {
                let event = crate::security::SecurityEvent::new(
                    service_of(what, code),
                    what,
                    code,
                    context.err().message().unwrap_or_default(),
                );
                event.emit();
                StoreError::Denied(Box::new(event))
            } else if status < 500 && INVALID_CODES.contains(&code) {
                StoreError::Invalid(format!("{what}: {code}: {detail}"))
            } else {
                StoreError::Unavailable(format!("{what}: {code} (HTTP {status}): {detail}"))
            }
        }
        SdkError::ConstructionFailure(_) => {
            StoreError::Invalid(format!("{what}: request cannot be built: {detail}"))
        }
        _ => StoreError::Unavailable(format!("{what}: {detail}")),
    }
}

/// The service an operation of this adapter calls: S3 for objects and buckets, DynamoDB for the
/// rest; KMS when the code says the key refused (both encrypt through it).
pub(super) fn service_of(operation: &str, code: &str) -> &'static str {
    if code.to_ascii_uppercase().starts_with("KMS") {
        "kms"
    } else if operation.contains("Object") || operation.contains("Bucket") {
        "s3"
    } else {
        "dynamodb"
    }
}

/// A request builder refused its input (a required field is missing): a bug here, not a
/// transient fault.
pub(super) fn build_error(error: &aws_sdk_dynamodb::error::BuildError) -> StoreError {
    StoreError::Invalid(format!("request cannot be built: {error}"))
}

/// The S3 folder of the LLM call archive (Hive-style `year=`/`month=` partitions).
pub(super) const CALL_PREFIX: &str = "llm-calls/";

/// `llm-calls/year=<yyyy>/month=<mm>/<call id>.json` (zero-padded month, UTC).
pub(super) fn call_object(at: DateTime<Utc>, call_id: &str) -> String {
    use chrono::Datelike as _;
    format!(
        "{CALL_PREFIX}year={:04}/month={:02}/{call_id}.json",
        at.year(),
        at.month()
    )
}

/// The S3 folder of a system's event bodies.
pub(super) fn event_prefix(system: &SystemId) -> String {
    format!("evolution-events/system={system}/")
}

/// `evolution-events/system=<id>/<yyyy>/<mm>/<event id>.json` (zero-padded month).
pub(super) fn event_object(system: &SystemId, at: DateTime<Utc>, event_id: &str) -> String {
    format!(
        "{}{:04}/{:02}/{event_id}.json",
        event_prefix(system),
        at.year(),
        at.month()
    )
}

#[cfg(test)]
mod error_tests {
    use aws_sdk_dynamodb::config::http::HttpResponse;
    use aws_sdk_dynamodb::error::ErrorMetadata;
    use aws_sdk_dynamodb::operation::get_item::GetItemError;
    use aws_smithy_types::body::SdkBody;

    use super::*;

    fn service_error(status: u16, code: &str, message: &str) -> SdkError<GetItemError> {
        let err =
            GetItemError::generic(ErrorMetadata::builder().code(code).message(message).build());
        let status = status.try_into().expect("a valid status");
        SdkError::service_error(err, HttpResponse::new(status, SdkBody::empty()))
    }

    #[test]
    fn authorization_failures_are_permanent_security_events() {
        for (code, service) in [
            ("AccessDeniedException", "dynamodb"),
            ("UnrecognizedClientException", "dynamodb"),
            ("KMSAccessDeniedException", "kms"),
        ] {
            let mapped = sdk_error(
                "GetItem",
                &service_error(400, code, "User: arn:aws:iam::1:user/x is not authorized"),
            );
            assert!(!mapped.is_retryable(), "{code}: {mapped}");
            let event = mapped.security_event().expect("a security event");
            assert_eq!(event.error_code, code);
            assert_eq!(event.service, service);
            assert_eq!(event.operation, "GetItem");
            assert_eq!(event.principal.as_deref(), Some("arn:aws:iam::1:user/x"));
        }
        let s3 = sdk_error(
            "GetObject (event body)",
            &service_error(403, "AccessDenied", ""),
        );
        assert_eq!(s3.security_event().map(|e| e.service.as_str()), Some("s3"));
    }

    #[test]
    fn throttling_stays_retryable_and_validation_stays_invalid() {
        let throttled = sdk_error(
            "GetItem",
            &service_error(400, "ProvisionedThroughputExceededException", "slow down"),
        );
        assert!(throttled.is_retryable());
        assert!(throttled.security_event().is_none());
        let invalid = sdk_error("GetItem", &service_error(400, "ValidationException", "bad"));
        assert!(matches!(invalid, StoreError::Invalid(_)));
    }
}
