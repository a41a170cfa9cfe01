//! End to end on moto's DynamoDB, S3, SQS and SNS with the Bedrock stub as the LLM: the tick
//! starts a cycle, an analysis becomes a plan, the plan's step is decided and committed as a new
//! generation, the running system receives `DnaUpdated` through its SQS subscription and reports
//! fitness, the generation is kept; in the next cycle a regression is rolled back and
//! `DnaRolledBack` goes out. Then the same run with every message delivered twice and shuffled,
//! a poisoned batch, and a budget that runs out.

mod world;

use serde_json::Value;
use shared::cost::BudgetLimit;
use shared::domain::{
    BudgetMode, BudgetPeriod, BudgetScope, EvaluationOutcome, HeadStatus, Queue, Role,
};
use shared::engine::LOCAL_MODEL_ID;
use shared::store::{ControlState, EvolutionStore, Usage};
use shared::store::{CostLedger, Reservation, Settlement};
use world::{Options, SYSTEM, World, system_id};

/// Baseline 10; the first mutation improves (20); every later one regresses.
fn score(generation: u64) -> f64 {
    match generation {
        0 => 10.0,
        1 => 20.0,
        _ => 5.0,
    }
}

/// Runs cycles until the running system has seen a rollback.
async fn keep_then_rollback(world: &mut World) {
    world.init().await;
    world.report_baseline(score(0)).await;
    world.tick().await;
    for _ in 0..60 {
        world.round(&score).await;
        if world
            .dna_messages
            .iter()
            .any(|m| m["type"] == "DnaRolledBack")
        {
            return;
        }
    }
    panic!(
        "no rollback after 60 rounds; DNA messages: {:?}",
        world.dna_messages
    );
}

/// What must be equal after a run, whatever the deliveries: (head generation, its checksum,
/// events, decisions, closed evaluations, ledger entries).
async fn summary(w: &World) -> (u64, String, usize, usize, usize, usize) {
    let id = system_id();
    let head = w.store.get_head(&id).await.expect("head").expect("exists");
    let genes = w
        .store
        .get_generation(&id, head.generation)
        .await
        .expect("read")
        .expect("head generation")
        .checksum;
    let events = w.store.list_events(&id, None, 1000).await.expect("events");
    let decisions = w
        .store
        .list_decisions(&id, None, 1000)
        .await
        .expect("decisions");
    let history = w.store.list_history(&id, 1000).await.expect("history");
    let ledger = w.store.entries(None).await.expect("ledger");
    (
        head.generation,
        genes,
        events.len(),
        decisions.len(),
        history.len(),
        ledger.len(),
    )
}

