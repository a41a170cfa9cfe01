//! A [`Transaction`] as one `TransactWriteItems`: the items, the condition of each write, and
//! which write a cancellation reason points at.

use std::collections::BTreeSet;

use aws_sdk_dynamodb::types::{
    AttributeValue, CancellationReason, Put, ReturnValuesOnConditionCheckFailure, TransactWriteItem,
};
use chrono::{DateTime, Duration, Utc};

use super::item::{
    self, Conditioned, Expr, GENERATION, Item, MODE, PK, REVISION, SAMPLES, STATUS, VERSION,
    build_error, keys, n, s,
};
use crate::domain::{BudgetMode, HeadStatus};
use crate::store::performance::PerformanceSnapshot;
use crate::store::{StoreError, StoreResult, Transaction, Write};

mod items;
mod writes;

use items::stage_completion;
use writes::stage_write;

/// `TransactWriteItems` takes at most 100 items; one is the writer's fence check.
pub(super) const MAX_ITEMS: usize = 99;

/// Event index items expire this long after the event (docs/architecture.md, "Data model").
pub(super) fn index_retention() -> Duration {
    Duration::days(365)
}

/// An event body to store in S3 before the transaction that indexes it.
#[derive(Debug, Clone)]
pub(super) struct EventBody {
    pub(super) object: String,
    pub(super) json: String,
    /// The index item's partition and the event's time, to tell an orphaned body from one an
    /// index item points at.
    pub(super) index_pk: String,
    pub(super) at: DateTime<Utc>,
}

/// A settled LLM call's record archived to S3 for analytics (Athena over
/// `llm-calls/year=<yyyy>/month=<mm>/<call id>.json`), stored before the transaction that
/// indexes the call, under a key that is a function of the call: a retry overwrites it.
#[derive(Debug, Clone)]
pub(super) struct CallArchive {
    pub(super) object: String,
    pub(super) json: String,
}

/// What a cancellation reason at an item's position means.
#[derive(Debug, Clone)]
enum OnFailure {
    /// A condition of the port's model: `ConditionFailed` naming the write.
    Condition { expected: String },
    /// A versioned record: `Invalid` when it is missing, `ConditionFailed` when it moved on.
    Versioned { missing: String, expected: String },
    /// A record read before the transaction changed meanwhile: read it again and retry.
    Stale,
    /// Unconditioned items (the completion, index and marker items) cannot fail a condition.
    Never,
}

#[derive(Debug, Clone)]
struct Owner {
    /// The write's index in the transaction; `None` for the completion.
    write: Option<usize>,
    op: &'static str,
    key: String,
    on_failure: OnFailure,
}

impl Owner {
    /// An item no write owns (the completion's, a marker), which has no condition to fail.
    fn unconditioned(op: &'static str, key: String) -> Self {
        Self {
            write: None,
            op,
            key,
            on_failure: OnFailure::Never,
        }
    }
}

/// A transaction turned into DynamoDB items.
#[derive(Debug, Default)]
pub(super) struct Staged {
    pub(super) items: Vec<TransactWriteItem>,
    owners: Vec<Owner>,
    pub(super) bodies: Vec<EventBody>,
    pub(super) call_archives: Vec<CallArchive>,
    /// Every item key, to refuse a transaction touching one item twice.
    seen: BTreeSet<(String, String)>,
}

/// A condition expression with its placeholders.
struct Condition {
    expression: String,
    expr: Expr,
}

impl Condition {
    fn not_exists() -> Self {
        let mut expr = Expr::default();
        let pk = expr.name(PK);
        Self {
            expression: format!("attribute_not_exists({pk})"),
            expr,
        }
    }

    fn equals(pairs: &[(&str, AttributeValue)]) -> Self {
        let mut expr = Expr::default();
        let clauses: Vec<String> = pairs
            .iter()
            .map(|(attribute, value)| {
                let name = expr.name(attribute);
                let value = expr.value(value.clone());
                format!("{name} = {value}")
            })
            .collect();
        Self {
            expression: clauses.join(" AND "),
            expr,
        }
    }

    /// The item exists at `version`; entries written before versioning carry no `version`
    /// attribute and count as version 0.
    fn version(version: u64) -> Self {
        let mut condition = Self::equals(&[(VERSION, n(version))]);
        let pk = condition.expr.name(PK);
        condition.expression = if version == 0 {
            let name = condition.expr.name(VERSION);
            format!(
                "attribute_exists({pk}) AND (attribute_not_exists({name}) OR {})",
                condition.expression
            )
        } else {
            format!("attribute_exists({pk}) AND {}", condition.expression)
        };
        condition
    }

