//! One write of a transaction as the items it puts, each with the condition DynamoDB checks and
//! what a failure of that condition tells the caller.

use serde::Serialize;

use aws_sdk_dynamodb::types::AttributeValue;

use super::super::item::{
    self, APPROVAL, Expr, GENERATION, Item, MODE, PK, STATUS, SYSTEM, VERSION, keys, n, s,
};
use super::items::{event_item, head_item, registry_item};
use super::{CallArchive, Condition, OnFailure, Owner, Staged, condition, with};
use crate::cost::reconcile::Reconciliation;
use crate::domain::{
    BudgetMode, DecisionRecord, EvolutionEvent, Generation, Head, HeadStatus, PlanCursor,
};
use crate::store::rules;
use crate::store::{BudgetState, LlmCallRecord, StoreError, StoreResult, SystemRecord, Write};

/// Stages the items of write `i` of a transaction (`RecordPrediction` excepted: those fold into
/// the one performance record, which `stage` writes).
pub(super) fn stage_write(
    table: &str,
    staged: &mut Staged,
    i: usize,
    write: &Write,
) -> StoreResult<()> {
    let mut stage = Stage {
        table,
        staged,
        write: i,
        op: rules::op(write),
    };
    match write {
        Write::CreateSystem {
            system,
            head,
            generation,
        } => stage.create_system(system, head, generation),
        Write::PutSystem { system } => stage.system(system),
        Write::PutGeneration { generation } => stage.generation(generation),
        Write::UpdateHead {
            expected_generation,
            expected_status,
            head,
        } => stage.update_head(*expected_generation, *expected_status, head),
        Write::ResolveApproval {
            expected_generation,
            decision_id,
            head,
        } => stage.resolve_approval(*expected_generation, decision_id, head),
        Write::CountSample {
            expected_generation,
            expected_samples,
            head,
        } => stage.count_sample(*expected_generation, *expected_samples, head),
        Write::PutEvent { event } => stage.event(event),
        Write::PutDecision { decision } => stage.decision(decision),
        Write::PutFitnessSample { sample } => {
            let sk = keys::fitness(sample.generation, &sample.id)?;
            stage.upsert(&keys::system(&sample.system_id), &sk, sample)
        }
        Write::PutHistory { system_id, entry } => {
            let sk = keys::history(entry.generation)?;
            stage.upsert(&keys::system(system_id), &sk, entry)
        }
        Write::PutPlan { plan } => {
            let (pk, sk) = (keys::system(&plan.system_id), keys::plan(&plan.plan_id));
            let once = format!("plan {} not to exist", plan.plan_id);
            stage.create(format!("{pk}/{sk}"), &once, item::record(&pk, &sk, plan)?)
        }
        Write::PutCursor {
            expected_version,
            cursor,
        } => stage.cursor(*expected_version, cursor),
        Write::PutAnalysis { analysis } => {
            let sk = keys::analysis(&analysis.analysis_id);
            stage.upsert(&keys::system(&analysis.system_id), &sk, analysis)
        }
        Write::PutLlmCall { call } => stage.llm_call(call),
        Write::PutAlert { alert } => {
            stage.upsert(keys::ALERTS, &keys::timed(alert.at, &alert.id), alert)
        }
        Write::RecordPrediction { .. } => Err(StoreError::Invalid(
            "record_prediction is staged with the performance record".to_owned(),
        )),
        Write::SetBudgetMode { expected, state } => stage.budget_mode(*expected, state),
        Write::PutReconciliation { record } => stage.reconciliation(record),
    }
}

/// Condition attributes of a reconciliation: whether it is a comparison (written once), and
/// the UTC day of the run that wrote it (`YYYY-MM-DD`, so text order is day order).
const BILLED: &str = "billed";
const CHECKED_ON: &str = "checked_on";

/// The items of one write, each pushed with that write as its owner, so a cancellation reason at
/// its position names the write.
struct Stage<'a> {
    table: &'a str,
    staged: &'a mut Staged,
    write: usize,
    op: &'static str,
}

