//! In-memory adapter for tests of every crate.
//!
//! One mutex guards all state, so each transaction, claim, reservation and settlement is atomic
//! like its DynamoDB counterpart. Shapes, conditions and ledger arithmetic come from the same
//! rules the SQLite adapter uses, so a test passing here exercises the real semantics.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};

use super::rules::{self, IdempotencyRecord, Lookup};
use super::{
    BudgetState, CachedAnswer, Checkpoint, CircuitState, Claim, ClaimRequest, ControlState,
    EvolutionStore, LlmCallRecord, StoreResult, SystemRecord, Transaction, Write,
};
use crate::cost::reconcile::Reconciliation;
use crate::cost::{LedgerScope, PeriodKey, Totals};
use crate::domain::{
    Alert, AnalysisRecord, BudgetMode, DecisionRecord, EvolutionEvent, FitnessSample, Generation,
    Head, HistoryEntry, Plan, PlanCursor, SystemId,
};
use crate::store::performance::PerformanceSnapshot;

mod ledger;
use crate::store::{Hold, LedgerEntry, Reclaim};

/// The evolution store, control state and cost ledger held in process memory.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
    /// Another writer's transaction that commits just before the next commit, as when a
    /// concurrent message wins the race between a stage's read and its commit.
    cut_in: Mutex<Option<Transaction>>,
}

