//! The evolution store on SQLite: records as JSON bodies in one table each, transactions applied
//! inside an immediate transaction after every condition was checked.

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use rusqlite::params;

use super::writes::apply;
use super::{
    Reader, SYSTEM_TABLES, SqlResult, SqliteStore, immediate, many, one, put, read_cursor,
    read_head, read_idempotency, since_key, sql_limit, write_idempotency,
};
use crate::cost::reconcile::Reconciliation;
use crate::domain::{
    Alert, AnalysisRecord, DecisionRecord, EvolutionEvent, FitnessSample, Generation, Head,
    HistoryEntry, Plan, PlanCursor, SystemId,
};
use crate::store::rules::{self, IdempotencyRecord};
use crate::store::{
    Claim, ClaimRequest, EvolutionStore, LlmCallRecord, StoreResult, SystemRecord, Transaction,
};

#[async_trait]
impl EvolutionStore for SqliteStore {
    async fn get_system(&self, id: &SystemId) -> StoreResult<Option<SystemRecord>> {
        one(
            &self.conn(),
            "systems",
            "SELECT body FROM systems WHERE system_id = ?1",
            [id.as_str()],
        )
    }

    async fn list_systems(&self) -> StoreResult<Vec<SystemRecord>> {
        many(
            &self.conn(),
            "systems",
            "SELECT body FROM systems ORDER BY system_id",
            [],
        )
    }

    async fn list_systems_page(
        &self,
        after: Option<&SystemId>,
        limit: usize,
    ) -> StoreResult<Vec<SystemRecord>> {
        many(
            &self.conn(),
            "systems",
            "SELECT body FROM systems WHERE system_id > ?1 ORDER BY system_id LIMIT ?2",
            params![after.map_or("", SystemId::as_str), sql_limit(limit)],
        )
    }

    async fn get_head(&self, id: &SystemId) -> StoreResult<Option<Head>> {
        read_head(&self.conn(), id)
    }

    async fn get_generation(
        &self,
        id: &SystemId,
        generation: u64,
    ) -> StoreResult<Option<Generation>> {
        let Ok(generation) = i64::try_from(generation) else {
            return Ok(None);
        };
        one(
            &self.conn(),
            "generations",
            "SELECT body FROM generations WHERE system_id = ?1 AND generation = ?2",
            params![id.as_str(), generation],
        )
    }

    async fn list_generations(
        &self,
        id: &SystemId,
        after: Option<u64>,
        limit: usize,
    ) -> StoreResult<Vec<Generation>> {
        let after = match after.map(i64::try_from) {
            None => -1,
            Some(Ok(after)) => after,
            // Nothing can be stored after a generation beyond the integer range.
            Some(Err(_)) => return Ok(Vec::new()),
        };
        many(
            &self.conn(),
            "generations",
            "SELECT body FROM generations WHERE system_id = ?1 AND generation > ?2 \
             ORDER BY generation LIMIT ?3",
            params![id.as_str(), after, sql_limit(limit)],
        )
    }

    async fn list_events(
        &self,
        id: &SystemId,
        since: Option<DateTime<Utc>>,
        limit: usize,
    ) -> StoreResult<Vec<EvolutionEvent>> {
        let mut events: Vec<EvolutionEvent> = many(
            &self.conn(),
            "events",
            "SELECT body FROM events WHERE system_id = ?1 AND at >= ?2 \
             ORDER BY at, event_id LIMIT ?3",
            params![id.as_str(), since_key(since), sql_limit(limit)],
        )?;
        let database = self.location();
        for event in &mut events {
            let location = format!("{database}#events/{id}/{}", event.id);
            event.locate(location, "SQLITE");
        }
        Ok(events)
    }

    async fn get_decision(
        &self,
        id: &SystemId,
        decision_id: &str,
    ) -> StoreResult<Option<DecisionRecord>> {
        one(
            &self.conn(),
            "decisions",
            "SELECT body FROM decisions WHERE system_id = ?1 AND decision_id = ?2",
            [id.as_str(), decision_id],
        )
    }

    async fn list_decisions(
        &self,
        id: &SystemId,
        since: Option<DateTime<Utc>>,
        limit: usize,
    ) -> StoreResult<Vec<DecisionRecord>> {
        many(
            &self.conn(),
            "decisions",
            "SELECT body FROM decisions WHERE system_id = ?1 AND at >= ?2 \
             ORDER BY at, decision_id LIMIT ?3",
            params![id.as_str(), since_key(since), sql_limit(limit)],
        )
    }

    async fn list_fitness(
        &self,
        id: &SystemId,
        generation: u64,
    ) -> StoreResult<Vec<FitnessSample>> {
        let Ok(generation) = i64::try_from(generation) else {
            return Ok(Vec::new());
        };
        many(
            &self.conn(),
            "fitness",
            "SELECT body FROM fitness WHERE system_id = ?1 AND generation = ?2 \
             ORDER BY at, sample_id",
            params![id.as_str(), generation],
        )
    }

