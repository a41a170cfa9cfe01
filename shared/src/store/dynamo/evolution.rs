//! The evolution store on DynamoDB and S3: reads, claims and transactions.

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, NaiveDate, Utc};
use serde::de::DeserializeOwned;

use super::item::{
    self, Conditioned, EXPIRES_AT, Expr, MAX_GENERATION, PK, SENT, SK, STATE, TTL, UNTIL, decode,
    epoch_ceil, keys, s, sdk_error, ts,
};
use super::{
    CLAIM_ATTEMPTS, CONFLICT_ATTEMPTS, DynamoStore, Query, Range, TransactFailure, backoff, commit,
    idempotency_key, is_condition_failure, since_range, time_range, unless_condition_failed,
};
use crate::cost::reconcile::Reconciliation;
use crate::domain::{
    Alert, AnalysisRecord, DecisionRecord, EvolutionEvent, FitnessSample, Generation, Head,
    HistoryEntry, Plan, PlanCursor, SystemId,
};
use crate::store::performance::PerformanceSnapshot;
use crate::store::rules::{self, COMPLETED, IN_PROGRESS};
use crate::store::{
    Claim, ClaimRequest, EvolutionStore, LlmCallRecord, StoreError, StoreResult, SystemRecord,
    Transaction, Write,
};

#[async_trait]
impl EvolutionStore for DynamoStore {
    async fn get_system(&self, id: &SystemId) -> StoreResult<Option<SystemRecord>> {
        self.get_record(keys::SYSTEMS, id.as_str()).await
    }

    async fn list_systems(&self) -> StoreResult<Vec<SystemRecord>> {
        self.query_records(&Query::new(keys::SYSTEMS, Range::All))
            .await
    }

    async fn list_systems_page(
        &self,
        after: Option<&SystemId>,
        limit: usize,
    ) -> StoreResult<Vec<SystemRecord>> {
        let range = after.map_or(Range::All, |id| Range::After(id.as_str().to_owned()));
        self.query_records(&Query::new(keys::SYSTEMS, range).limit(limit))
            .await
    }

    async fn get_head(&self, id: &SystemId) -> StoreResult<Option<Head>> {
        self.get_record(keys::system(id), keys::HEAD).await
    }

    async fn get_generation(
        &self,
        id: &SystemId,
        generation: u64,
    ) -> StoreResult<Option<Generation>> {
        if generation > MAX_GENERATION {
            return Ok(None);
        }
        self.get_record(keys::system(id), keys::generation(generation)?)
            .await
    }

    async fn list_generations(
        &self,
        id: &SystemId,
        after: Option<u64>,
        limit: usize,
    ) -> StoreResult<Vec<Generation>> {
        let range = match after {
            None => Range::Prefix(keys::GEN.to_owned()),
            Some(after) if after >= MAX_GENERATION => return Ok(Vec::new()),
            Some(after) => Range::Between(
                keys::generation(after + 1)?,
                keys::generation(MAX_GENERATION)?,
            ),
        };
        self.query_records(&Query::new(keys::system(id), range).limit(limit))
            .await
    }

    async fn list_events(
        &self,
        id: &SystemId,
        since: Option<DateTime<Utc>>,
        limit: usize,
    ) -> StoreResult<Vec<EvolutionEvent>> {
        let mut events = self.events(id, since, limit).await?;
        for event in &mut events {
            let object = super::item::event_object(id, event.timestamp, &event.id);
            // The bucket has no storage-class transition (see the template's lifecycle rule).
            event.locate(format!("s3://{}/{object}", self.bucket), "STANDARD");
        }
        Ok(events)
    }

    async fn get_decision(
        &self,
        id: &SystemId,
        decision_id: &str,
    ) -> StoreResult<Option<DecisionRecord>> {
        self.get_record(keys::system(id), keys::decision_id(decision_id))
            .await
    }

    async fn list_decisions(
        &self,
        id: &SystemId,
        since: Option<DateTime<Utc>>,
        limit: usize,
    ) -> StoreResult<Vec<DecisionRecord>> {
        self.records_since(id, keys::DEC, since, limit).await
    }

