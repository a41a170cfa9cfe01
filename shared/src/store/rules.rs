//! The rules every store adapter applies: write shapes, conditions, claims and ledger arithmetic.
//!
//! One copy for the SQLite, in-memory and DynamoDB adapters, so the in-memory fake evaluates the
//! very same rules as the stores it stands in for, and none can drift from the others.

use std::collections::BTreeSet;

#[cfg(any(feature = "sqlite", feature = "test-support", test))]
use chrono::NaiveDate;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[cfg(any(feature = "sqlite", feature = "test-support", test))]
use crate::cost::reconcile::Reconciliation;
use crate::cost::{BudgetLimit, LedgerScope, PeriodKey, Totals};
#[cfg(any(feature = "sqlite", feature = "test-support", test))]
use crate::domain::{BudgetMode, Head, HeadStatus};
use crate::domain::{
    BudgetPeriod, BudgetScope, DecisionRecord, EvolutionEvent, Outgoing, SystemId,
};
#[cfg(any(feature = "sqlite", feature = "test-support", test))]
use crate::store::SettleOutcome;
use crate::store::{Claim, ClaimRequest, Completion, StoreError, StoreResult, Transaction, Write};
use crate::store::{Hold, LedgerEntry, RESERVATION_HOLD, Reservation, ReserveOutcome, Settlement};

/// The stored `state` of a claim that is still being processed.
pub(in crate::store) const IN_PROGRESS: &str = "in_progress";
pub(in crate::store) const COMPLETED: &str = "completed";

/// An idempotency record (DynamoDB `PK=IDEMP#<envelope id>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub(in crate::store) enum IdempotencyRecord {
    InProgress {
        payload_hash: String,
        until: DateTime<Utc>,
    },
    Completed {
        payload_hash: String,
        outgoing: Vec<Outgoing>,
        completed_at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
        /// Systems the transaction wrote or messaged, so purging a system forgets the
        /// messages it processed and a fresh start with the same message ids runs again.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        systems: Vec<SystemId>,
        /// The outgoing messages left: a duplicate re-sends them only while this is false.
        #[serde(default)]
        sent: bool,
    },
}

impl IdempotencyRecord {
    pub(in crate::store) fn in_progress(payload_hash: &str, until: DateTime<Utc>) -> Self {
        Self::InProgress {
            payload_hash: payload_hash.to_owned(),
            until,
        }
    }

    pub(in crate::store) fn completed(completion: &Completion, writes: &[Write]) -> Self {
        let systems: BTreeSet<SystemId> = writes
            .iter()
            .filter_map(owner)
            .chain(completion.outgoing.iter().map(|o| &o.envelope.system_id))
            .cloned()
            .collect();
        Self::Completed {
            payload_hash: completion.payload_hash.clone(),
            outgoing: completion.outgoing.clone(),
            completed_at: completion.completed_at,
            expires_at: completion.expires_at,
            systems: systems.into_iter().collect(),
            sent: false,
        }
    }

    /// Records that the outbox was sent.
    pub(in crate::store) fn mark_sent(&mut self) {
        if let Self::Completed { sent, .. } = self {
            *sent = true;
        }
    }

    /// Moves a completed record's expiry (`mark_sent` shortens it to the dedup window).
    pub(in crate::store) fn keep_until(&mut self, until: DateTime<Utc>) {
        if let Self::Completed { expires_at, .. } = self {
            *expires_at = until;
        }
    }

    #[cfg(any(feature = "sqlite", feature = "test-support", test))]
    pub(in crate::store) fn state(&self) -> &'static str {
        match self {
            Self::InProgress { .. } => IN_PROGRESS,
            Self::Completed { .. } => COMPLETED,
        }
    }
}

