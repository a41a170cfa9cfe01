//! The cost ledger on DynamoDB: counters reserved with conditional `ADD`s, settlements written
//! once.
//!
//! A condition cannot add, so each counter item keeps `committed` (= `spent` + `reserved`) beside
//! its parts, and a reservation's condition compares it with `limit - amount`, computed here. All
//! numbers are integer nano-USD in `N` attributes.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{Delete, Put, TransactWriteItem, Update};
use chrono::{DateTime, Utc};

use super::item::{
    self, CALLS, COMMITTED, Conditioned, Expr, RESERVED, SPENT, build_error, day, keys, n, ts,
};
use super::{DynamoStore, Query, Range, TransactFailure, request_token};
use crate::cost::{LedgerScope, PeriodKey, Totals};
use crate::store::rules::{self, CallCounters, limit_counter};
use crate::store::{
    CostLedger, Hold, LedgerEntry, Reclaim, ReclaimOutcome, Reservation, ReserveOutcome,
    SettleOutcome, Settlement,
};
use crate::store::{StoreError, StoreResult};

/// How often a reservation refused by a counter that has since gone down is tried again.
const RESERVE_ATTEMPTS: u32 = 5;

type Counter = (PeriodKey, LedgerScope);

fn counter_key(counter: &Counter) -> item::Item {
    item::key(counter.0.key(), counter.1.key())
}

fn cancelled_by_condition(failure: &TransactFailure) -> bool {
    match failure {
        TransactFailure::Cancelled { reasons, message } => {
            reasons
                .iter()
                .any(|r| r.code() == Some("ConditionalCheckFailed"))
                || (reasons.is_empty() && message.contains("ConditionalCheckFailed"))
        }
        TransactFailure::Store(_) => false,
    }
}

fn failure_error(what: &str, failure: TransactFailure) -> StoreError {
    match failure {
        TransactFailure::Store(error) => error,
        TransactFailure::Cancelled { reasons, message } => {
            let codes: Vec<&str> = reasons.iter().filter_map(|r| r.code()).collect();
            StoreError::Unavailable(format!(
                "{what} cancelled ({}): {message}",
                codes.join(", ")
            ))
        }
    }
}

impl DynamoStore {
    async fn read_totals(&self, counter: &Counter) -> StoreResult<Totals> {
        let Some(found) = self.get(counter.0.key(), counter.1.key()).await? else {
            return Ok(Totals::default());
        };
        Ok(Totals {
            spent_nano: item::counter(&found, SPENT)?,
            reserved_nano: item::counter(&found, RESERVED)?,
            calls: item::counter(&found, CALLS)?,
        })
    }

    /// The first limit the reservation would exceed given the stored counters, as the other
    /// adapters decide it.
    async fn refusal(&self, reservation: &Reservation) -> StoreResult<Option<ReserveOutcome>> {
        let mut read = HashMap::new();
        for limit in &reservation.limits {
            let counter = limit_counter(limit, reservation);
            if let std::collections::hash_map::Entry::Vacant(slot) = read.entry(counter) {
                let totals = self.read_totals(slot.key()).await?;
                slot.insert(totals);
            }
        }
        rules::refusal(reservation, |period, scope| {
            Ok(read
                .get(&(*period, scope.clone()))
                .copied()
                .unwrap_or_default())
        })
    }

    /// The six counter updates of a reservation, each limit's counter conditioned on its room,
    /// and its hold.
    fn reserve_items(&self, reservation: &Reservation) -> StoreResult<Vec<TransactWriteItem>> {
        let mut rooms: BTreeMap<Counter, u64> = BTreeMap::new();
        for limit in &reservation.limits {
            // Checked by the caller: the amount fits every limit on its own.
            let room = limit.limit_nano.saturating_sub(reservation.amount_nano);
            rooms
                .entry(limit_counter(limit, reservation))
                .and_modify(|r| *r = (*r).min(room))
                .or_insert(room);
        }
        reservation
            .counters()
            .into_iter()
            .map(|counter| {
                let mut expr = Expr::default();
                let amount = expr.value(n(reservation.amount_nano));
                let update = format!(
                    "ADD {} {amount}, {} {amount}",
                    expr.name(RESERVED),
                    expr.name(COMMITTED)
                );
                let condition = rooms.get(&counter).map(|room| {
                    let committed = expr.name(COMMITTED);
                    let room = expr.value(n(room));
                    format!("attribute_not_exists({committed}) OR {committed} <= {room}")
                });
                counter_update(&self.table, &counter, update, condition, &expr)
            })
            .chain(std::iter::once(hold_put(
                &self.table,
                &Hold::of(reservation),
            )))
            .collect()
    }

