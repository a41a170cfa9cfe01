//! A [`Transaction`] as one `TransactWriteItems`: the items, the condition of each write, and
//! which write a cancellation reason points at.

use std::collections::BTreeSet;

use aws_sdk_dynamodb::types::{
    AttributeValue, CancellationReason, Put, ReturnValuesOnConditionCheckFailure, TransactWriteItem,
};
use chrono::{DateTime, Duration, Utc};

use super::item::{
    self, APPROVAL, Expr, GENERATION, Item, MODE, PK, REVISION, SAMPLES, STATUS, SYSTEM, VERSION,
    build_error, keys, n, s,
};
use crate::domain::{BudgetMode, HeadStatus};
use crate::store::performance::PerformanceSnapshot;
use crate::store::rules;
use crate::store::{StoreError, StoreResult, Transaction, Write};

mod items;
pub(super) use items::{event_item, registry_item};
use items::{head_item, stage_completion};

/// `TransactWriteItems` takes at most this many items.
pub(super) const MAX_ITEMS: usize = 100;

/// Event index items expire this long after the event (docs/architecture.md, "Data model").
/// A head update conditioned on the stored head's attributes equalling `expected`.
fn stage_head(
    table: &str,
    staged: &mut Staged,
    owner: &impl Fn(String, OnFailure) -> Owner,
    head: &crate::domain::Head,
    described: String,
    expected: Condition,
) -> StoreResult<()> {
    let key = format!("{}/{}", keys::system(&head.system_id), keys::HEAD);
    staged.push(
        table,
        owner(key, condition(described)),
        head_item(head)?,
        Some(expected),
    )
}

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
                .condition_expression(condition.expression)
                .set_expression_attribute_names(condition.expr.names())
                .set_expression_attribute_values(condition.expr.values())
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
        let owner = Owner {
            write: None,
            op: "marker",
            key: format!("{pk}/{sk}"),
            on_failure: OnFailure::Never,
        };
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
            "the transaction needs {} items; DynamoDB takes at most {MAX_ITEMS} in one",
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