/// What claiming a key finds. `Claimed` means the caller must now store an in-progress record;
/// an expired record counts as absent, as an item past its DynamoDB TTL would.
pub(in crate::store) fn claim_outcome(
    existing: Option<&IdempotencyRecord>,
    payload_hash: &str,
    now: DateTime<Utc>,
) -> Claim {
    match existing {
        Some(IdempotencyRecord::InProgress { until, .. }) if *until > now => {
            Claim::InProgress { until: *until }
        }
        Some(IdempotencyRecord::Completed {
            payload_hash: stored,
            outgoing,
            expires_at,
            sent,
            ..
        }) if *expires_at > now => {
            if stored == payload_hash {
                Claim::Completed {
                    outgoing: if *sent { Vec::new() } else { outgoing.clone() },
                }
            } else {
                Claim::PayloadMismatch
            }
        }
        _ => Claim::Claimed,
    }
}

impl ClaimRequest<'_> {
    /// What the claim finds given the stored record; see [`claim_outcome`].
    pub(in crate::store) fn outcome(&self, existing: Option<&IdempotencyRecord>) -> Claim {
        claim_outcome(existing, self.payload_hash, self.now)
    }

    /// The record that holds the key once `outcome` says it is claimed.
    pub(in crate::store) fn in_progress(&self) -> IdempotencyRecord {
        IdempotencyRecord::in_progress(self.payload_hash, self.in_progress_until)
    }
}

/// Reads an adapter offers for evaluating conditions against the state before a transaction.
#[cfg(any(feature = "sqlite", feature = "test-support", test))]
pub(in crate::store) trait Lookup {
    /// The stored registry entry's version, `None` when the system does not exist.
    fn system_version(&self, id: &SystemId) -> StoreResult<Option<u64>>;
    fn system_exists(&self, id: &SystemId) -> StoreResult<bool> {
        Ok(self.system_version(id)?.is_some())
    }
    fn head(&self, id: &SystemId) -> StoreResult<Option<Head>>;
    fn generation_exists(&self, id: &SystemId, generation: u64) -> StoreResult<bool>;
    fn decision_exists(&self, id: &SystemId, decision_id: &str) -> StoreResult<bool>;
    fn plan_exists(&self, id: &SystemId, plan_id: &str) -> StoreResult<bool>;
    fn cursor_version(&self, id: &SystemId) -> StoreResult<Option<u64>>;
    /// The stored mode, `Normal` when it was never set.
    fn budget_mode(&self) -> StoreResult<BudgetMode>;
    /// The stored reconciliation of `day`.
    fn reconciliation(&self, day: NaiveDate) -> StoreResult<Option<Reconciliation>>;
}

/// Events are stored under their system; the port lets the field be empty for seed fixtures.
pub(in crate::store) fn event_system(event: &EvolutionEvent) -> StoreResult<&SystemId> {
    event.system_id.as_ref().ok_or_else(|| {
        StoreError::Invalid(format!(
            "event {} has no system_id to store it under",
            event.id
        ))
    })
}

pub(in crate::store) fn decision_system(decision: &DecisionRecord) -> StoreResult<&SystemId> {
    decision.system_id.as_ref().ok_or_else(|| {
        StoreError::Invalid(format!(
            "decision {} has no system_id to store it under",
            decision.decision_id
        ))
    })
}

/// The system whose records a write changes, if it belongs to one.
fn owner(write: &Write) -> Option<&SystemId> {
    match write {
        Write::CreateSystem { system, .. } | Write::PutSystem { system } => Some(&system.system_id),
        Write::PutGeneration { generation } => Some(&generation.system_id),
        Write::UpdateHead { head, .. }
        | Write::ResolveApproval { head, .. }
        | Write::CountSample { head, .. } => Some(&head.system_id),
        Write::PutEvent { event } => event.system_id.as_ref(),
        Write::PutDecision { decision } => decision.system_id.as_ref(),
        Write::PutFitnessSample { sample } => Some(&sample.system_id),
        Write::PutHistory { system_id, .. } => Some(system_id),
        Write::PutPlan { plan } => Some(&plan.system_id),
        Write::PutCursor { cursor, .. } => Some(&cursor.system_id),
        Write::PutAnalysis { analysis } => Some(&analysis.system_id),
        Write::PutLlmCall { call } => Some(&call.system_id),
        Write::PutAlert { alert } => alert.system_id.as_ref(),
        Write::SetBudgetMode { .. }
        | Write::RecordPrediction { .. }
        | Write::PutReconciliation { .. } => None,
    }
}

