//! The cost ledger on DynamoDB: counters reserved with conditional `ADD`s, settlements written
//! once.
//!
//! A condition cannot add, so each counter item keeps `committed` (= `spent` + `reserved`) beside
//! its parts, and a reservation's condition compares it with `limit - amount`, computed here. All
//! numbers are integer nano-USD in `N` attributes.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{Put, TransactWriteItem, Update};
use chrono::{DateTime, Utc};

use super::item::{self, CALLS, COMMITTED, Expr, RESERVED, SPENT, build_error, day, keys, n, ts};
use super::{DynamoStore, Query, TransactFailure, request_token, time_range};
use crate::cost::{
    BudgetLimit, CostLedger, LedgerEntry, LedgerScope, PeriodKey, Reservation, ReserveOutcome,
    SettleOutcome, Settlement, Totals,
};
use crate::domain::BudgetScope;
use crate::store::rules;
use crate::store::{StoreError, StoreResult};

/// How often a reservation refused by a counter that has since gone down is tried again.
const RESERVE_ATTEMPTS: u32 = 5;

type Counter = (PeriodKey, LedgerScope);

/// The counter a budget limit is measured against.
fn limit_counter(limit: &BudgetLimit, reservation: &Reservation) -> Counter {
    let scope = match limit.scope {
        BudgetScope::Global => LedgerScope::Total,
        BudgetScope::System => LedgerScope::System(reservation.system_id.clone()),
    };
    (PeriodKey::of(limit.period, reservation.at), scope)
}

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

    /// The six counter updates of a reservation, each limit's counter conditioned on its room.
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
        rules::counters(
            &reservation.system_id,
            &reservation.model_id,
            reservation.at,
        )
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
            Update::builder()
                .table_name(&self.table)
                .set_key(Some(counter_key(&counter)))
                .update_expression(update)
                .set_condition_expression(condition)
                .set_expression_attribute_names(expr.names())
                .set_expression_attribute_values(expr.values())
                .build()
                .map(|update| TransactWriteItem::builder().update(update).build())
                .map_err(|e| build_error(&e))
        })
        .collect()
    }

    fn settle_items(&self, settlement: &Settlement) -> StoreResult<Vec<TransactWriteItem>> {
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
        let released = -i128::from(settlement.reserved_nano);
        let delta = i128::from(settlement.actual_nano) - i128::from(settlement.reserved_nano);
        for counter in rules::counters(
            &settlement.system_id,
            &settlement.model_id,
            settlement.reserved_at,
        ) {
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
            let update = Update::builder()
                .table_name(&self.table)
                .set_key(Some(counter_key(&counter)))
                .update_expression(update)
                .set_expression_attribute_names(expr.names())
                .set_expression_attribute_values(expr.values())
                .build()
                .map_err(|e| build_error(&e))?;
            items.push(TransactWriteItem::builder().update(update).build());
        }
        Ok(items)
    }
}

fn put(
    table: &str,
    item: item::Item,
    condition: Option<(String, Expr)>,
) -> StoreResult<TransactWriteItem> {
    let mut put = Put::builder().table_name(table).set_item(Some(item));
    if let Some((expression, expr)) = condition {
        put = put
            .condition_expression(expression)
            .set_expression_attribute_names(expr.names())
            .set_expression_attribute_values(expr.values());
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
        match self.transact(self.settle_items(settlement)?, None).await {
            Ok(()) => Ok(SettleOutcome::Settled),
            // Only the ledger item is conditioned: it exists, so this call was counted.
            Err(failure) if cancelled_by_condition(&failure) => Ok(SettleOutcome::AlreadySettled),
            Err(failure) => Err(failure_error("settlement", failure)),
        }
    }

    async fn totals(&self, period: PeriodKey, scope: &LedgerScope) -> StoreResult<Totals> {
        self.read_totals(&(period, scope.clone())).await
    }

    async fn entries(&self, since: Option<DateTime<Utc>>) -> StoreResult<Vec<LedgerEntry>> {
        let mut entries = Vec::new();
        for the_day in self.days(keys::LEDGER_DAYS, since).await? {
            let query = Query::new(keys::ledger_day(&the_day), time_range(since));
            entries.extend(self.query_records::<LedgerEntry>(&query).await?);
        }
        Ok(entries)
    }
}