    /// The head evaluating `generation` with `samples` reports counted; a head written before
    /// the count existed carries no count, which reads as none counted.
    fn samples_seen(generation: u64, samples: u32) -> Self {
        let mut condition = Self::equals(&[
            (GENERATION, n(generation)),
            (STATUS, s(HeadStatus::Evaluating.as_str())),
        ]);
        let name = condition.expr.name(SAMPLES);
        let value = condition.expr.value(n(samples));
        condition.expression = if samples == 0 {
            format!(
                "{} AND (attribute_not_exists({name}) OR {name} = {value})",
                condition.expression
            )
        } else {
            format!("{} AND {name} = {value}", condition.expression)
        };
        condition
    }

    /// The budget mode item is absent until first set, which reads as `Normal`.
    fn budget_mode(expected: BudgetMode) -> Self {
        let mut condition = Self::equals(&[(MODE, s(expected.as_str()))]);
        if expected == BudgetMode::Normal {
            let pk = condition.expr.name(PK);
            condition.expression =
                format!("attribute_not_exists({pk}) OR {}", condition.expression);
        }
        condition
    }
}

impl Staged {
    fn push(
        &mut self,
        table: &str,
        owner: Owner,
        item: Item,
        condition: Option<Condition>,
    ) -> StoreResult<()> {
        let pk = item::text(&item, PK).unwrap_or_default().to_owned();
        let sk = item::text(&item, item::SK).unwrap_or_default().to_owned();
        if !self.seen.insert((pk.clone(), sk.clone())) {
            return Err(StoreError::Invalid(format!(
                "the transaction touches {pk}/{sk} twice: a transaction may touch an item once"
            )));
        }
        let mut put = Put::builder().table_name(table).set_item(Some(item));
        if let Some(condition) = condition {
            put = put
                .conditioned(condition.expression, &condition.expr)
                .return_values_on_condition_check_failure(
                    ReturnValuesOnConditionCheckFailure::AllOld,
                );
        }
        let put = put.build().map_err(|e| build_error(&e))?;
        self.items
            .push(TransactWriteItem::builder().put(put).build());
        self.owners.push(owner);
        Ok(())
    }

    /// An item that several writes may share (a day marker): added once.
    fn marker(&mut self, table: &str, pk: &str, sk: &str) -> StoreResult<()> {
        if self.seen.contains(&(pk.to_owned(), sk.to_owned())) {
            return Ok(());
        }
        let owner = Owner::unconditioned("marker", format!("{pk}/{sk}"));
        self.push(table, owner, item::key(pk, sk), None)
    }

    /// Whether the only failed conditions are optimistic locks of records read before the
    /// transaction (then it is staged again from a fresh read).
    pub(super) fn only_stale(&self, reasons: &[CancellationReason]) -> bool {
        let mut failed = reasons
            .iter()
            .enumerate()
            .filter(|(_, r)| r.code() == Some("ConditionalCheckFailed"))
            .peekable();
        failed.peek().is_some()
            && failed.all(|(position, _)| {
                self.owners
                    .get(position)
                    .is_some_and(|o| matches!(o.on_failure, OnFailure::Stale))
            })
    }

    /// Why the transaction was cancelled, as the port reports it. The first item whose condition
    /// failed names its write, like the other adapters' first failing condition.
    pub(super) fn explain(&self, reasons: &[CancellationReason], message: &str) -> StoreError {
        for (position, reason) in reasons.iter().enumerate() {
            if reason.code() != Some("ConditionalCheckFailed") {
                continue;
            }
            let Some(owner) = self.owners.get(position) else {
                break;
            };
            let who = owner.write.map_or_else(
                || format!("the completion ({} {})", owner.op, owner.key),
                |i| format!("write {i} ({} {})", owner.op, owner.key),
            );
            return match &owner.on_failure {
                OnFailure::Versioned { missing, .. } if reason.item().is_none() => {
                    StoreError::Invalid(format!("{who}: {missing}"))
                }
                OnFailure::Versioned { expected, .. } | OnFailure::Condition { expected } => {
                    StoreError::ConditionFailed(format!(
                        "{who}: expected {expected}, found {}",
                        stored(reason.item())
                    ))
                }
                OnFailure::Stale => StoreError::Unavailable(format!(
                    "{who}: the record changed while the transaction was prepared"
                )),
                OnFailure::Never => {
                    StoreError::ConditionFailed(format!("{who}: unexpected condition failure"))
                }
            };
        }
        let codes: Vec<&str> = reasons
            .iter()
            .filter_map(CancellationReason::code)
            .filter(|code| *code != "None")
            .collect();
        let detail = format!("transaction cancelled ({}): {message}", codes.join(", "));
        if codes
            .iter()
            .any(|c| matches!(*c, "ValidationError" | "ItemCollectionSizeLimitExceeded"))
        {
            StoreError::Invalid(detail)
        } else if codes.is_empty() && message.contains("ConditionalCheckFailed") {
            // A stand-in that reports no per-item reasons still says why.
            StoreError::ConditionFailed(detail)
        } else {
            // Conflicts with other transactions, throttling, capacity: retry later.
            StoreError::Unavailable(detail)
        }
    }
}

