//! Budgets: a call that does not fit is never sent; non-critical calls leave the critical
//! reserve alone; settled spend that crosses a threshold is reported at once; a paused budget
//! keeps routine calls on the local engine.

use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use shared::clock::{SeededRandom, SimClock};
use shared::cost::{BudgetLimit, Budgets, LedgerScope, PeriodKey, Totals};
use shared::domain::{BudgetMode, BudgetPeriod, BudgetScope, Role};
use shared::engine::{LOCAL_MODEL_ID, LocalEngine};
use shared::llm::bedrock::{BedrockModel, BedrockPorts, BedrockSettings, SdkConverse};
use shared::llm::{AnalyzeRequest, BudgetCrossing, LanguageModel};
use shared::store::StoreResult;
use shared::store::memory::MemoryStore;
use shared::store::{
    CostLedger, Hold, LedgerEntry, Reclaim, ReclaimOutcome, Reservation, ReserveOutcome,
    SettleOutcome, Settlement,
};
use tests::bedrock_stub::{StubServer, Usage as StubUsage};

use crate::fixture::{A, B, C, SEED, catalog, client, cost_u64, spec, start};
use crate::requests::{analyze_req, ok_from};

/// The in-memory ledger, remembering every reservation asked of it.
#[derive(Debug)]
struct Recording {
    store: Arc<MemoryStore>,
    reservations: Mutex<Vec<Reservation>>,
}

#[async_trait]
impl CostLedger for Recording {
    async fn reserve(&self, reservation: &Reservation) -> StoreResult<ReserveOutcome> {
        self.reservations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(reservation.clone());
        self.store.reserve(reservation).await
    }

    async fn settle(&self, settlement: &Settlement) -> StoreResult<SettleOutcome> {
        self.store.settle(settlement).await
    }

    async fn totals(&self, period: PeriodKey, scope: &LedgerScope) -> StoreResult<Totals> {
        self.store.totals(period, scope).await
    }

    async fn entries(&self, since: Option<DateTime<Utc>>) -> StoreResult<Vec<LedgerEntry>> {
        self.store.entries(since).await
    }

    async fn holds(&self, expired_by: DateTime<Utc>, limit: usize) -> StoreResult<Vec<Hold>> {
        self.store.holds(expired_by, limit).await
    }

    async fn reclaim(
        &self,
        hold: &Hold,
        by: &str,
        at: DateTime<Utc>,
    ) -> StoreResult<ReclaimOutcome> {
        self.store.reclaim(hold, by, at).await
    }

    async fn reclaims(&self, since: Option<DateTime<Utc>>) -> StoreResult<Vec<Reclaim>> {
        self.store.reclaims(since).await
    }
}

struct Budgeted {
    stub: StubServer,
    ledger: Arc<Recording>,
    model: BedrockModel,
}

impl Budgeted {
    async fn new(budgets: Budgets, tweak: impl FnOnce(&mut BedrockSettings)) -> Self {
        let stub = StubServer::start().await;
        let store = Arc::new(MemoryStore::new());
        let ledger = Arc::new(Recording {
            store: store.clone(),
            reservations: Mutex::default(),
        });
        let clock = Arc::new(SimClock::new(start()));
        let mut settings = BedrockSettings::new(catalog(&[A, B, C]), budgets);
        settings.response_cache_ttl = chrono::Duration::zero();
        tweak(&mut settings);
        let ports = BedrockPorts {
            ledger: ledger.clone(),
            control: store,
            clock: clock.clone(),
            sleeper: clock,
            random: Arc::new(SeededRandom::new(SEED)),
        };
        let model = BedrockModel::new(
            SdkConverse::new(client(&stub.url())),
            settings,
            ports,
            LocalEngine::new(SEED),
        );
        Self {
            stub,
            ledger,
            model,
        }
    }

