//! The cost optimizer's actions: the tick adapts each system's schedule in the registry to the
//! budget mode, and records every change as an audit event.

use chrono::Duration;
use shared::bus::local::Delivery;
use shared::clock::Clock;
use shared::domain::{Body, BudgetMode, EventType, HeadStatus};
use shared::pipeline;
use shared::store::{BudgetState, ControlState, EvolutionStore, Transaction, Write};

use super::helpers::*;

async fn set_mode(h: &Harness, mode: BudgetMode) {
    let expected = h.store.budget_state().await.expect("mode").mode;
    h.store
        .commit(Transaction {
            writes: vec![Write::SetBudgetMode {
                expected,
                state: BudgetState {
                    mode,
                    changed_at: Some(h.home.clock.now()),
                    reason: "test".into(),
                },
            }],
            completion: None,
        })
        .await
        .expect("set mode");
}

/// A stable system whose baseline is measured, so the tick may schedule cycles.
async fn stable(h: &Harness) {
    let evaluator = rises_with_x();
    let opts = shared::local::RunOptions {
        generations: 0,
        ..shared::local::RunOptions::default()
    };
    h.home
        .runner(&evaluator)
        .run(&system_id(), &opts, &shared::local::Silent)
        .await
        .expect("baseline");
    h.home
        .settle(
            &shared::local::RunOptions::default(),
            &shared::local::Silent,
        )
        .await
        .expect("settle");
    drain(h);
}

/// Everything on the bus, delayed messages included.
fn drain(h: &Harness) -> Vec<Delivery> {
    let far = h.home.clock.now() + Duration::days(3650);
    std::iter::from_fn(|| h.home.bus.pop_due(far)).collect()
}

/// Ticks at `at`, runs the tick's per-system step, and returns everything else on the bus.
async fn tick_and_step(h: &Harness, at: chrono::DateTime<chrono::Utc>) -> Vec<Delivery> {
    pipeline::tick(&h.home.deps, h.home.bus.as_ref(), at)
        .await
        .expect("tick");
    let mut rest = Vec::new();
    for delivery in drain(h) {
        if matches!(delivery.outgoing.envelope.body, Body::SystemTick { .. }) {
            pipeline::handle(
                &h.home.deps,
                h.home.bus.as_ref(),
                &delivery.outgoing.envelope,
            )
            .await
            .expect("the tick's step");
            rest.extend(drain(h));
        } else {
            rest.push(delivery);
        }
    }
    rest
}

/// Ticks at `at` and returns how many cycles it requested.
async fn tick(h: &Harness, at: chrono::DateTime<chrono::Utc>) -> usize {
    h.home.clock.advance_to(at);
    tick_and_step(h, at)
        .await
        .into_iter()
        .filter(|d| matches!(d.outgoing.envelope.body, Body::CycleRequested { .. }))
        .count()
}

async fn cost_events(h: &Harness) -> Vec<String> {
    h.store
        .list_events(&system_id(), None, 1000)
        .await
        .expect("events")
        .into_iter()
        .filter(|e| e.event_type == EventType::CostActionApplied)
        .map(|e| e.detail.unwrap_or_default())
        .collect()
}