/// The condition attributes of the item a failed condition saw.
fn stored(item: Option<&std::collections::HashMap<String, AttributeValue>>) -> String {
    let Some(item) = item else {
        return "no item".to_owned();
    };
    let attributes: Vec<String> = [GENERATION, STATUS, VERSION, MODE]
        .iter()
        .filter_map(|name| match item.get(*name) {
            Some(AttributeValue::S(v) | AttributeValue::N(v)) => Some(format!("{name} {v}")),
            _ => None,
        })
        .collect();
    if attributes.is_empty() {
        "an existing item".to_owned()
    } else {
        attributes.join(", ")
    }
}

fn condition(expected: impl Into<String>) -> OnFailure {
    OnFailure::Condition {
        expected: expected.into(),
    }
}

/// The performance record as read before a transaction that feeds predictions into it.
#[derive(Debug, Clone)]
pub(super) struct Performance {
    pub(super) snapshot: PerformanceSnapshot,
    /// The stored revision; `None` when there is no record yet.
    pub(super) revision: Option<String>,
}

/// A fresh optimistic-lock token for the performance record.
pub(super) fn new_revision() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// The performance record item holding `snapshot` under a new revision.
pub(super) fn performance_item(snapshot: &PerformanceSnapshot) -> StoreResult<Item> {
    Ok(with(
        item::record(keys::CTRL, keys::PERFORMANCE, snapshot)?,
        [(REVISION, s(new_revision()))],
    ))
}

/// Stages every write and the completion of `tx` (whose shape `rules::check_shape` accepted).
/// `performance` is the record read for its `RecordPrediction` writes, if it has any: they are
/// applied to it in order and written back once, conditioned on the revision read.
pub(super) fn stage(
    table: &str,
    tx: &Transaction,
    performance: Option<&Performance>,
) -> StoreResult<Staged> {
    let mut staged = Staged::default();
    let mut predictions: Option<(usize, Performance)> = None;
    for (i, write) in tx.writes.iter().enumerate() {
        if let Write::RecordPrediction {
            model_id,
            role,
            predicted,
            actual,
        } = write
        {
            let (_, record) = predictions.get_or_insert_with(|| {
                (
                    i,
                    performance.cloned().unwrap_or(Performance {
                        snapshot: PerformanceSnapshot::default(),
                        revision: None,
                    }),
                )
            });
            record
                .snapshot
                .record_prediction(model_id, *role, *predicted, *actual);
            continue;
        }
        stage_write(table, &mut staged, i, write)?;
    }
    if let Some((first, record)) = predictions {
        let mut expr = Expr::default();
        let revision = expr.name(REVISION);
        let expression = match &record.revision {
            None => format!("attribute_not_exists({revision})"),
            Some(seen) => format!("{revision} = {}", expr.value(s(seen))),
        };
        let owner = Owner {
            write: Some(first),
            op: "record_prediction",
            key: format!("{}/{}", keys::CTRL, keys::PERFORMANCE),
            on_failure: OnFailure::Stale,
        };
        staged.push(
            table,
            owner,
            performance_item(&record.snapshot)?,
            Some(Condition { expression, expr }),
        )?;
    }
    if let Some(completion) = &tx.completion {
        stage_completion(table, &mut staged, completion, &tx.writes)?;
    }
    if staged.items.len() > MAX_ITEMS {
        return Err(StoreError::Invalid(format!(
            "the transaction needs {} items; DynamoDB takes at most 100 in one, and one is \
             the writer's fence check",
            staged.items.len()
        )));
    }
    Ok(staged)
}

fn with(
    mut item: Item,
    attributes: impl IntoIterator<Item = (&'static str, AttributeValue)>,
) -> Item {
    for (name, value) in attributes {
        item.insert(name.to_owned(), value);
    }
    item
}