pub(in crate::store) fn op(write: &Write) -> &'static str {
    match write {
        Write::CreateSystem { .. } => "create_system",
        Write::PutSystem { .. } => "put_system",
        Write::PutGeneration { .. } => "put_generation",
        Write::UpdateHead { .. } => "update_head",
        Write::ResolveApproval { .. } => "resolve_approval",
        Write::CountSample { .. } => "count_sample",
        Write::PutEvent { .. } => "put_event",
        Write::PutDecision { .. } => "put_decision",
        Write::PutFitnessSample { .. } => "put_fitness_sample",
        Write::PutHistory { .. } => "put_history",
        Write::PutPlan { .. } => "put_plan",
        Write::PutCursor { .. } => "put_cursor",
        Write::PutAnalysis { .. } => "put_analysis",
        Write::PutLlmCall { .. } => "put_llm_call",
        Write::PutAlert { .. } => "put_alert",
        Write::SetBudgetMode { .. } => "set_budget_mode",
        Write::RecordPrediction { .. } => "record_prediction",
        Write::PutReconciliation { .. } => "put_reconciliation",
    }
}

fn sys(id: &SystemId) -> String {
    format!("SYS#{id}")
}

/// The items a write touches, named by their DynamoDB keys; the first is the conditioned one.
fn item_keys(write: &Write) -> StoreResult<Vec<String>> {
    let keys = match write {
        Write::CreateSystem {
            system,
            head,
            generation,
        } => {
            let id = &system.system_id;
            if head.system_id != *id || generation.system_id != *id {
                return Err(StoreError::Invalid(format!(
                    "create_system {id}: head and generation must belong to the system"
                )));
            }
            vec![
                format!("SYSTEMS/{id}"),
                format!("{}/HEAD", sys(id)),
                format!("{}/GEN#{:020}", sys(id), generation.generation),
            ]
        }
        Write::PutSystem { system } => vec![format!("SYSTEMS/{}", system.system_id)],
        Write::PutGeneration { generation } => vec![format!(
            "{}/GEN#{:020}",
            sys(&generation.system_id),
            generation.generation
        )],
        Write::UpdateHead { head, .. }
        | Write::ResolveApproval { head, .. }
        | Write::CountSample { head, .. } => vec![format!("{}/HEAD", sys(&head.system_id))],
        Write::PutEvent { event } => {
            vec![format!("{}/EVT#{}", sys(event_system(event)?), event.id)]
        }
        Write::PutDecision { decision } => vec![format!(
            "{}/DEC#{}",
            sys(decision_system(decision)?),
            decision.decision_id
        )],
        Write::PutFitnessSample { sample } => vec![format!(
            "{}/FIT#{:020}#{}",
            sys(&sample.system_id),
            sample.generation,
            sample.id
        )],
        Write::PutHistory { system_id, entry } => {
            vec![format!("{}/HIST#{:020}", sys(system_id), entry.generation)]
        }
        Write::PutPlan { plan } => {
            vec![format!("{}/PLAN#{}", sys(&plan.system_id), plan.plan_id)]
        }
        Write::PutCursor { cursor, .. } => vec![format!("{}/CURSOR", sys(&cursor.system_id))],
        Write::PutAnalysis { analysis } => vec![format!(
            "{}/ANALYSIS#{}",
            sys(&analysis.system_id),
            analysis.analysis_id
        )],
        Write::PutLlmCall { call } => vec![format!("LLM#{}", call.call_id)],
        Write::PutAlert { alert } => vec![format!("ALERT#{}", alert.id)],
        Write::SetBudgetMode { .. } => vec!["CTRL/BUDGET".to_owned()],
        Write::PutReconciliation { record } => vec![format!("RECONCILE/{}", record.day)],
        // Several predictions may fold into the one record in a transaction.
        Write::RecordPrediction { .. } => vec![],
    };
    Ok(keys)
}