#[tokio::test]
async fn economy_stretches_paused_stops_and_normal_restores_the_cycles() {
    let h = harness(Scripted::with(vec![]), permissive()).await;
    stable(&h).await;
    let system = h
        .store
        .get_system(&system_id())
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(
        h.store
            .get_head(&system_id())
            .await
            .expect("head")
            .expect("exists")
            .status,
        HeadStatus::Stable
    );
    let base = i64::from(system.settings.cycle_interval_seconds);
    let t0 = h.home.clock.now().max(system.next_cycle_at) + Duration::seconds(1);

    // Normal: a cycle now, the next one an interval later; no action to record.
    assert_eq!(tick(&h, t0).await, 1);
    assert!(cost_events(&h).await.is_empty());
    let next = h
        .store
        .get_system(&system_id())
        .await
        .expect("get")
        .expect("exists")
        .next_cycle_at;
    assert_eq!(next, t0 + Duration::seconds(base));

    // Economy: the registry entry's schedule is stretched four times, recorded once.
    set_mode(&h, BudgetMode::Economy).await;
    let t1 = t0 + Duration::minutes(1);
    assert_eq!(tick(&h, t1).await, 0);
    let system = h
        .store
        .get_system(&system_id())
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(system.cost_mode, BudgetMode::Economy);
    assert_eq!(system.next_cycle_at, t1 + Duration::seconds(4 * base));
    let events = cost_events(&h).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(events[0].contains("economy"), "{events:?}");
    // Where Normal would have cycled, Economy does not; at the stretched time it does.
    assert_eq!(tick(&h, t0 + Duration::seconds(base + 1)).await, 0);
    let t2 = t1 + Duration::seconds(4 * base);
    assert_eq!(tick(&h, t2).await, 1);
    let system = h
        .store
        .get_system(&system_id())
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(system.next_cycle_at, t2 + Duration::seconds(4 * base));
    assert_eq!(
        cost_events(&h).await.len(),
        1,
        "recorded once, not every tick"
    );

    // Paused: no scheduled cycle at all, however late.
    set_mode(&h, BudgetMode::Paused).await;
    let t3 = t2 + Duration::seconds(8 * base);
    assert_eq!(tick(&h, t3).await, 0);
    assert_eq!(tick(&h, t3 + Duration::days(1)).await, 0);
    let events = cost_events(&h).await;
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(events[1].contains("stopped"), "{events:?}");

    // Normal again: the configured interval is back and the overdue cycle runs.
    set_mode(&h, BudgetMode::Normal).await;
    let t4 = t3 + Duration::days(1) + Duration::minutes(1);
    assert_eq!(tick(&h, t4).await, 1);
    let system = h
        .store
        .get_system(&system_id())
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(system.cost_mode, BudgetMode::Normal);
    assert_eq!(system.next_cycle_at, t4 + Duration::seconds(base));
    let events = cost_events(&h).await;
    assert_eq!(events.len(), 3, "{events:?}");
    assert!(events[2].contains("restored"), "{events:?}");
}

#[tokio::test]
async fn paused_still_closes_evaluation_windows() {
    let h = harness(Scripted::with(vec![]), permissive()).await;
    // The baseline evaluation is open and never measured.
    set_mode(&h, BudgetMode::Paused).await;
    let head = h
        .store
        .get_head(&system_id())
        .await
        .expect("head")
        .expect("exists");
    let deadline = head.evaluation.expect("open window").deadline;
    let at = deadline + Duration::minutes(1);
    h.home.clock.advance_to(at);
    let due = tick_and_step(&h, at)
        .await
        .into_iter()
        .filter(|d| matches!(d.outgoing.envelope.body, Body::EvaluationDue { .. }))
        .count();
    assert_eq!(due, 1);
}

/// Money is spent in real time: a local run whose stages follow a simulated clock still judges
/// the budget by the day the ledger recorded the spend in (the money clock's), not the
/// simulated day.
#[tokio::test]
async fn the_sweep_counts_the_budget_of_the_money_clocks_day() {
    use shared::cost::{BudgetLimit, Budgets};
    use shared::domain::{BudgetPeriod, BudgetScope, Envelope};
    use shared::store::Usage;
    use shared::store::{CostLedger, Reservation, Settlement};

    const BUDGET: u64 = 1_000_000;
    let config = shared::stages::PipelineConfig {
        budgets: Budgets {
            global_daily: Some(BUDGET),
            ..permissive().budgets
        },
        ..permissive()
    };
    let h = harness(Scripted::with(vec![]), config).await;
    // The simulated run is months away from the day the money was spent.
    let real_day = h.home.clock.now() + Duration::days(200);
    let home = h
        .home
        .with_money_clock(std::sync::Arc::new(shared::clock::SimClock::new(real_day)));
    let limit = BudgetLimit {
        scope: BudgetScope::Global,
        period: BudgetPeriod::Day,
        limit_nano: BUDGET,
    };
    let reservation = Reservation {
        call_id: "call-1".into(),
        system_id: system_id(),
        model_id: "m".into(),
        amount_nano: BUDGET,
        at: real_day,
        limits: vec![limit],
    };
    h.store.reserve(&reservation).await.expect("reserve");
    h.store
        .settle(&Settlement {
            call_id: "call-1".into(),
            system_id: system_id(),
            model_id: "m".into(),
            reserved_nano: BUDGET,
            reserved_at: real_day,
            actual_nano: BUDGET,
            usage: Usage::default(),
            at: real_day,
        })
        .await
        .expect("settle");
    let sweep = Envelope {
        id: "sweep-1".into(),
        causation_id: String::new(),
        system_id: shared::domain::SystemId::global(),
        base_generation: 0,
        sent_at: home.clock.now(),
        traceparent: None,
        body: Body::BudgetSweep {},
    };
    pipeline::handle(&home.deps, home.bus.as_ref(), &sweep)
        .await
        .expect("sweep");
    assert_eq!(
        h.store.budget_state().await.expect("mode").mode,
        BudgetMode::Paused,
        "the sweep judged the simulated day, where nothing was spent"
    );
}