    async fn list_history(&self, id: &SystemId, limit: usize) -> StoreResult<Vec<HistoryEntry>> {
        let mut latest: Vec<HistoryEntry> = many(
            &self.conn(),
            "history",
            "SELECT body FROM history WHERE system_id = ?1 ORDER BY generation DESC LIMIT ?2",
            params![id.as_str(), sql_limit(limit)],
        )?;
        latest.reverse();
        Ok(latest)
    }

    async fn get_plan(&self, id: &SystemId, plan_id: &str) -> StoreResult<Option<Plan>> {
        one(
            &self.conn(),
            "plans",
            "SELECT body FROM plans WHERE system_id = ?1 AND plan_id = ?2",
            [id.as_str(), plan_id],
        )
    }

    async fn get_cursor(&self, id: &SystemId) -> StoreResult<Option<PlanCursor>> {
        read_cursor(&self.conn(), id)
    }

    async fn get_analysis(
        &self,
        id: &SystemId,
        analysis_id: &str,
    ) -> StoreResult<Option<AnalysisRecord>> {
        one(
            &self.conn(),
            "analyses",
            "SELECT body FROM analyses WHERE system_id = ?1 AND analysis_id = ?2",
            [id.as_str(), analysis_id],
        )
    }

    async fn list_llm_calls(
        &self,
        id: Option<&SystemId>,
        since: Option<DateTime<Utc>>,
    ) -> StoreResult<Vec<LlmCallRecord>> {
        many(
            &self.conn(),
            "llm_calls",
            "SELECT body FROM llm_calls WHERE (?1 IS NULL OR system_id = ?1) AND at >= ?2 \
             ORDER BY at, call_id",
            params![id.map(SystemId::as_str), since_key(since)],
        )
    }

    async fn reconciliations(&self, since: Option<NaiveDate>) -> StoreResult<Vec<Reconciliation>> {
        many(
            &self.conn(),
            "reconciliations",
            "SELECT body FROM reconciliations WHERE day >= ?1 ORDER BY day",
            [since.map(|d| d.to_string()).unwrap_or_default()],
        )
    }

    async fn list_alerts(
        &self,
        since: Option<DateTime<Utc>>,
        limit: usize,
    ) -> StoreResult<Vec<Alert>> {
        many(
            &self.conn(),
            "alerts",
            "SELECT body FROM alerts WHERE at >= ?1 ORDER BY at, alert_id LIMIT ?2",
            params![since_key(since), sql_limit(limit)],
        )
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
        let mut conn = self.conn();
        let db = immediate(&mut conn)?;
        let outcome = request.outcome(read_idempotency(&db, request.key)?.as_ref());
        if outcome == Claim::Claimed {
            write_idempotency(&db, request.key, &request.in_progress())?;
            db.commit().sql()?;
        }
        Ok(outcome)
    }

    async fn release(&self, key: &str) -> StoreResult<()> {
        put(
            &self.conn(),
            "DELETE FROM idempotency WHERE key = ?1 AND state = ?2",
            [key, rules::IN_PROGRESS],
        )
    }

    async fn commit(&self, tx: Transaction) -> StoreResult<()> {
        rules::check_shape(&tx)?;
        let mut conn = self.conn();
        let db = immediate(&mut conn)?;
        // Dropping `db` on an early return rolls back: nothing of a refused transaction lands.
        rules::check_conditions(&tx, &Reader(&db))?;
        for write in &tx.writes {
            apply(&db, write)?;
        }
        if let Some(completion) = &tx.completion {
            write_idempotency(
                &db,
                &completion.key,
                &IdempotencyRecord::completed(completion, &tx.writes),
            )?;
        }
        db.commit().sql()
    }

    async fn mark_sent(&self, key: &str, expires_at: DateTime<Utc>) -> StoreResult<()> {
        let mut conn = self.conn();
        let db = immediate(&mut conn)?;
        if let Some(mut record) = read_idempotency(&db, key)? {
            record.mark_sent();
            record.keep_until(expires_at);
            write_idempotency(&db, key, &record)?;
            db.commit().sql()?;
        }
        Ok(())
    }

    async fn purge_system(&self, id: &SystemId) -> StoreResult<()> {
        let mut conn = self.conn();
        let db = immediate(&mut conn)?;
        for table in SYSTEM_TABLES {
            put(
                &db,
                &format!("DELETE FROM {table} WHERE system_id = ?1"),
                [id.as_str()],
            )?;
        }
        put(
            &db,
            "DELETE FROM idempotency WHERE state = ?1 AND EXISTS \
             (SELECT 1 FROM json_each(idempotency.body, '$.systems') WHERE json_each.value = ?2)",
            [rules::COMPLETED, id.as_str()],
        )?;
        db.commit().sql()
    }
}