    async fn list_fitness(
        &self,
        id: &SystemId,
        generation: u64,
    ) -> StoreResult<Vec<FitnessSample>> {
        if generation > MAX_GENERATION {
            return Ok(Vec::new());
        }
        let prefix = keys::fitness_prefix(generation)?;
        let mut samples: Vec<FitnessSample> = self
            .query_records(&Query::new(keys::system(id), Range::Prefix(prefix)))
            .await?;
        samples.sort_by(|a, b| (a.received_at, &a.id).cmp(&(b.received_at, &b.id)));
        Ok(samples)
    }

    async fn list_history(&self, id: &SystemId, limit: usize) -> StoreResult<Vec<HistoryEntry>> {
        let query = Query::new(keys::system(id), Range::Prefix(keys::HIST.to_owned()))
            .backward()
            .limit(limit);
        let mut latest: Vec<HistoryEntry> = self.query_records(&query).await?;
        latest.reverse();
        Ok(latest)
    }

    async fn get_plan(&self, id: &SystemId, plan_id: &str) -> StoreResult<Option<Plan>> {
        self.get_record(keys::system(id), keys::plan(plan_id)).await
    }

    async fn get_cursor(&self, id: &SystemId) -> StoreResult<Option<PlanCursor>> {
        self.get_record(keys::system(id), keys::CURSOR).await
    }

    async fn get_analysis(
        &self,
        id: &SystemId,
        analysis_id: &str,
    ) -> StoreResult<Option<AnalysisRecord>> {
        self.get_record(keys::system(id), keys::analysis(analysis_id))
            .await
    }

    async fn list_llm_calls(
        &self,
        id: Option<&SystemId>,
        since: Option<DateTime<Utc>>,
    ) -> StoreResult<Vec<LlmCallRecord>> {
        if let Some(id) = id {
            return self.records_since(id, keys::CALL, since, usize::MAX).await;
        }
        self.by_day(keys::CALL_DAYS, keys::call_day, since).await
    }

    async fn reconciliations(&self, since: Option<NaiveDate>) -> StoreResult<Vec<Reconciliation>> {
        let range = since.map_or(Range::All, |day| {
            Range::Between(day.to_string(), "~".into())
        });
        self.query_records(&Query::new(keys::RECONCILE, range))
            .await
    }

    async fn list_alerts(
        &self,
        since: Option<DateTime<Utc>>,
        limit: usize,
    ) -> StoreResult<Vec<Alert>> {
        let query = Query::new(keys::ALERTS, time_range(since)).limit(limit);
        self.query_records(&query).await
    }

    async fn claim(
        &self,
        key: &str,
        payload_hash: &str,
        now: DateTime<Utc>,
        in_progress_until: DateTime<Utc>,
    ) -> StoreResult<Claim> {
        let request = &ClaimRequest {
            key,
            payload_hash,
            now,
            in_progress_until,
        };
        let (key, held_until) = (request.key, request.in_progress_until);
        let pk = keys::idempotency(key);
        let mut item = item::record(&pk, keys::RECORD, &request.in_progress())?;
        item.insert(STATE.to_owned(), s(IN_PROGRESS));
        item.insert(UNTIL.to_owned(), s(ts(held_until)));
        item.insert(TTL.to_owned(), item::n(epoch_ceil(held_until)));
        // Powertools semantics: absent, or an in-progress claim that lapsed, or a completed
        // record that expired (DynamoDB's TTL deletes it late, so expiry is checked here).
        let mut expr = Expr::default();
        let (pk_name, state, until, expires) = (
            expr.name(PK),
            expr.name(STATE),
            expr.name(UNTIL),
            expr.name(EXPIRES_AT),
        );
        let (in_progress, completed, now_value) = (
            expr.value(s(IN_PROGRESS)),
            expr.value(s(COMPLETED)),
            expr.value(s(ts(request.now))),
        );
        let condition = format!(
            "attribute_not_exists({pk_name}) OR ({state} = {in_progress} AND {until} <= \
             {now_value}) OR ({state} = {completed} AND {expires} <= {now_value})"
        );
        for _ in 0..CLAIM_ATTEMPTS {
            let result = self
                .dynamo
                .put_item()
                .table_name(&self.table)
                .set_item(Some(item.clone()))
                .conditioned(&condition, &expr)
                .send()
                .await;
            match result {
                Ok(_) => return Ok(Claim::Claimed),
                Err(error) if is_condition_failure(&error) => {}
                Err(error) => return Err(sdk_error("PutItem (claim)", &error)),
            }
            // Someone holds it: read what they hold (consistently) and decide as every adapter
            // does. A record that changed in between (released, expired) is claimed again.
            let existing = self.idempotency_record(key).await?;
            match request.outcome(existing.as_ref()) {
                Claim::Claimed => {}
                outcome => return Ok(outcome),
            }
        }
        Err(StoreError::Unavailable(format!(
            "idempotency key {key} kept changing while being claimed"
        )))
    }