/// The fields of the seed's schema fixtures.
fn seed_fields(fixture: &str) -> Vec<String> {
    let v: Value = serde_json::from_str(fixture).expect("fixture");
    v.as_object().expect("object").keys().cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cycle_keeps_an_improvement_and_rolls_back_a_regression() {
    let mut world = World::new(Options::default()).await;
    keep_then_rollback(&mut world).await;
    let store = &world.store;
    let id = system_id();

    // What the running system received through its subscription.
    let types: Vec<&str> = world
        .dna_messages
        .iter()
        .filter_map(|m| m["type"].as_str())
        .collect();
    assert_eq!(types.first(), Some(&"DnaUpdated"), "{types:?}");
    assert!(types.contains(&"DnaRolledBack"), "{types:?}");
    let rolled = world
        .dna_messages
        .iter()
        .find(|m| m["type"] == "DnaRolledBack")
        .expect("rollback message");
    assert_eq!(rolled["restored_generation"], 1);
    // The Rollback Manager's rollback restores measured genes: nothing waits for a report.
    assert_eq!(rolled["measure"], false, "{rolled}");

    let head = store.get_head(&id).await.expect("head").expect("exists");
    assert_eq!(head.status, HeadStatus::Stable);
    assert_eq!(head.stable_fitness, Some(20.0));
    let history = store.list_history(&id, 10).await.expect("history");
    let outcomes: Vec<EvaluationOutcome> = history.iter().map(|h| h.outcome).collect();
    assert_eq!(
        outcomes,
        vec![
            EvaluationOutcome::Keep,
            EvaluationOutcome::Keep,
            EvaluationOutcome::Rollback
        ]
    );
    let restored = store
        .get_generation(&id, head.generation)
        .await
        .expect("read")
        .expect("rollback generation");
    let kept = store
        .get_generation(&id, 1)
        .await
        .expect("read")
        .expect("gen 1");
    assert_eq!(restored.genes, kept.genes);
    assert_eq!(restored.checksum, kept.checksum);

    // DynamoDB and S3 hold records in the seed's schemas, every index with its body.
    let events = store.list_events(&id, None, 100).await.expect("events");
    let event_fields = seed_fields(include_str!("../../data/seed_evolution_event.json"));
    for e in &events {
        let v = serde_json::to_value(e).expect("JSON");
        for f in ["id", "timestamp", "type", "generation"] {
            assert!(v.get(f).is_some(), "event lacks {f}: {v}");
        }
        // Beyond the seed's schema: the system, the detail, and the trace and message that
        // recorded the event (docs/architecture.md, "Tracing").
        for key in v.as_object().expect("object").keys() {
            assert!(
                event_fields.contains(key)
                    || ["system_id", "detail", "trace_id", "message_id"].contains(&key.as_str()),
                "unexpected event field {key}"
            );
        }
        // Every event but the creation (an operator's action, not a message) names its trace.
        if v["type"] != "system_created" {
            assert_eq!(v["trace_id"].as_str().map(str::len), Some(32), "{v}");
        }
    }
    let bodies = world.s3_event_bodies().await;
    assert_eq!(bodies.len(), events.len(), "{bodies:?}");
    let decisions = store
        .list_decisions(&id, None, 100)
        .await
        .expect("decisions");
    assert!(decisions.len() >= 2);
    for d in &decisions {
        let v = serde_json::to_value(d).expect("JSON");
        for f in seed_fields(include_str!("../../data/seed_bedrock_decision.json")) {
            assert!(v.get(&f).is_some(), "decision lacks {f}: {v}");
        }
    }
    let calls = store.list_llm_calls(Some(&id), None).await.expect("calls");
    assert!(
        calls
            .iter()
            .any(|c| c.role == Role::Analyze && c.bedrock_requests > 0)
    );
    assert!(world.stub.request_count() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_twice_and_shuffled_ends_the_same_with_no_duplicates() {
    let mut once = World::new(Options::default()).await;
    keep_then_rollback(&mut once).await;
    let mut twice = World::new(Options {
        twice: true,
        ..Options::default()
    })
    .await;
    keep_then_rollback(&mut twice).await;
    let id = system_id();

    let a = summary(&once).await;
    let b = summary(&twice).await;
    assert_eq!(
        a, b,
        "(generation, checksum, events, decisions, history, ledger entries)"
    );

    // Event and decision ids are unique: nothing was written twice.
    let events = twice
        .store
        .list_events(&id, None, 1000)
        .await
        .expect("events");
    let mut ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), events.len());

    // A stale proposal (made against an old generation) is an acknowledged no-op.
    let stale = twice
        .earlier("MutationProposed")
        .expect("a proposal was delivered");
    let decisions_before = twice
        .store
        .list_decisions(&id, None, 1000)
        .await
        .expect("d")
        .len();
    let mut copy = stale.clone();
    copy.id = format!("{}-late", stale.id);
    twice
        .send(Queue::Decide, &serde_json::to_string(&copy).expect("JSON"))
        .await;
    let response = twice.deliver(Queue::Decide).await.expect("delivered");
    assert_eq!(response["batchItemFailures"], Value::Array(vec![]));
    assert_eq!(
        twice
            .store
            .list_decisions(&id, None, 1000)
            .await
            .expect("d")
            .len(),
        decisions_before
    );
    assert!(twice.dead_letters(Queue::Decide).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poisoned_record_goes_to_the_dlq_with_its_reason_and_the_rest_of_its_batch_succeeds() {
    let mut world = World::new(Options::default()).await;
    world.init().await;
    world.report_baseline(score(0)).await;
    world.send(Queue::Fitness, "{\"this is\": not json").await;
    let response = world.deliver(Queue::Fitness).await.expect("delivered");
    assert_eq!(
        response["batchItemFailures"],
        Value::Array(vec![]),
        "{response}"
    );
    let dead = world.dead_letters(Queue::Fitness).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].0, "{\"this is\": not json");
    assert!(dead[0].1.contains("malformed"), "reason: {}", dead[0].1);
    // The good record of the same batch closed the baseline.
    let head = world
        .store
        .get_head(&system_id())
        .await
        .expect("head")
        .expect("exists");
    assert_eq!(head.stable_fitness, Some(10.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_budget_pauses_llm_use_and_alerts_within_one_cost_guard_run() {
    const BUDGET: u64 = 1_000_000;
    let mut world = World::new(Options {
        daily_budget_nano: Some(BUDGET),
        ..Options::default()
    })
    .await;
    world.init().await;
    // Spend that crosses 100% of the daily budget, as settled calls would.
    let now = chrono::Utc::now();
    let limit = BudgetLimit {
        scope: BudgetScope::Global,
        period: BudgetPeriod::Day,
        limit_nano: BUDGET,
    };
    let reservation = Reservation {
        call_id: "call-spent".into(),
        system_id: system_id(),
        model_id: "us.amazon.nova-micro-v1:0".into(),
        amount_nano: BUDGET,
        at: now,
        limits: vec![limit],
    };
    world.store.reserve(&reservation).await.expect("reserve");
    world
        .store
        .settle(&Settlement {
            call_id: reservation.call_id.clone(),
            system_id: system_id(),
            model_id: reservation.model_id.clone(),
            reserved_nano: BUDGET,
            reserved_at: now,
            actual_nano: BUDGET,
            usage: Usage::default(),
            at: now,
        })
        .await
        .expect("settle");
    let crossed = serde_json::json!({
        "id": "budget-crossed-1", "system_id": SYSTEM, "sent_at": now.to_rfc3339(),
        "type": "BudgetThresholdCrossed", "scope": "global", "period": "day", "percent": 100,
    });
    world.send(Queue::CostGuard, &crossed.to_string()).await;
    world
        .deliver(Queue::CostGuard)
        .await
        .expect("one cost-guard run");
    let state = world.store.budget_state().await.expect("budget state");
    assert_eq!(state.mode, BudgetMode::Paused);
    let alerts = world.inbox().await;
    assert!(
        alerts
            .iter()
            .any(|a| a["type"] == "AlertRaised" && a["alert"]["kind"] == "budget_mode"),
        "{alerts:?}"
    );

    // The next non-critical role call (an analysis) is answered by the local engine.
    world.report_baseline(score(0)).await;
    world
        .deliver(Queue::Fitness)
        .await
        .expect("baseline closed");
    world
        .deliver(Queue::Analyze)
        .await
        .expect("cycle requested");
    let calls = world
        .store
        .list_llm_calls(Some(&system_id()), None)
        .await
        .expect("calls");
    let analysis = calls
        .iter()
        .find(|c| c.role == Role::Analyze)
        .expect("an analysis call");
    assert_eq!(analysis.model_id, LOCAL_MODEL_ID);
    assert!(analysis.fallback.is_some());
    assert_eq!(
        world.stub.request_count(),
        0,
        "no Bedrock request while paused"
    );
}

/// The approval gate on the deployed shape: decide holds the approval and alerts, nothing moves
/// until an operator's message arrives on the decide queue, then the mutation is applied and the
/// audit trail names the operator's AWS identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_approval_waits_for_the_operators_message_on_the_decide_queue() {
    let mut world = World::new(Options {
        approval_threshold: Some(0.0),
        ..Options::default()
    })
    .await;
    let id = system_id();
    world.init().await;
    world.report_baseline(score(0)).await;
    world.tick().await;
    let mut pending = None;
    for _ in 0..30 {
        world.round(&score).await;
        let head = world
            .store
            .get_head(&id)
            .await
            .expect("head")
            .expect("exists");
        if head.status == HeadStatus::AwaitingApproval {
            pending = head.approval;
            break;
        }
    }
    let pending = pending.expect("decide held an approval");
    let alerts = world.inbox().await;
    assert!(
        alerts.iter().any(|a| a["alert"]["kind"] == "approval"
            && a["alert"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(&pending.decision_id))),
        "{alerts:?}"
    );

    // Nothing moves while it waits.
    for _ in 0..3 {
        world.round(&score).await;
    }
    let head = world
        .store
        .get_head(&id)
        .await
        .expect("head")
        .expect("exists");
    assert_eq!(head.status, HeadStatus::AwaitingApproval);
    assert_eq!(head.generation, 0);

    let approver = "arn:aws:sts::123456789012:assumed-role/operators/alice";
    let verdict = serde_json::json!({
        "id": "op-approve-1",
        "system_id": SYSTEM,
        "base_generation": 0,
        "sent_at": chrono::Utc::now().to_rfc3339(),
        "type": "ApprovalGiven",
        "decision_id": pending.decision_id,
        "approve": true,
        "approver": approver,
        "note": "change window open",
    });
    world.send(Queue::Decide, &verdict.to_string()).await;
    for _ in 0..10 {
        world.round(&score).await;
        let head = world
            .store
            .get_head(&id)
            .await
            .expect("head")
            .expect("exists");
        if head.generation >= 1 {
            break;
        }
    }
    let head = world
        .store
        .get_head(&id)
        .await
        .expect("head")
        .expect("exists");
    assert!(
        head.generation >= 1,
        "the approved mutation was not applied: {head:?}"
    );
    let decisions = world
        .store
        .list_decisions(&id, None, 100)
        .await
        .expect("decisions");
    let resolution = decisions
        .iter()
        .find(|d| d.resolves.as_deref() == Some(pending.decision_id.as_str()))
        .expect("the approval record");
    assert_eq!(resolution.approver.as_deref(), Some(approver));
    assert!(resolution.reasoning.contains("change window open"));
}

/// The cost optimizer on the deployed shape: with the budget mode in control state on
/// DynamoDB, the analyze function's tick stretches, stops and restores the system's cycles in
/// the registry, and each change is an event in the audit trail (index in DynamoDB, body in S3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cost_actions_change_the_registry_and_are_audited() {
    use shared::domain::EventType;
    use shared::store::{BudgetState, Transaction, Write};

    let mut world = World::new(Options::default()).await;
    let id = system_id();
    world.init().await;
    world.report_baseline(score(0)).await;
    world.deliver(Queue::Fitness).await;
    let head = world
        .store
        .get_head(&id)
        .await
        .expect("head")
        .expect("exists");
    assert_eq!(head.status, HeadStatus::Stable);
    let base = i64::from(
        world
            .store
            .get_system(&id)
            .await
            .expect("get")
            .expect("exists")
            .settings
            .cycle_interval_seconds,
    );
    let set_mode = |mode: BudgetMode| {
        let store = world.store.clone();
        async move {
            let expected = store.budget_state().await.expect("mode").mode;
            store
                .commit(Transaction {
                    writes: vec![Write::SetBudgetMode {
                        expected,
                        state: BudgetState {
                            mode,
                            changed_at: Some(chrono::Utc::now()),
                            reason: "test".into(),
                        },
                    }],
                    completion: None,
                })
                .await
                .expect("set mode");
        }
    };
    let overdue = || {
        let store = world.store.clone();
        let id = id.clone();
        async move {
            let mut system = store.get_system(&id).await.expect("get").expect("exists");
            system.next_cycle_at = chrono::Utc::now() - chrono::Duration::minutes(5);
            store
                .commit(Transaction {
                    writes: vec![Write::PutSystem { system }],
                    completion: None,
                })
                .await
                .expect("due");
        }
    };
    let minute = |k: i64| chrono::Utc::now() + chrono::Duration::minutes(k);

    set_mode(BudgetMode::Economy).await;
    let before = chrono::Utc::now();
    world.tick_scheduled(minute(1)).await;
    let system = world
        .store
        .get_system(&id)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(system.cost_mode, BudgetMode::Economy);
    assert!(
        system.next_cycle_at >= before + chrono::Duration::seconds(4 * base),
        "stretched: {system:?}"
    );

    set_mode(BudgetMode::Paused).await;
    overdue().await;
    world.tick_scheduled(minute(2)).await;
    world.tick_scheduled(minute(3)).await;
    let system = world
        .store
        .get_system(&id)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(system.cost_mode, BudgetMode::Paused);
    assert!(
        system.next_cycle_at < chrono::Utc::now(),
        "no cycle while paused"
    );

    set_mode(BudgetMode::Normal).await;
    let before = chrono::Utc::now();
    world.tick_scheduled(minute(4)).await;
    let system = world
        .store
        .get_system(&id)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(system.cost_mode, BudgetMode::Normal);
    assert!(
        system.next_cycle_at >= before + chrono::Duration::seconds(base)
            && system.next_cycle_at < before + chrono::Duration::seconds(2 * base),
        "the overdue cycle ran and the configured interval is back: {system:?}"
    );

    let events: Vec<_> = world
        .store
        .list_events(&id, None, 1000)
        .await
        .expect("events")
        .into_iter()
        .filter(|e| e.event_type == EventType::CostActionApplied)
        .collect();
    let keys = world.s3_event_bodies().await;
    for e in &events {
        assert!(
            keys.iter().any(|k| k.ends_with(&format!("/{}.json", e.id))),
            "{} has no body in S3: {keys:?}",
            e.id
        );
    }
    let actions: Vec<String> = events.into_iter().filter_map(|e| e.detail).collect();
    assert_eq!(actions.len(), 3, "{actions:?}");
    assert!(actions[0].contains("economy"), "{actions:?}");
    assert!(actions[1].contains("stopped"), "{actions:?}");
    assert!(actions[2].contains("restored"), "{actions:?}");
}