/// Refuses malformed writes and, like `TransactWriteItems`, a transaction that touches one
/// item twice (the outcome would depend on the order writes are applied in).
pub(in crate::store) fn check_shape(tx: &Transaction) -> StoreResult<()> {
    let mut seen = BTreeSet::new();
    let completion = tx
        .completion
        .iter()
        .map(|c| (None, format!("IDEMP#{}", c.key)));
    let writes = tx
        .writes
        .iter()
        .enumerate()
        .map(|(i, w)| Ok((i, w, item_keys(w)?)))
        .collect::<StoreResult<Vec<_>>>()?;
    let keyed = writes
        .iter()
        .flat_map(|(i, w, keys)| keys.iter().map(move |k| (Some((*i, op(w))), k.clone())))
        .chain(completion);
    for (write, key) in keyed {
        if !seen.insert(key.clone()) {
            let who = write.map_or_else(
                || "the completion".to_owned(),
                |(i, op)| format!("write {i} ({op})"),
            );
            return Err(StoreError::Invalid(format!(
                "{who} touches {key} again: a transaction may touch an item once"
            )));
        }
    }
    Ok(())
}

/// Evaluates every write's condition against the state before the transaction; the first
/// failure names the write and its key.
#[cfg(any(feature = "sqlite", feature = "test-support", test))]
pub(in crate::store) fn check_conditions(tx: &Transaction, view: &impl Lookup) -> StoreResult<()> {
    for (i, write) in tx.writes.iter().enumerate() {
        if let Some(reason) = failed_condition(write, view)? {
            let key = item_keys(write)?.into_iter().next().unwrap_or_default();
            return Err(StoreError::ConditionFailed(format!(
                "write {i} ({} {key}): {reason}",
                op(write)
            )));
        }
    }
    Ok(())
}

/// What a head write expects of the stored head beside its generation.
#[cfg(any(feature = "sqlite", feature = "test-support", test))]
#[derive(Debug, Clone, Copy)]
enum Expected<'a> {
    /// `UpdateHead`: in that status.
    Status(HeadStatus),
    /// `ResolveApproval`: awaiting approval of exactly that decision.
    Approval(&'a str),
    /// `CountSample`: evaluating with that many reports counted.
    Samples(u32),
}

#[cfg(any(feature = "sqlite", feature = "test-support", test))]
impl Expected<'_> {
    fn holds(self, stored: &Head) -> bool {
        match self {
            Self::Status(status) => stored.status == status,
            Self::Approval(decision_id) => {
                let held = stored.approval.as_ref().map(|a| a.decision_id.as_str());
                stored.status == HeadStatus::AwaitingApproval && held == Some(decision_id)
            }
            Self::Samples(samples) => {
                let seen = stored.evaluation.as_ref().map(|e| e.samples_seen);
                stored.status == HeadStatus::Evaluating && seen == Some(samples)
            }
        }
    }

    fn describe(self) -> String {
        match self {
            Self::Status(status) => format!("({})", status.as_str()),
            Self::Approval(decision_id) => format!("awaiting approval of {decision_id}"),
            Self::Samples(samples) => format!("evaluating with {samples} report(s) seen"),
        }
    }
}

/// Why a head write's condition fails: the stored head must be at `generation` and meet
/// `expected`.
#[cfg(any(feature = "sqlite", feature = "test-support", test))]
fn head_condition(
    view: &impl Lookup,
    head: &Head,
    generation: u64,
    expected: Expected<'_>,
) -> StoreResult<Option<String>> {
    Ok(match view.head(&head.system_id)? {
        None => Some(format!("system {} has no head", head.system_id)),
        Some(stored) if stored.generation == generation && expected.holds(&stored) => None,
        Some(stored) => Some(format!(
            "head is at generation {} ({}, holding {}), expected {generation} {}",
            stored.generation,
            stored.status.as_str(),
            stored
                .approval
                .as_ref()
                .map_or("no decision", |a| a.decision_id.as_str()),
            expected.describe()
        )),
    })
}