    async fn release(&self, key: &str) -> StoreResult<()> {
        // A completed (or absent) record is not ours to drop.
        self.delete_idempotency_in(key, IN_PROGRESS, "DeleteItem (release)")
            .await
    }

    async fn mark_sent(&self, key: &str, expires_at: DateTime<Utc>) -> StoreResult<()> {
        let mut expr = Expr::default();
        let update = format!(
            "SET {} = {}, {} = {}, {} = {}",
            expr.name(SENT),
            expr.value(AttributeValue::Bool(true)),
            expr.name(EXPIRES_AT),
            expr.value(s(ts(expires_at))),
            expr.name(TTL),
            expr.value(item::n(epoch_ceil(expires_at)))
        );
        let condition = format!("{} = {}", expr.name(STATE), expr.value(s(COMPLETED)));
        let result = self
            .dynamo
            .update_item()
            .table_name(&self.table)
            .set_key(Some(idempotency_key(key)))
            .update_expression(update)
            .conditioned(condition, &expr)
            .send()
            .await;
        // Unknown keys and in-progress claims have no outbox to mark.
        unless_condition_failed(result, "UpdateItem (mark_sent)")
    }

    async fn commit(&self, tx: Transaction) -> StoreResult<()> {
        rules::check_shape(&tx)?;
        let predicts = tx
            .writes
            .iter()
            .any(|w| matches!(w, Write::RecordPrediction { .. }));
        let mut bodies_stored = false;
        let mut attempt = 0;
        loop {
            let performance = if predicts {
                Some(self.performance_record().await?)
            } else {
                None
            };
            let staged = commit::stage(&self.table, &tx, performance.as_ref())?;
            if staged.items.is_empty() {
                return Ok(());
            }
            // Bodies first, under deterministic keys: a retry overwrites them, and no index
            // item can be committed before its body exists.
            if !bodies_stored {
                for body in &staged.bodies {
                    self.put_event_body(body).await?;
                }
                // The call archive likewise; a refused transaction leaves its objects: the
                // call was made and its money settled, and the retry overwrites them.
                for archive in &staged.call_archives {
                    self.put_call_archive(archive).await?;
                }
                bodies_stored = true;
            }
            // No client request token: DynamoDB would answer a repeat of an applied
            // transaction with success, where the port asks for its conditions to be evaluated
            // again.
            match self.transact(staged.items.clone(), None).await {
                Ok(()) => return Ok(()),
                Err(TransactFailure::Cancelled { reasons, .. })
                    if staged.only_stale(&reasons) && attempt + 1 < CONFLICT_ATTEMPTS =>
                {
                    // The performance record moved since it was read: read it again.
                    attempt += 1;
                    backoff(attempt).await;
                }
                Err(TransactFailure::Cancelled { reasons, message }) => {
                    // Nothing was written: undo what this attempt did to the bodies.
                    self.restore_bodies(&staged.bodies).await;
                    return Err(staged.explain(&reasons, &message));
                }
                Err(TransactFailure::Store(error)) => return Err(error),
            }
        }
    }