#[derive(Debug, Default)]
struct State {
    systems: BTreeMap<SystemId, SystemRecord>,
    heads: BTreeMap<SystemId, Head>,
    generations: BTreeMap<(SystemId, u64), Generation>,
    events: BTreeMap<(SystemId, String), EvolutionEvent>,
    decisions: BTreeMap<(SystemId, String), DecisionRecord>,
    fitness: BTreeMap<(SystemId, u64, String), FitnessSample>,
    history: BTreeMap<(SystemId, u64), HistoryEntry>,
    plans: BTreeMap<(SystemId, String), Plan>,
    cursors: BTreeMap<SystemId, PlanCursor>,
    analyses: BTreeMap<(SystemId, String), AnalysisRecord>,
    llm_calls: BTreeMap<String, LlmCallRecord>,
    alerts: BTreeMap<String, Alert>,
    budget: Option<BudgetState>,
    circuits: BTreeMap<String, CircuitState>,
    performance: PerformanceSnapshot,
    checkpoints: BTreeMap<String, Checkpoint>,
    answers: BTreeMap<String, CachedAnswer>,
    idempotency: BTreeMap<String, IdempotencyRecord>,
    counters: BTreeMap<(PeriodKey, LedgerScope), Totals>,
    ledger: BTreeMap<String, LedgerEntry>,
    holds: BTreeMap<String, Hold>,
    reclaims: Vec<Reclaim>,
    reconciliations: BTreeMap<NaiveDate, Reconciliation>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Commits `tx` just before the next commit, as another writer would between that
    /// commit's reads and its write (for tests of lost races).
    #[cfg(any(test, feature = "test-support"))]
    pub fn cut_in_before_next_commit(&self, tx: Transaction) {
        *self.cut_in.lock().unwrap_or_else(PoisonError::into_inner) = Some(tx);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Writes start only after every check has passed, so a lock poisoned by a panicking
        // test still guards consistent state.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Lookup for State {
    fn system_version(&self, id: &SystemId) -> StoreResult<Option<u64>> {
        Ok(self.systems.get(id).map(|s| s.version))
    }

    fn head(&self, id: &SystemId) -> StoreResult<Option<Head>> {
        Ok(self.heads.get(id).cloned())
    }

    fn generation_exists(&self, id: &SystemId, generation: u64) -> StoreResult<bool> {
        Ok(self.generations.contains_key(&(id.clone(), generation)))
    }

    fn decision_exists(&self, id: &SystemId, decision_id: &str) -> StoreResult<bool> {
        Ok(self
            .decisions
            .contains_key(&(id.clone(), decision_id.to_owned())))
    }

    fn plan_exists(&self, id: &SystemId, plan_id: &str) -> StoreResult<bool> {
        Ok(self.plans.contains_key(&(id.clone(), plan_id.to_owned())))
    }

    fn cursor_version(&self, id: &SystemId) -> StoreResult<Option<u64>> {
        Ok(self.cursors.get(id).map(|c| c.version))
    }

    fn budget_mode(&self) -> StoreResult<BudgetMode> {
        Ok(self.budget.as_ref().map_or(BudgetMode::Normal, |b| b.mode))
    }

    fn reconciliation(&self, day: NaiveDate) -> StoreResult<Option<Reconciliation>> {
        Ok(self.reconciliations.get(&day).cloned())
    }
}

impl State {
    /// Applies one write whose shape and condition were checked.
    fn apply(&mut self, write: Write) -> StoreResult<()> {
        match write {
            Write::CreateSystem {
                system,
                head,
                generation,
            } => {
                let id = system.system_id.clone();
                self.generations
                    .insert((id.clone(), generation.generation), generation);
                self.heads.insert(id.clone(), head);
                self.systems.insert(id, system);
            }
            Write::PutSystem { mut system } => {
                system.version += 1;
                self.systems.insert(system.system_id.clone(), system);
            }
            Write::PutGeneration { generation } => {
                self.generations.insert(
                    (generation.system_id.clone(), generation.generation),
                    generation,
                );
            }
            Write::UpdateHead { head, .. }
            | Write::ResolveApproval { head, .. }
            | Write::CountSample { head, .. } => {
                self.heads.insert(head.system_id.clone(), head);
            }
            Write::PutEvent { event } => {
                let system = rules::event_system(&event)?.clone();
                self.events.insert((system, event.id.clone()), event);
            }
            Write::PutDecision { decision } => {
                let system = rules::decision_system(&decision)?.clone();
                self.decisions
                    .insert((system, decision.decision_id.clone()), decision);
            }
            Write::PutFitnessSample { sample } => {
                self.fitness.insert(
                    (
                        sample.system_id.clone(),
                        sample.generation,
                        sample.id.clone(),
                    ),
                    sample,
                );
            }
            Write::PutHistory { system_id, entry } => {
                self.history.insert((system_id, entry.generation), entry);
            }
            Write::PutPlan { plan } => {
                self.plans
                    .insert((plan.system_id.clone(), plan.plan_id.clone()), plan);
            }
            Write::PutCursor { cursor, .. } => {
                self.cursors.insert(cursor.system_id.clone(), cursor);
            }
            Write::PutAnalysis { analysis } => {
                self.analyses.insert(
                    (analysis.system_id.clone(), analysis.analysis_id.clone()),
                    analysis,
                );
            }
            Write::PutLlmCall { call } => {
                self.llm_calls.insert(call.call_id.clone(), call);
            }
            Write::PutAlert { alert } => {
                self.alerts.insert(alert.id.clone(), alert);
            }
            Write::SetBudgetMode { state, .. } => {
                self.budget = Some(state);
            }
            Write::PutReconciliation { record } => {
                self.reconciliations.insert(record.day, record);
            }
            Write::RecordPrediction {
                model_id,
                role,
                predicted,
                actual,
            } => {
                self.performance
                    .record_prediction(&model_id, role, predicted, actual);
            }
        }
        Ok(())
    }

    /// Applies `change` to each of the counters `keys` (zero until first moved).
    fn adjust(&mut self, keys: Vec<(PeriodKey, LedgerScope)>, change: impl Fn(&mut Totals)) {
        for key in keys {
            change(self.counters.entry(key).or_default());
        }
    }