/// Why the write's condition fails, or `None` when it holds (or there is none).
#[cfg(any(feature = "sqlite", feature = "test-support", test))]
fn failed_condition(write: &Write, view: &impl Lookup) -> StoreResult<Option<String>> {
    let reason = match write {
        Write::CreateSystem { system, .. } => view
            .system_exists(&system.system_id)?
            .then(|| format!("system {} exists", system.system_id)),
        Write::PutSystem { system } => match view.system_version(&system.system_id)? {
            None => {
                return Err(StoreError::Invalid(format!(
                    "put_system: system {} does not exist",
                    system.system_id
                )));
            }
            Some(stored) => (stored != system.version).then(|| {
                format!(
                    "registry entry of {} at version {} (stored: {stored})",
                    system.system_id, system.version
                )
            }),
        },
        Write::PutGeneration { generation } => view
            .generation_exists(&generation.system_id, generation.generation)?
            .then(|| format!("generation {} exists", generation.generation)),
        Write::UpdateHead {
            expected_generation,
            expected_status,
            head,
        } => head_condition(
            view,
            head,
            *expected_generation,
            Expected::Status(*expected_status),
        )?,
        Write::ResolveApproval {
            expected_generation,
            decision_id,
            head,
        } => head_condition(
            view,
            head,
            *expected_generation,
            Expected::Approval(decision_id),
        )?,
        Write::CountSample {
            expected_generation,
            expected_samples,
            head,
        } => head_condition(
            view,
            head,
            *expected_generation,
            Expected::Samples(*expected_samples),
        )?,
        Write::PutDecision { decision } => view
            .decision_exists(decision_system(decision)?, &decision.decision_id)?
            .then(|| format!("decision {} exists", decision.decision_id)),
        Write::PutPlan { plan } => view
            .plan_exists(&plan.system_id, &plan.plan_id)?
            .then(|| format!("plan {} exists", plan.plan_id)),
        Write::PutCursor {
            expected_version,
            cursor,
        } => match (expected_version, view.cursor_version(&cursor.system_id)?) {
            (None, None) => None,
            (None, Some(stored)) => Some(format!("cursor exists at version {stored}")),
            (Some(expected), None) => Some(format!("no cursor, expected version {expected}")),
            (Some(expected), Some(stored)) => (*expected != stored)
                .then(|| format!("cursor is at version {stored}, expected {expected}")),
        },
        Write::SetBudgetMode { expected, .. } => {
            let stored = view.budget_mode()?;
            (stored != *expected).then(|| {
                format!(
                    "budget mode is {}, expected {}",
                    stored.as_str(),
                    expected.as_str()
                )
            })
        }
        Write::PutReconciliation { record } => {
            record.refused_over(view.reconciliation(record.day)?.as_ref())
        }
        Write::PutEvent { .. }
        | Write::PutFitnessSample { .. }
        | Write::PutHistory { .. }
        | Write::PutAnalysis { .. }
        | Write::PutLlmCall { .. }
        | Write::PutAlert { .. }
        | Write::RecordPrediction { .. } => None,
    };
    Ok(reason)
}

/// The counters a call moves: total, its system and its model, in the day and the month of
/// `at` (UTC).
fn counters(
    system_id: &SystemId,
    model_id: &str,
    at: DateTime<Utc>,
) -> Vec<(PeriodKey, LedgerScope)> {
    let scopes = [
        LedgerScope::Total,
        LedgerScope::System(system_id.clone()),
        LedgerScope::Model(model_id.to_owned()),
    ];
    [BudgetPeriod::Day, BudgetPeriod::Month]
        .into_iter()
        .flat_map(|period| {
            scopes
                .iter()
                .map(move |scope| (PeriodKey::of(period, at), scope.clone()))
        })
        .collect()
}

/// The counters a ledger record moves: those of its call, in the day and month the call was
/// reserved in (a settlement and a reclaim release what the reservation held there).
pub(in crate::store) trait CallCounters {
    fn counters(&self) -> Vec<(PeriodKey, LedgerScope)>;
}

impl CallCounters for Reservation {
    fn counters(&self) -> Vec<(PeriodKey, LedgerScope)> {
        counters(&self.system_id, &self.model_id, self.at)
    }
}

impl CallCounters for Settlement {
    fn counters(&self) -> Vec<(PeriodKey, LedgerScope)> {
        counters(&self.system_id, &self.model_id, self.reserved_at)
    }
}