    async fn purge_system(&self, id: &SystemId) -> StoreResult<()> {
        // The registry first, so the tick stops scheduling the system at once.
        self.delete_all(vec![item::key(keys::SYSTEMS, id.as_str())])
            .await?;
        let pk = keys::system(id);
        let items = self.query(&Query::new(&pk, Range::All).keys_only()).await?;
        let mut doomed = Vec::with_capacity(items.len());
        for found in items {
            let sk = item::text(&found, SK).unwrap_or_default().to_owned();
            if let Some(timed) = sk.strip_prefix(keys::CALL) {
                // The call's copy in the all-systems day partition.
                let day = timed.get(..10).unwrap_or_default();
                doomed.push(item::key(keys::call_day(day), timed));
            } else if let Some(key) = sk.strip_prefix(keys::IDEMP) {
                self.forget_completed(key).await?;
            }
            doomed.push(item::key(&pk, sk));
        }
        self.delete_all(doomed).await?;
        // Index items are gone, so no reader follows one to a deleted body.
        self.delete_event_bodies(id).await
    }
}

impl DynamoStore {
    /// Drops a completed idempotency record (a purged system's message runs again after a
    /// fresh start); an in-progress claim is left to its owner.
    async fn forget_completed(&self, key: &str) -> StoreResult<()> {
        self.delete_idempotency_in(key, COMPLETED, "DeleteItem (purge)")
            .await
    }

    /// Deletes an idempotency record only while it is in `state`; in any other state (or
    /// absent) it is left alone, which is not an error.
    async fn delete_idempotency_in(
        &self,
        key: &str,
        state: &str,
        operation: &str,
    ) -> StoreResult<()> {
        let mut expr = Expr::default();
        let condition = format!("{} = {}", expr.name(STATE), expr.value(s(state)));
        let result = self
            .dynamo
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(idempotency_key(key)))
            .conditioned(condition, &expr)
            .send()
            .await;
        unless_condition_failed(result, operation)
    }

    /// The performance record with its optimistic-lock revision.
    pub(super) async fn performance_record(&self) -> StoreResult<commit::Performance> {
        let Some(found) = self.get(keys::CTRL, keys::PERFORMANCE).await? else {
            return Ok(commit::Performance {
                snapshot: PerformanceSnapshot::default(),
                revision: None,
            });
        };
        Ok(commit::Performance {
            snapshot: decode(&found)?,
            revision: item::text(&found, item::REVISION).map(ToOwned::to_owned),
        })
    }

    /// A system's records under a time-ordered sort-key prefix (`EVT#`, `DEC#`, `CALL#`), from
    /// `since` on, at most `limit`.
    pub(super) async fn records_since<T: DeserializeOwned>(
        &self,
        id: &SystemId,
        prefix: &str,
        since: Option<DateTime<Utc>>,
        limit: usize,
    ) -> StoreResult<Vec<T>> {
        let query = Query::new(keys::system(id), since_range(prefix, since)).limit(limit);
        self.query_records(&query).await
    }

    /// The records of the day partitions (`day_pk` of each day) whose days are listed under
    /// `markers`, from the day of `since` on, in time order.
    pub(super) async fn by_day<T: DeserializeOwned>(
        &self,
        markers: &str,
        day_pk: fn(&str) -> String,
        since: Option<DateTime<Utc>>,
    ) -> StoreResult<Vec<T>> {
        let mut records = Vec::new();
        for day in self.days(markers, since).await? {
            let query = Query::new(day_pk(&day), time_range(since));
            records.extend(self.query_records::<T>(&query).await?);
        }
        Ok(records)
    }

    /// The days listed under a day-marker partition (`CALLDAYS`, `LEDGERDAYS`), from the day of
    /// `since` on, ascending.
    pub(super) async fn days(
        &self,
        pk: &str,
        since: Option<DateTime<Utc>>,
    ) -> StoreResult<Vec<String>> {
        let range = match since {
            None => Range::All,
            Some(since) => Range::Between(item::day(since), "~".to_owned()),
        };
        let markers = self.query(&Query::new(pk, range).keys_only()).await?;
        Ok(markers
            .iter()
            .filter_map(|m| item::text(m, SK).map(ToOwned::to_owned))
            .collect())
    }
}