    fn totals(&self, period: &PeriodKey, scope: &LedgerScope) -> Totals {
        self.counters
            .get(&(*period, scope.clone()))
            .copied()
            .unwrap_or_default()
    }
}

/// Whether purging `system` must drop the record: completed work that wrote or messaged it. The
/// SQLite adapter asks the same of the stored JSON.
fn concerns(record: &IdempotencyRecord, system: &SystemId) -> bool {
    match record {
        IdempotencyRecord::InProgress { .. } => false,
        IdempotencyRecord::Completed { systems, .. } => systems.contains(system),
    }
}

/// Records sorted by `key`, from `since` on (inclusive), at most `limit`.
fn in_time_order<'a, T: Clone + 'a, K: Ord>(
    records: impl Iterator<Item = &'a T>,
    at: impl Fn(&T) -> DateTime<Utc>,
    key: impl Fn(&T) -> K,
    since: Option<DateTime<Utc>>,
    limit: usize,
) -> Vec<T> {
    let mut out: Vec<T> = records
        .filter(|r| since.is_none_or(|since| at(r) >= since))
        .cloned()
        .collect();
    out.sort_by_key(|r| key(r));
    out.truncate(limit);
    out
}

#[async_trait]
impl EvolutionStore for MemoryStore {
    async fn get_system(&self, id: &SystemId) -> StoreResult<Option<SystemRecord>> {
        Ok(self.lock().systems.get(id).cloned())
    }

    async fn list_systems(&self) -> StoreResult<Vec<SystemRecord>> {
        Ok(self.lock().systems.values().cloned().collect())
    }

    async fn list_systems_page(
        &self,
        after: Option<&SystemId>,
        limit: usize,
    ) -> StoreResult<Vec<SystemRecord>> {
        use std::ops::Bound;
        let state = self.lock();
        let low = after.map_or(Bound::Unbounded, Bound::Excluded);
        Ok(state
            .systems
            .range::<SystemId, _>((low, Bound::Unbounded))
            .map(|(_, s)| s.clone())
            .take(limit)
            .collect())
    }

    async fn get_head(&self, id: &SystemId) -> StoreResult<Option<Head>> {
        Ok(self.lock().heads.get(id).cloned())
    }

    async fn get_generation(
        &self,
        id: &SystemId,
        generation: u64,
    ) -> StoreResult<Option<Generation>> {
        Ok(self
            .lock()
            .generations
            .get(&(id.clone(), generation))
            .cloned())
    }

    async fn list_generations(
        &self,
        id: &SystemId,
        after: Option<u64>,
        limit: usize,
    ) -> StoreResult<Vec<Generation>> {
        Ok(self
            .lock()
            .generations
            .iter()
            .filter(|((system, n), _)| system == id && after.is_none_or(|after| *n > after))
            .map(|(_, g)| g.clone())
            .take(limit)
            .collect())
    }

    async fn list_events(
        &self,
        id: &SystemId,
        since: Option<DateTime<Utc>>,
        limit: usize,
    ) -> StoreResult<Vec<EvolutionEvent>> {
        let state = self.lock();
        let of_system = state
            .events
            .iter()
            .filter(|((system, _), _)| system == id)
            .map(|(_, e)| e);
        let mut events = in_time_order(
            of_system,
            |e| e.timestamp,
            |e| (e.timestamp, e.id.clone()),
            since,
            limit,
        );
        for event in &mut events {
            let location = format!("memory://events/{id}/{}", event.id);
            event.locate(location, "MEMORY");
        }
        Ok(events)
    }

    async fn get_decision(
        &self,
        id: &SystemId,
        decision_id: &str,
    ) -> StoreResult<Option<DecisionRecord>> {
        Ok(self
            .lock()
            .decisions
            .get(&(id.clone(), decision_id.to_owned()))
            .cloned())
    }

    async fn list_decisions(
        &self,
        id: &SystemId,
        since: Option<DateTime<Utc>>,
        limit: usize,
    ) -> StoreResult<Vec<DecisionRecord>> {
        let state = self.lock();
        let of_system = state
            .decisions
            .iter()
            .filter(|((system, _), _)| system == id)
            .map(|(_, d)| d);
        Ok(in_time_order(
            of_system,
            |d| d.timestamp,
            |d| (d.timestamp, d.decision_id.clone()),
            since,
            limit,
        ))
    }