    /// The ledger entry and the counter updates of a settlement; with `held`, also the release
    /// of the reservation and the deletion of its hold (conditioned on the hold being there).
    fn settle_items(
        &self,
        settlement: &Settlement,
        held: bool,
    ) -> StoreResult<Vec<TransactWriteItem>> {
        let entry = rules::ledger_entry(settlement);
        let mut items = Vec::new();
        // Written once: the condition that makes a retried settlement count once.
        let mut once = Expr::default();
        let pk = once.name(item::PK);
        items.push(put(
            &self.table,
            item::record(keys::ledger(&entry.call_id), keys::RECORD, &entry)?,
            Some((format!("attribute_not_exists({pk})"), once)),
        )?);
        let the_day = day(entry.at);
        items.push(put(
            &self.table,
            item::record(
                keys::ledger_day(&the_day),
                keys::timed(entry.at, &entry.call_id),
                &entry,
            )?,
            None,
        )?);
        items.push(put(
            &self.table,
            item::key(keys::LEDGER_DAYS, the_day),
            None,
        )?);
        let reserved = if held { settlement.reserved_nano } else { 0 };
        if held {
            items.push(hold_delete(&self.table, &rules::hold_of(settlement))?);
        }
        let released = -i128::from(reserved);
        let delta = i128::from(settlement.actual_nano) - i128::from(reserved);
        for counter in settlement.counters() {
            let mut expr = Expr::default();
            let update = format!(
                "ADD {} {}, {} {}, {} {}, {} {}",
                expr.name(SPENT),
                expr.value(n(settlement.actual_nano)),
                expr.name(RESERVED),
                expr.value(n(released)),
                expr.name(COMMITTED),
                expr.value(n(delta)),
                expr.name(CALLS),
                expr.value(n(1)),
            );
            items.push(counter_update(&self.table, &counter, update, None, &expr)?);
        }
        Ok(items)
    }
}

/// The counter updates that release `amount_nano` of a hold in all six counters.
fn release_items(table: &str, hold: &Hold) -> StoreResult<Vec<TransactWriteItem>> {
    let released = -i128::from(hold.amount_nano);
    hold.counters()
        .into_iter()
        .map(|counter| {
            let mut expr = Expr::default();
            let update = format!(
                "ADD {} {}, {} {}",
                expr.name(RESERVED),
                expr.value(n(released)),
                expr.name(COMMITTED),
                expr.value(n(released)),
            );
            counter_update(table, &counter, update, None, &expr)
        })
        .collect()
}

/// An `ADD` update of one counter, conditioned when there is a `condition`.
fn counter_update(
    table: &str,
    counter: &Counter,
    update: String,
    condition: Option<String>,
    expr: &Expr,
) -> StoreResult<TransactWriteItem> {
    Update::builder()
        .table_name(table)
        .set_key(Some(counter_key(counter)))
        .update_expression(update)
        .set_condition_expression(condition)
        .set_expression_attribute_names(expr.names())
        .set_expression_attribute_values(expr.values())
        .build()
        .map(|update| TransactWriteItem::builder().update(update).build())
        .map_err(|e| build_error(&e))
}

fn hold_key(hold: &Hold) -> item::Item {
    item::key(
        keys::hold_shard(&hold.call_id),
        keys::timed(hold.expires_at, &hold.call_id),
    )
}

fn hold_put(table: &str, hold: &Hold) -> StoreResult<TransactWriteItem> {
    let record = item::record(
        keys::hold_shard(&hold.call_id),
        keys::timed(hold.expires_at, &hold.call_id),
        hold,
    )?;
    put(table, record, None)
}

/// Deletes a hold that must still be there: its condition is what tells a settlement or a
/// reclaim that the other came first.
fn hold_delete(table: &str, hold: &Hold) -> StoreResult<TransactWriteItem> {
    let mut expr = Expr::default();
    let pk = expr.name(item::PK);
    let delete = Delete::builder()
        .table_name(table)
        .set_key(Some(hold_key(hold)))
        .conditioned(format!("attribute_exists({pk})"), &expr)
        .build()
        .map_err(|e| build_error(&e))?;
    Ok(TransactWriteItem::builder().delete(delete).build())
}

pub(super) fn put(
    table: &str,
    item: item::Item,
    condition: Option<(String, Expr)>,
) -> StoreResult<TransactWriteItem> {
    let mut put = Put::builder().table_name(table).set_item(Some(item));
    if let Some((expression, expr)) = condition {
        put = put.conditioned(expression, &expr);
    }
    let put = put.build().map_err(|e| build_error(&e))?;
    Ok(TransactWriteItem::builder().put(put).build())
}