    fn reservations(&self) -> Vec<Reservation> {
        self.ledger
            .reservations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    async fn today(&self) -> Totals {
        self.ledger
            .totals(
                PeriodKey::of(BudgetPeriod::Day, start()),
                &LedgerScope::Total,
            )
            .await
            .expect("memory store")
    }
}

/// What the adapter reserves for `req` on A, learned from an unlimited run.
async fn worst_case_on_a(req: &AnalyzeRequest) -> u64 {
    let probe = Budgeted::new(Budgets::default(), |_| {}).await;
    probe.stub.push_for(A, ok_from(A, Role::Analyze));
    let answer = probe.model.analyze(req).await.expect("an answer");
    assert_eq!(answer.model_id, A);
    let reservations = probe.reservations();
    assert_eq!(reservations.len(), 1);
    assert!(reservations[0].limits.is_empty());
    reservations[0].amount_nano
}

fn daily(limit: u64) -> Budgets {
    Budgets {
        global_daily: Some(limit),
        economy_percent: 80,
        ..Budgets::default()
    }
}

#[tokio::test]
async fn a_reservation_over_the_budget_is_refused_and_the_local_engine_answers_without_a_request() {
    let f = Budgeted::new(daily(1_000), |_| {}).await;

    let answer = f
        .model
        .analyze(&analyze_req("env-over"))
        .await
        .expect("an answer");

    assert_eq!(answer.model_id, LOCAL_MODEL_ID);
    let reason = answer.fallback.expect("a fallback reason");
    assert!(reason.contains("budget"), "{reason}");
    assert_eq!(answer.bedrock_requests, 0);
    assert_eq!(f.stub.request_count(), 0, "nothing may reach Bedrock");
    assert_eq!(f.reservations().len(), 1);
    assert_eq!(f.today().await, Totals::default());
}

#[tokio::test]
async fn only_critical_calls_may_spend_the_critical_reserve() {
    let req = analyze_req("env-reserve");
    let worst = worst_case_on_a(&req).await;
    // The worst case fits in the whole budget but not in its non-critical 90 %.
    let limit = worst * 100 / 95;
    assert!(limit * 90 / 100 < worst && worst <= limit);
    let f = Budgeted::new(daily(limit), |s| s.critical_reserve_percent = 10).await;

    let routine = f.model.analyze(&req).await.expect("an answer");
    assert_eq!(routine.model_id, LOCAL_MODEL_ID);
    assert!(
        routine
            .fallback
            .as_deref()
            .is_some_and(|r| r.contains("budget")),
        "{:?}",
        routine.fallback
    );
    assert_eq!(f.stub.request_count(), 0);

    f.stub.push_for(A, ok_from(A, Role::Analyze));
    let mut critical = analyze_req("env-reserve-critical");
    critical.ctx.task.critical = true;
    let answer = f.model.analyze(&critical).await.expect("an answer");
    assert_eq!(answer.model_id, A);
    assert_eq!(answer.fallback, None);
    assert_eq!(f.stub.request_count(), 1);

    let limits: Vec<Vec<BudgetLimit>> = f.reservations().into_iter().map(|r| r.limits).collect();
    let global_day = |limit_nano| {
        vec![BudgetLimit {
            scope: BudgetScope::Global,
            period: BudgetPeriod::Day,
            limit_nano,
        }]
    };
    assert_eq!(limits, [global_day(limit * 90 / 100), global_day(limit)]);
    assert_eq!(f.today().await.spent_nano, answer.cost_nano_usd);
}

/// A usage on A (input tokens only, $1 per million) that costs exactly `nano` rounded down to
/// a thousand.
fn costing(nano: u64) -> StubUsage {
    StubUsage::new(nano / 1_000, 0)
}

#[tokio::test]
async fn settled_spend_crossing_the_economy_share_or_the_budget_is_reported() {
    let req = analyze_req("env-probe");
    let worst = worst_case_on_a(&req).await;
    let limit = worst * 40;
    let budgets = Budgets {
        global_daily: Some(limit),
        system_monthly: Some(limit),
        economy_percent: 80,
        ..Budgets::default()
    };
    let crossing = |scope, period, percent| BudgetCrossing {
        scope,
        period,
        percent,
    };
    let f = Budgeted::new(budgets, |_| {}).await;

    // 85 %: past the economy share of both budgets.
    let first_usage = costing(limit * 85 / 100);
    f.stub
        .push_for(A, ok_from(A, Role::Analyze).with_usage(first_usage));
    let first = f
        .model
        .analyze(&analyze_req("env-1"))
        .await
        .expect("answer");
    assert_eq!(first.cost_nano_usd, cost_u64(&spec(A).rates, &first_usage));
    assert_eq!(
        first.budget_crossings,
        [
            crossing(BudgetScope::Global, BudgetPeriod::Day, 80),
            crossing(BudgetScope::System, BudgetPeriod::Month, 80),
        ]
    );

    // A small call stays below 100 %: nothing to report.
    let small = costing(limit / 100);
    f.stub
        .push_for(A, ok_from(A, Role::Analyze).with_usage(small));
    let quiet = f
        .model
        .analyze(&analyze_req("env-2"))
        .await
        .expect("answer");
    assert_eq!(quiet.model_id, A);
    assert!(quiet.budget_crossings.is_empty());

    // Then past 100 %.
    let last = costing(limit * 20 / 100);
    f.stub
        .push_for(A, ok_from(A, Role::Analyze).with_usage(last));
    let over = f
        .model
        .analyze(&analyze_req("env-3"))
        .await
        .expect("answer");
    assert_eq!(over.model_id, A);
    assert_eq!(
        over.budget_crossings,
        [
            crossing(BudgetScope::Global, BudgetPeriod::Day, 100),
            crossing(BudgetScope::System, BudgetPeriod::Month, 100),
        ]
    );

    // One call can cross both thresholds at once.
    let g = Budgeted::new(daily(limit), |_| {}).await;
    g.stub
        .push_for(A, ok_from(A, Role::Analyze).with_usage(costing(limit * 2)));
    let both = g
        .model
        .analyze(&analyze_req("env-4"))
        .await
        .expect("answer");
    assert_eq!(
        both.budget_crossings,
        [
            crossing(BudgetScope::Global, BudgetPeriod::Day, 80),
            crossing(BudgetScope::Global, BudgetPeriod::Day, 100),
        ]
    );
}

#[tokio::test]
async fn a_paused_budget_keeps_calls_on_the_local_engine_without_a_request() {
    let f = Budgeted::new(Budgets::default(), |_| {}).await;
    let mut routine = analyze_req("env-paused");
    routine.ctx.budget_mode = BudgetMode::Paused;
    let answer = f.model.analyze(&routine).await.expect("an answer");
    assert_eq!(answer.model_id, LOCAL_MODEL_ID);
    assert!(
        answer
            .fallback
            .as_deref()
            .is_some_and(|r| r.contains("paused")),
        "{:?}",
        answer.fallback
    );
    assert_eq!(answer.bedrock_requests, 0);

    // Critical calls too, unless the policy allows them while paused.
    let mut critical = analyze_req("env-paused-critical");
    critical.ctx.budget_mode = BudgetMode::Paused;
    critical.ctx.task.critical = true;
    let answer = f.model.analyze(&critical).await.expect("an answer");
    assert_eq!(answer.model_id, LOCAL_MODEL_ID);
    assert_eq!(f.stub.request_count(), 0);
    assert!(f.reservations().is_empty());

    let allowed = Budgeted::new(Budgets::default(), |s| {
        s.routing.allow_critical_when_paused = true;
    })
    .await;
    allowed.stub.push_for(A, ok_from(A, Role::Analyze));
    let answer = allowed.model.analyze(&critical).await.expect("an answer");
    assert_eq!(answer.model_id, A);
    assert_eq!(allowed.stub.request_count(), 1);
    let answer = allowed.model.analyze(&routine).await.expect("an answer");
    assert_eq!(answer.model_id, LOCAL_MODEL_ID);
    assert_eq!(allowed.stub.request_count(), 1);
}
