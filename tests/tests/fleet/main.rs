//! A fleet on one stack: the tick and the budget sweep with a thousand systems on moto's
//! DynamoDB, S3 and SQS, through the real SDK clients. Neither may put the fleet into one
//! transaction (DynamoDB takes at most 100 items), and both must act on every system exactly
//! once however often they run.

mod world;

use shared::domain::{Body, BudgetMode, EventType, Queue};
use shared::stages::REGISTRY_PAGE;
use shared::store::EvolutionStore;

use world::{Fleet, minute};

const FLEET: usize = 1_000;
/// Per-system messages delivered a second time.
const REDELIVERED: usize = 100;

/// One tick with a thousand systems due starts every cycle exactly once; the same tick again
/// (the scheduler retries) and the same per-system messages again (SQS redelivers) start none;
/// a budget-mode change then reaches every system.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tick_reaches_each_of_a_thousand_systems_exactly_once() {
    let fleet = Fleet::new(FLEET).await;
    let at = minute(0);

    let first = fleet.tick(at).await;
    assert_eq!(
        first, "processed",
        "the tick's own commit is one small item"
    );
    let steps = fleet.drain_steps().await;
    assert_eq!(steps.processed, FLEET, "one step per system: {steps:?}");
    // The tick's invocation read one page; each later page came as a message of its own (after
    // a full last page, one more finds the registry's end).
    assert_eq!(steps.pages, FLEET / REGISTRY_PAGE, "{steps:?}");
    let cycles = fleet.sent_of("CycleRequested");
    assert_eq!(cycles.len(), FLEET, "every due system gets one cycle");
    let mut systems: Vec<_> = cycles.iter().map(|e| e.system_id.clone()).collect();
    systems.sort();
    systems.dedup();
    assert_eq!(systems.len(), FLEET, "no system gets two cycles");
    for system in fleet.store.list_systems().await.expect("registry") {
        assert!(
            system.next_cycle_at > at,
            "{} was not rescheduled",
            system.system_id
        );
    }

    // The scheduler delivers the same tick again, and SQS delivers steps again.
    assert_eq!(fleet.tick(at).await, "duplicate");
    let redelivered = fleet.redeliver_steps(REDELIVERED).await;
    let again = fleet.drain_steps().await;
    assert_eq!(again.duplicates, redelivered, "{again:?}");
    assert_eq!(again.processed, 0, "{again:?}");
    assert_eq!(fleet.sent_of("CycleRequested").len(), FLEET, "no new cycle");

    // Economy: the next tick applies the cost action to every system, once.
    fleet.set_mode(BudgetMode::Economy, minute(1)).await;
    assert_eq!(fleet.tick(minute(1)).await, "processed");
    let steps = fleet.drain_steps().await;
    assert_eq!(steps.processed, FLEET, "{steps:?}");
    let systems = fleet.store.list_systems().await.expect("registry");
    assert_eq!(systems.len(), FLEET);
    for system in &systems {
        assert_eq!(
            system.cost_mode,
            BudgetMode::Economy,
            "{}",
            system.system_id
        );
    }
    for system in systems.iter().step_by(FLEET / 20) {
        let events = fleet
            .store
            .list_events(&system.system_id, None, 10)
            .await
            .expect("events");
        let actions = events
            .iter()
            .filter(|e| e.event_type == EventType::CostActionApplied)
            .count();
        assert_eq!(actions, 1, "{}", system.system_id);
    }
    // No cycle is due in Economy yet: the stretched interval moved every next cycle on.
    assert_eq!(fleet.sent_of("CycleRequested").len(), FLEET);
}

/// More systems over their own budget than one transaction could alert: each is alerted once
/// for the day, and the sweeps of the following minutes alert none again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_system_over_its_budget_is_alerted_once_per_period() {
    const OVER: usize = 150;
    let fleet = Fleet::with_system_budget(OVER, 1_000).await;
    fleet.spend_on_each(2_000).await;

    for k in 0..3 {
        fleet.sweep(minute(k)).await;
        fleet.drain(Queue::CostGuard, "SystemOverBudget").await;
    }
    let alerts = fleet.sent_of("AlertRaised");
    let mut alerted: Vec<_> = alerts
        .iter()
        .filter_map(|e| match &e.body {
            Body::AlertRaised { alert } if alert.kind == "system_budget" => alert.system_id.clone(),
            _ => None,
        })
        .collect();
    assert_eq!(
        alerted.len(),
        OVER,
        "one alert per system over three sweeps"
    );
    alerted.sort();
    alerted.dedup();
    assert_eq!(alerted.len(), OVER);
    let stored = fleet.store.list_alerts(None, 10_000).await.expect("alerts");
    assert_eq!(
        stored.iter().filter(|a| a.kind == "system_budget").count(),
        OVER
    );
}