fn stage_write(table: &str, staged: &mut Staged, i: usize, write: &Write) -> StoreResult<()> {
    let op = rules::op(write);
    let owner = |key: String, on_failure: OnFailure| Owner {
        write: Some(i),
        op,
        key,
        on_failure,
    };
    match write {
        Write::CreateSystem {
            system,
            head,
            generation,
        } => {
            let id = &system.system_id;
            let pk = keys::system(id);
            let exists = format!("system {id} not to exist");
            staged.push(
                table,
                owner(format!("{}/{id}", keys::SYSTEMS), condition(&exists)),
                registry_item(system)?,
                Some(Condition::not_exists()),
            )?;
            staged.push(
                table,
                owner(format!("{pk}/{}", keys::HEAD), condition(&exists)),
                head_item(head)?,
                Some(Condition::not_exists()),
            )?;
            let sk = keys::generation(generation.generation)?;
            staged.push(
                table,
                owner(format!("{pk}/{sk}"), condition(&exists)),
                with(
                    item::record(&pk, &sk, generation)?,
                    [(GENERATION, n(generation.generation))],
                ),
                Some(Condition::not_exists()),
            )
        }
        Write::PutSystem { system } => {
            let id = &system.system_id;
            staged.push(
                table,
                owner(
                    format!("{}/{id}", keys::SYSTEMS),
                    OnFailure::Versioned {
                        missing: format!("system {id} does not exist"),
                        expected: format!("registry entry at version {}", system.version),
                    },
                ),
                registry_item(&crate::store::SystemRecord {
                    version: system.version + 1,
                    ..system.clone()
                })?,
                Some(Condition::version(system.version)),
            )
        }
        Write::PutGeneration { generation } => {
            let pk = keys::system(&generation.system_id);
            let sk = keys::generation(generation.generation)?;
            staged.push(
                table,
                owner(
                    format!("{pk}/{sk}"),
                    condition(format!("generation {} not to exist", generation.generation)),
                ),
                with(
                    item::record(&pk, &sk, generation)?,
                    [(GENERATION, n(generation.generation))],
                ),
                Some(Condition::not_exists()),
            )
        }
        Write::UpdateHead {
            expected_generation,
            expected_status,
            head,
        } => stage_head(
            table,
            staged,
            &owner,
            head,
            format!(
                "the head at generation {expected_generation} ({})",
                expected_status.as_str()
            ),
            Condition::equals(&[
                (GENERATION, n(expected_generation)),
                (STATUS, s(expected_status.as_str())),
            ]),
        ),
        Write::ResolveApproval {
            expected_generation,
            decision_id,
            head,
        } => stage_head(
            table,
            staged,
            &owner,
            head,
            format!(
                "the head at generation {expected_generation} awaiting approval of {decision_id}"
            ),
            Condition::equals(&[
                (GENERATION, n(*expected_generation)),
                (STATUS, s(HeadStatus::AwaitingApproval.as_str())),
                (APPROVAL, s(decision_id)),
            ]),
        ),
        Write::CountSample {
            expected_generation,
            expected_samples,
            head,
        } => stage_head(
            table,
            staged,
            &owner,
            head,
            format!(
                "the head evaluating generation {expected_generation} with {expected_samples} \
                 report(s) seen"
            ),
            Condition::samples_seen(*expected_generation, *expected_samples),
        ),
        Write::PutEvent { event } => {
            let system = rules::event_system(event)?;
            let (item, body) = event_item(system, event)?;
            staged.bodies.push(body);
            let key = item::describe_key(&item);
            staged.push(table, owner(key, OnFailure::Never), item, None)
        }
        Write::PutDecision { decision } => {
            let system = rules::decision_system(decision)?;
            let pk = keys::system(system);
            let once = condition(format!("decision {} not to exist", decision.decision_id));
            let id_sk = keys::decision_id(&decision.decision_id);
            staged.push(
                table,
                owner(format!("{pk}/{id_sk}"), once.clone()),
                item::record(&pk, &id_sk, decision)?,
                Some(Condition::not_exists()),
            )?;
            let sk = keys::decision(decision.timestamp, &decision.decision_id);
            staged.push(
                table,
                owner(format!("{pk}/{sk}"), once),
                item::record(&pk, &sk, decision)?,
                Some(Condition::not_exists()),
            )
        }
        Write::PutFitnessSample { sample } => {
            let pk = keys::system(&sample.system_id);
            let sk = keys::fitness(sample.generation, &sample.id)?;
            let item = item::record(&pk, &sk, sample)?;
            staged.push(
                table,
                owner(format!("{pk}/{sk}"), OnFailure::Never),
                item,
                None,
            )
        }
        Write::PutHistory { system_id, entry } => {
            let pk = keys::system(system_id);
            let sk = keys::history(entry.generation)?;
            let item = item::record(&pk, &sk, entry)?;
            staged.push(
                table,
                owner(format!("{pk}/{sk}"), OnFailure::Never),
                item,
                None,
            )
        }
        Write::PutPlan { plan } => {
            let pk = keys::system(&plan.system_id);
            let sk = keys::plan(&plan.plan_id);
            staged.push(
                table,
                owner(
                    format!("{pk}/{sk}"),
                    condition(format!("plan {} not to exist", plan.plan_id)),
                ),
                item::record(&pk, &sk, plan)?,
                Some(Condition::not_exists()),
            )
        }
        Write::PutCursor {
            expected_version,
            cursor,
        } => {
            let pk = keys::system(&cursor.system_id);
            let (expected, check) = match expected_version {
                None => ("no cursor".to_owned(), Condition::not_exists()),
                Some(version) => (
                    format!("the cursor at version {version}"),
                    Condition::equals(&[(VERSION, n(version))]),
                ),
            };
            staged.push(
                table,
                owner(format!("{pk}/{}", keys::CURSOR), condition(expected)),
                with(
                    item::record(&pk, keys::CURSOR, cursor)?,
                    [(VERSION, n(cursor.version))],
                ),
                Some(check),
            )
        }
        Write::PutAnalysis { analysis } => {
            let pk = keys::system(&analysis.system_id);
            let sk = keys::analysis(&analysis.analysis_id);
            let item = item::record(&pk, &sk, analysis)?;
            staged.push(
                table,
                owner(format!("{pk}/{sk}"), OnFailure::Never),
                item,
                None,
            )
        }
        Write::PutLlmCall { call } => {
            staged.call_archives.push(CallArchive {
                object: item::call_object(call.at, &call.call_id),
                json: item::encode(call)?,
            });
            let pk = keys::system(&call.system_id);
            let sk = keys::call(call.at, &call.call_id);
            let item = item::record(&pk, &sk, call)?;
            staged.push(
                table,
                owner(format!("{pk}/{sk}"), OnFailure::Never),
                item,
                None,
            )?;
            // The day partitions list every system's calls without a scan.
            let day_pk = keys::call_day_of(call.at);
            let day_sk = keys::timed(call.at, &call.call_id);
            let item = with(
                item::record(&day_pk, &day_sk, call)?,
                [(SYSTEM, s(call.system_id.as_str()))],
            );
            staged.push(
                table,
                owner(format!("{day_pk}/{day_sk}"), OnFailure::Never),
                item,
                None,
            )?;
            staged.marker(table, keys::CALL_DAYS, &item::day(call.at))
        }
        Write::PutAlert { alert } => {
            let sk = keys::timed(alert.at, &alert.id);
            let item = item::record(keys::ALERTS, &sk, alert)?;
            staged.push(
                table,
                owner(format!("{}/{sk}", keys::ALERTS), OnFailure::Never),
                item,
                None,
            )
        }
        Write::RecordPrediction { .. } => Err(StoreError::Invalid(
            "record_prediction is staged with the performance record".to_owned(),
        )),
        Write::SetBudgetMode { expected, state } => staged.push(
            table,
            owner(
                format!("{}/{}", keys::CTRL, keys::BUDGET),
                condition(format!("budget mode {}", expected.as_str())),
            ),
            with(
                item::record(keys::CTRL, keys::BUDGET, state)?,
                [(MODE, s(state.mode.as_str()))],
            ),
            Some(Condition::budget_mode(*expected)),
        ),
    }
}