impl CallCounters for Hold {
    fn counters(&self) -> Vec<(PeriodKey, LedgerScope)> {
        counters(&self.system_id, &self.model_id, self.reserved_at)
    }
}

/// The counter a budget limit is measured against.
pub(in crate::store) fn limit_counter(
    limit: &BudgetLimit,
    reservation: &Reservation,
) -> (PeriodKey, LedgerScope) {
    let scope = match limit.scope {
        BudgetScope::Global => LedgerScope::Total,
        BudgetScope::System => LedgerScope::System(reservation.system_id.clone()),
    };
    (PeriodKey::of(limit.period, reservation.at), scope)
}

/// The refusal for the first limit the reservation would exceed, if any. Overflow counts as
/// exceeding: no budget is that large.
pub(in crate::store) fn refusal(
    reservation: &Reservation,
    mut totals: impl FnMut(&PeriodKey, &LedgerScope) -> StoreResult<Totals>,
) -> StoreResult<Option<ReserveOutcome>> {
    for limit in &reservation.limits {
        let (period, scope) = limit_counter(limit, reservation);
        let counter = totals(&period, &scope)?;
        let committed = counter.spent_nano.saturating_add(counter.reserved_nano);
        let fits = committed
            .checked_add(reservation.amount_nano)
            .is_some_and(|after| after <= limit.limit_nano);
        if !fits {
            return Ok(Some(ReserveOutcome::Refused {
                scope: limit.scope,
                period: limit.period,
                committed_nano: committed,
                limit_nano: limit.limit_nano,
            }));
        }
    }
    Ok(None)
}

#[cfg(any(feature = "sqlite", feature = "test-support", test))]
pub(in crate::store) fn hold(totals: &mut Totals, amount_nano: u64) {
    totals.reserved_nano = totals.reserved_nano.saturating_add(amount_nano);
}

/// Counts a settlement into one counter: releases its hold and counts the actual cost; only
/// counts the cost when the hold is no longer `held` (the sweep reclaimed it before the call
/// settled).
#[cfg(any(feature = "sqlite", feature = "test-support", test))]
pub(in crate::store) fn settle(totals: &mut Totals, settlement: &Settlement, held: bool) {
    if held {
        release(totals, settlement.reserved_nano);
    }
    totals.spent_nano = totals.spent_nano.saturating_add(settlement.actual_nano);
    totals.calls = totals.calls.saturating_add(1);
}

/// What a settlement reports, by whether its hold was still there.
#[cfg(any(feature = "sqlite", feature = "test-support", test))]
pub(in crate::store) fn settled(held: bool) -> SettleOutcome {
    if held {
        SettleOutcome::Settled
    } else {
        SettleOutcome::SettledAfterReclaim
    }
}

#[cfg(any(feature = "sqlite", feature = "test-support", test))]
pub(in crate::store) fn release(totals: &mut Totals, amount_nano: u64) {
    totals.reserved_nano = totals.reserved_nano.saturating_sub(amount_nano);
}

/// The hold a settlement releases, rebuilt from what the settlement carries.
pub(in crate::store) fn hold_of(settlement: &Settlement) -> Hold {
    Hold {
        call_id: settlement.call_id.clone(),
        system_id: settlement.system_id.clone(),
        model_id: settlement.model_id.clone(),
        amount_nano: settlement.reserved_nano,
        reserved_at: settlement.reserved_at,
        expires_at: settlement.reserved_at + RESERVATION_HOLD,
    }
}

/// The first `limit` of `holds` in the order every adapter lists them: soonest expiry first,
/// then call id.
pub(in crate::store) fn soonest(mut holds: Vec<Hold>, limit: usize) -> Vec<Hold> {
    holds.sort_by_key(|hold| (hold.expires_at, hold.call_id.clone()));
    holds.truncate(limit);
    holds
}

pub(in crate::store) fn ledger_entry(settlement: &Settlement) -> LedgerEntry {
    LedgerEntry {
        call_id: settlement.call_id.clone(),
        system_id: settlement.system_id.clone(),
        model_id: settlement.model_id.clone(),
        cost_nano: settlement.actual_nano,
        usage: settlement.usage,
        at: settlement.at,
    }
}