    async fn list_fitness(
        &self,
        id: &SystemId,
        generation: u64,
    ) -> StoreResult<Vec<FitnessSample>> {
        let state = self.lock();
        let of_generation = state
            .fitness
            .iter()
            .filter(|((system, n, _), _)| system == id && *n == generation)
            .map(|(_, s)| s);
        Ok(in_time_order(
            of_generation,
            |s| s.received_at,
            |s| (s.received_at, s.id.clone()),
            None,
            usize::MAX,
        ))
    }

    async fn list_history(&self, id: &SystemId, limit: usize) -> StoreResult<Vec<HistoryEntry>> {
        let state = self.lock();
        let mut latest: Vec<HistoryEntry> = state
            .history
            .iter()
            .rev()
            .filter(|((system, _), _)| system == id)
            .map(|(_, h)| h.clone())
            .take(limit)
            .collect();
        latest.reverse();
        Ok(latest)
    }

    async fn get_plan(&self, id: &SystemId, plan_id: &str) -> StoreResult<Option<Plan>> {
        Ok(self
            .lock()
            .plans
            .get(&(id.clone(), plan_id.to_owned()))
            .cloned())
    }

    async fn get_cursor(&self, id: &SystemId) -> StoreResult<Option<PlanCursor>> {
        Ok(self.lock().cursors.get(id).cloned())
    }

    async fn get_analysis(
        &self,
        id: &SystemId,
        analysis_id: &str,
    ) -> StoreResult<Option<AnalysisRecord>> {
        Ok(self
            .lock()
            .analyses
            .get(&(id.clone(), analysis_id.to_owned()))
            .cloned())
    }

    async fn list_llm_calls(
        &self,
        id: Option<&SystemId>,
        since: Option<DateTime<Utc>>,
    ) -> StoreResult<Vec<LlmCallRecord>> {
        let state = self.lock();
        let selected = state
            .llm_calls
            .values()
            .filter(|c| id.is_none_or(|id| c.system_id == *id));
        Ok(in_time_order(
            selected,
            |c| c.at,
            |c| (c.at, c.call_id.clone()),
            since,
            usize::MAX,
        ))
    }

    async fn reconciliations(&self, since: Option<NaiveDate>) -> StoreResult<Vec<Reconciliation>> {
        let state = self.lock();
        let from = since.unwrap_or(NaiveDate::MIN);
        Ok(state
            .reconciliations
            .range(from..)
            .map(|(_, r)| r.clone())
            .collect())
    }

    async fn list_alerts(
        &self,
        since: Option<DateTime<Utc>>,
        limit: usize,
    ) -> StoreResult<Vec<Alert>> {
        let state = self.lock();
        Ok(in_time_order(
            state.alerts.values(),
            |a| a.at,
            |a| (a.at, a.id.clone()),
            since,
            limit,
        ))
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
        let mut state = self.lock();
        let outcome = request.outcome(state.idempotency.get(request.key));
        if outcome == Claim::Claimed {
            let record = request.in_progress();
            state.idempotency.insert(request.key.to_owned(), record);
        }
        Ok(outcome)
    }

    async fn release(&self, key: &str) -> StoreResult<()> {
        let mut state = self.lock();
        if state
            .idempotency
            .get(key)
            .is_some_and(|r| r.state() == rules::IN_PROGRESS)
        {
            state.idempotency.remove(key);
        }
        Ok(())
    }