impl Stage<'_> {
    /// `key` names the item when its condition fails; `on_failure` says what that failure means.
    fn push(
        &mut self,
        key: String,
        on_failure: OnFailure,
        item: Item,
        condition: Option<Condition>,
    ) -> StoreResult<()> {
        let owner = Owner {
            write: Some(self.write),
            op: self.op,
            key,
            on_failure,
        };
        self.staged.push(self.table, owner, item, condition)
    }

    /// An item that must not exist yet; `expected` is what a failure reports as expected.
    fn create(&mut self, key: String, expected: &str, item: Item) -> StoreResult<()> {
        self.push(
            key,
            condition(expected),
            item,
            Some(Condition::not_exists()),
        )
    }

    /// An item that replaces whatever is stored: an upsert has no condition to fail.
    fn upsert_item(&mut self, key: String, item: Item) -> StoreResult<()> {
        self.push(key, OnFailure::Never, item, None)
    }

    /// The record `value` under `pk`/`sk`, as an upsert.
    fn upsert(&mut self, pk: &str, sk: &str, value: &impl Serialize) -> StoreResult<()> {
        let item = item::record(pk, sk, value)?;
        self.upsert_item(format!("{pk}/{sk}"), item)
    }

    /// Registry entry, head and first generation, none of which may exist.
    fn create_system(
        &mut self,
        system: &SystemRecord,
        head: &Head,
        generation: &Generation,
    ) -> StoreResult<()> {
        let id = &system.system_id;
        let pk = keys::system(id);
        let exists = format!("system {id} not to exist");
        self.create(
            format!("{}/{id}", keys::SYSTEMS),
            &exists,
            registry_item(system)?,
        )?;
        self.create(format!("{pk}/{}", keys::HEAD), &exists, head_item(head)?)?;
        let sk = keys::generation(generation.generation)?;
        let item = generation_item(&pk, &sk, generation)?;
        self.create(format!("{pk}/{sk}"), &exists, item)
    }

    /// The registry entry at the next version, conditioned on the version read.
    fn system(&mut self, system: &SystemRecord) -> StoreResult<()> {
        let id = &system.system_id;
        let on_failure = OnFailure::Versioned {
            missing: format!("system {id} does not exist"),
            expected: format!("registry entry at version {}", system.version),
        };
        let next = registry_item(&SystemRecord {
            version: system.version + 1,
            ..system.clone()
        })?;
        let check = Condition::version(system.version);
        self.push(
            format!("{}/{id}", keys::SYSTEMS),
            on_failure,
            next,
            Some(check),
        )
    }

    fn generation(&mut self, generation: &Generation) -> StoreResult<()> {
        let pk = keys::system(&generation.system_id);
        let sk = keys::generation(generation.generation)?;
        let once = format!("generation {} not to exist", generation.generation);
        let item = generation_item(&pk, &sk, generation)?;
        self.create(format!("{pk}/{sk}"), &once, item)
    }

    /// The head, conditioned on the stored head's attributes; `described` is what a failure
    /// reports as expected.
    fn head(&mut self, head: &Head, described: String, expected: Condition) -> StoreResult<()> {
        let key = format!("{}/{}", keys::system(&head.system_id), keys::HEAD);
        self.push(key, condition(described), head_item(head)?, Some(expected))
    }

    fn update_head(&mut self, generation: u64, status: HeadStatus, head: &Head) -> StoreResult<()> {
        let described = format!("the head at generation {generation} ({})", status.as_str());
        let expected =
            Condition::equals(&[(GENERATION, n(generation)), (STATUS, s(status.as_str()))]);
        self.head(head, described, expected)
    }

    fn resolve_approval(
        &mut self,
        generation: u64,
        decision_id: &str,
        head: &Head,
    ) -> StoreResult<()> {
        let described =
            format!("the head at generation {generation} awaiting approval of {decision_id}");
        let expected = Condition::equals(&[
            (GENERATION, n(generation)),
            (STATUS, s(HeadStatus::AwaitingApproval.as_str())),
            (APPROVAL, s(decision_id)),
        ]);
        self.head(head, described, expected)
    }

    fn count_sample(&mut self, generation: u64, samples: u32, head: &Head) -> StoreResult<()> {
        let described =
            format!("the head evaluating generation {generation} with {samples} report(s) seen");
        self.head(
            head,
            described,
            Condition::samples_seen(generation, samples),
        )
    }

    /// The event's index item; its body goes to S3 before the transaction.
    fn event(&mut self, event: &EvolutionEvent) -> StoreResult<()> {
        let system = rules::event_system(event)?;
        let (item, body) = event_item(system, event)?;
        self.staged.bodies.push(body);
        self.upsert_item(item::describe_key(&item), item)
    }

    /// The decision's id item, which makes "written once" hold per id, and its time-ordered
    /// copy; neither may exist.
    fn decision(&mut self, decision: &DecisionRecord) -> StoreResult<()> {
        let pk = keys::system(rules::decision_system(decision)?);
        let once = format!("decision {} not to exist", decision.decision_id);
        let id_sk = keys::decision_id(&decision.decision_id);
        self.create(
            format!("{pk}/{id_sk}"),
            &once,
            item::record(&pk, &id_sk, decision)?,
        )?;
        let sk = keys::decision(decision.timestamp, &decision.decision_id);
        let item = item::record(&pk, &sk, decision)?;
        self.create(format!("{pk}/{sk}"), &once, item)
    }

    /// The plan cursor: new when `expected_version` is `None`, else at that version.
    fn cursor(&mut self, expected_version: Option<u64>, cursor: &PlanCursor) -> StoreResult<()> {
        let pk = keys::system(&cursor.system_id);
        let (expected, check) = match expected_version {
            None => ("no cursor".to_owned(), Condition::not_exists()),
            Some(version) => (
                format!("the cursor at version {version}"),
                Condition::equals(&[(VERSION, n(version))]),
            ),
        };
        let item = with(
            item::record(&pk, keys::CURSOR, cursor)?,
            [(VERSION, n(cursor.version))],
        );
        let key = format!("{pk}/{}", keys::CURSOR);
        self.push(key, condition(expected), item, Some(check))
    }

    /// The call under its system and in its day partition, the day's marker, and its archive
    /// object (stored in S3 before the transaction).
    fn llm_call(&mut self, call: &LlmCallRecord) -> StoreResult<()> {
        self.staged.call_archives.push(CallArchive {
            object: item::call_object(call.at, &call.call_id),
            json: item::encode(call)?,
        });
        let sk = keys::call(call.at, &call.call_id);
        self.upsert(&keys::system(&call.system_id), &sk, call)?;
        // The day partitions list every system's calls without a scan.
        let day_pk = keys::call_day_of(call.at);
        let day_sk = keys::timed(call.at, &call.call_id);
        let item = with(
            item::record(&day_pk, &day_sk, call)?,
            [(SYSTEM, s(call.system_id.as_str()))],
        );
        self.upsert_item(format!("{day_pk}/{day_sk}"), item)?;
        self.staged
            .marker(self.table, keys::CALL_DAYS, &item::day(call.at))
    }

    /// A day's reconciliation: a comparison over nothing or over a day not billed yet; a day not
    /// billed yet over one an earlier day's run wrote (the rule of
    /// `Reconciliation::refused_over`).
    fn reconciliation(&mut self, record: &Reconciliation) -> StoreResult<()> {
        let sk = record.day.to_string();
        let checked_on = record.checked_on().to_string();
        let mut expr = Expr::default();
        let (pk, billed) = (expr.name(PK), expr.name(BILLED));
        let pending = format!("{billed} = {}", expr.value(AttributeValue::Bool(false)));
        // Names and values an expression does not use are refused, so each is added with its use.
        let expression = if record.is_compared() {
            format!("attribute_not_exists({pk}) OR {pending}")
        } else {
            let (on, today) = (expr.name(CHECKED_ON), expr.value(s(&checked_on)));
            format!("attribute_not_exists({pk}) OR ({pending} AND {on} < {today})")
        };
        let item = with(
            item::record(keys::RECONCILE, &sk, record)?,
            [
                (BILLED, AttributeValue::Bool(record.is_compared())),
                (CHECKED_ON, s(checked_on)),
            ],
        );
        let expected = format!("{} not reconciled yet", record.day);
        let key = format!("{}/{sk}", keys::RECONCILE);
        self.push(
            key,
            condition(expected),
            item,
            Some(Condition { expression, expr }),
        )
    }

    fn budget_mode(&mut self, expected: BudgetMode, state: &BudgetState) -> StoreResult<()> {
        let key = format!("{}/{}", keys::CTRL, keys::BUDGET);
        let on_failure = condition(format!("budget mode {}", expected.as_str()));
        let item = with(
            item::record(keys::CTRL, keys::BUDGET, state)?,
            [(MODE, s(state.mode.as_str()))],
        );
        self.push(
            key,
            on_failure,
            item,
            Some(Condition::budget_mode(expected)),
        )
    }
}

/// A generation's item, with the number its condition reads.
fn generation_item(pk: &str, sk: &str, generation: &Generation) -> StoreResult<Item> {
    Ok(with(
        item::record(pk, sk, generation)?,
        [(GENERATION, n(generation.generation))],
    ))
}