#[async_trait]
impl CostLedger for DynamoStore {
    async fn reserve(&self, reservation: &Reservation) -> StoreResult<ReserveOutcome> {
        // An amount above a limit never fits (the room it would leave is negative): refused
        // up front, naming the first limit exceeded as the other adapters do.
        if let Some(limit) = reservation
            .limits
            .iter()
            .find(|l| reservation.amount_nano > l.limit_nano)
        {
            if let Some(refused) = self.refusal(reservation).await? {
                return Ok(refused);
            }
            let totals = self.read_totals(&limit_counter(limit, reservation)).await?;
            return Ok(ReserveOutcome::Refused {
                scope: limit.scope,
                period: limit.period,
                committed_nano: totals.spent_nano.saturating_add(totals.reserved_nano),
                limit_nano: limit.limit_nano,
            });
        }
        let items = self.reserve_items(reservation)?;
        // The token makes the SDK's retry of a reservation that did apply (a timeout after the
        // write) come back successful instead of holding the amount twice.
        let limits = item::encode(&reservation.limits)?;
        for attempt in 0..RESERVE_ATTEMPTS {
            let token = request_token(&[
                "reserve",
                &reservation.call_id,
                &reservation.amount_nano.to_string(),
                &ts(reservation.at),
                &limits,
                &attempt.to_string(),
            ]);
            match self.transact(items.clone(), Some(token)).await {
                Ok(()) => return Ok(ReserveOutcome::Reserved),
                Err(failure) if cancelled_by_condition(&failure) => {
                    // Which limit refused: read the counters and decide as every adapter does.
                    // If they went down meanwhile (a settlement released a hold), try again.
                    if let Some(refused) = self.refusal(reservation).await? {
                        return Ok(refused);
                    }
                }
                Err(failure) => return Err(failure_error("reservation", failure)),
            }
        }
        Err(StoreError::Unavailable(format!(
            "reservation {} kept being refused by counters that then had room",
            reservation.call_id
        )))
    }

    async fn settle(&self, settlement: &Settlement) -> StoreResult<SettleOutcome> {
        // No client request token: a retry of a settlement that applied must fail its ledger
        // condition and report `AlreadySettled`, not succeed again.
        match self
            .transact(self.settle_items(settlement, true)?, None)
            .await
        {
            Ok(()) => return Ok(SettleOutcome::Settled),
            Err(failure) if cancelled_by_condition(&failure) => {}
            Err(failure) => return Err(failure_error("settlement", failure)),
        }
        // Either the entry exists (this call was counted) or the hold is gone (the sweep
        // reclaimed it): the entry tells which.
        if self
            .get(keys::ledger(&settlement.call_id), keys::RECORD)
            .await?
            .is_some()
        {
            return Ok(SettleOutcome::AlreadySettled);
        }
        match self
            .transact(self.settle_items(settlement, false)?, None)
            .await
        {
            Ok(()) => Ok(SettleOutcome::SettledAfterReclaim),
            Err(failure) if cancelled_by_condition(&failure) => Ok(SettleOutcome::AlreadySettled),
            Err(failure) => Err(failure_error("settlement", failure)),
        }
    }

    async fn holds(&self, expired_by: DateTime<Utc>, limit: usize) -> StoreResult<Vec<Hold>> {
        // Sort keys are `<expiry>#<call id>`: every one at or before `expired_by` sorts below
        // `<expired_by>$`.
        let range = Range::Between("0".to_owned(), format!("{}$", ts(expired_by)));
        let mut holds = Vec::new();
        for shard in 0..keys::HOLD_SHARDS {
            let query = Query::new(keys::holds(shard), range.clone()).limit(limit);
            holds.extend(self.query_records::<Hold>(&query).await?);
        }
        Ok(rules::soonest(holds, limit))
    }

    async fn reclaim(
        &self,
        hold: &Hold,
        by: &str,
        at: DateTime<Utc>,
    ) -> StoreResult<ReclaimOutcome> {
        let reclaim = Reclaim {
            hold: hold.clone(),
            by: by.to_owned(),
            at,
        };
        let the_day = day(at);
        let mut items = vec![hold_delete(&self.table, hold)?];
        items.extend(release_items(&self.table, hold)?);
        items.push(put(
            &self.table,
            item::record(
                keys::reclaim_day(&the_day),
                keys::timed(at, &hold.call_id),
                &reclaim,
            )?,
            None,
        )?);
        items.push(put(
            &self.table,
            item::key(keys::RECLAIM_DAYS, the_day),
            None,
        )?);
        match self.transact(items, None).await {
            Ok(()) => Ok(ReclaimOutcome::Reclaimed),
            // The hold's condition: settled or reclaimed already.
            Err(failure) if cancelled_by_condition(&failure) => Ok(ReclaimOutcome::Gone),
            Err(failure) => Err(failure_error("reclaim", failure)),
        }
    }

    async fn reclaims(&self, since: Option<DateTime<Utc>>) -> StoreResult<Vec<Reclaim>> {
        self.by_day(keys::RECLAIM_DAYS, keys::reclaim_day, since)
            .await
    }

    async fn totals(&self, period: PeriodKey, scope: &LedgerScope) -> StoreResult<Totals> {
        self.read_totals(&(period, scope.clone())).await
    }

    async fn entries(&self, since: Option<DateTime<Utc>>) -> StoreResult<Vec<LedgerEntry>> {
        self.by_day(keys::LEDGER_DAYS, keys::ledger_day, since)
            .await
    }
}