    async fn commit(&self, tx: Transaction) -> StoreResult<()> {
        let cut_in = self
            .cut_in
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(other) = cut_in {
            Box::pin(self.commit(other)).await?;
        }
        rules::check_shape(&tx)?;
        let mut state = self.lock();
        rules::check_conditions(&tx, &*state)?;
        let completed = tx
            .completion
            .as_ref()
            .map(|c| (c.key.clone(), IdempotencyRecord::completed(c, &tx.writes)));
        // Shapes were checked above, so no write below can fail and leave part of the rest out.
        for write in tx.writes {
            state.apply(write)?;
        }
        if let Some((key, record)) = completed {
            state.idempotency.insert(key, record);
        }
        Ok(())
    }

    async fn mark_sent(&self, key: &str, expires_at: DateTime<Utc>) -> StoreResult<()> {
        if let Some(record) = self.lock().idempotency.get_mut(key) {
            record.mark_sent();
            record.keep_until(expires_at);
        }
        Ok(())
    }

    async fn purge_system(&self, id: &SystemId) -> StoreResult<()> {
        let mut state = self.lock();
        state.systems.remove(id);
        state.heads.remove(id);
        state.cursors.remove(id);
        state.generations.retain(|(system, _), _| system != id);
        state.events.retain(|(system, _), _| system != id);
        state.decisions.retain(|(system, _), _| system != id);
        state.fitness.retain(|(system, _, _), _| system != id);
        state.history.retain(|(system, _), _| system != id);
        state.plans.retain(|(system, _), _| system != id);
        state.analyses.retain(|(system, _), _| system != id);
        state.llm_calls.retain(|_, call| &call.system_id != id);
        state.idempotency.retain(|_, record| !concerns(record, id));
        Ok(())
    }
}

#[async_trait]
impl ControlState for MemoryStore {
    async fn budget_state(&self) -> StoreResult<BudgetState> {
        Ok(self.lock().budget.clone().unwrap_or_default())
    }

    async fn circuit(&self, model_id: &str) -> StoreResult<Option<CircuitState>> {
        Ok(self.lock().circuits.get(model_id).cloned())
    }

    async fn put_circuit(&self, state: &CircuitState) -> StoreResult<()> {
        self.lock()
            .circuits
            .insert(state.model_id.clone(), state.clone());
        Ok(())
    }

    async fn update_circuit(
        &self,
        model_id: &str,
        change: &(dyn Fn(Option<CircuitState>) -> CircuitState + Sync),
    ) -> StoreResult<()> {
        let mut state = self.lock();
        let next = change(state.circuits.get(model_id).cloned());
        state.circuits.insert(model_id.to_owned(), next);
        Ok(())
    }

    async fn performance(&self) -> StoreResult<PerformanceSnapshot> {
        Ok(self.lock().performance.clone())
    }

    async fn update_performance(
        &self,
        change: &(dyn for<'p> Fn(&'p mut PerformanceSnapshot) + Sync),
    ) -> StoreResult<()> {
        change(&mut self.lock().performance);
        Ok(())
    }

    async fn checkpoint(&self, key: &str, now: DateTime<Utc>) -> StoreResult<Option<Checkpoint>> {
        Ok(self
            .lock()
            .checkpoints
            .get(key)
            .filter(|c| c.expires_at > now)
            .cloned())
    }

    async fn put_checkpoint(&self, checkpoint: &Checkpoint) -> StoreResult<()> {
        self.lock()
            .checkpoints
            .insert(checkpoint.key.clone(), checkpoint.clone());
        Ok(())
    }

    async fn put_performance(&self, snapshot: &PerformanceSnapshot) -> StoreResult<()> {
        self.lock().performance = snapshot.clone();
        Ok(())
    }

    async fn cached_answer(
        &self,
        key: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<CachedAnswer>> {
        Ok(self
            .lock()
            .answers
            .get(key)
            .filter(|c| c.expires_at > now)
            .cloned())
    }

    async fn put_cached_answer(&self, entry: &CachedAnswer) -> StoreResult<()> {
        self.lock().answers.insert(entry.key.clone(), entry.clone());
        Ok(())
    }
}
