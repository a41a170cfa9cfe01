//! The pipeline's contract (docs/architecture.md, "Exactly once" and "Message flow") exercised through the real stages, the
//! real pipeline and the in-memory store.

mod approval;
mod cost_actions;
mod helpers;
mod judging;
mod replay;
mod resume;

use chrono::Duration;
use helpers::*;
use shared::bus::Bus;
use shared::domain::{
    Body, CycleReason, Destination, Envelope, EvaluationOutcome, GeneValue, HeadStatus, Origin,
    Outgoing, Queue, Recommendation, ReplanReason, Topic, derive_id, genes_from_json,
};
use shared::evaluator::Evaluator;
use shared::local::{RunOptions, Silent};
use shared::pipeline::{self, Handled, PipelineError};
use shared::stages::PipelineConfig;
use shared::store::EvolutionStore;

/// Delivers messages one at a time until `stop` matches a handled envelope; plays the running
/// system on `DnaUpdated` like the local runner does.
async fn pump(
    h: &Harness,
    evaluator: &dyn Evaluator,
    stop: impl Fn(&Envelope) -> bool,
) -> (Envelope, Result<Handled, PipelineError>) {
    for _ in 0..200 {
        let far = h.home.clock.now_plus(Duration::days(1));
        let d = h.home.bus.pop_due(far).expect("a message is pending");
        h.home
            .clock
            .advance_to(h.home.clock.now_plus(Duration::seconds(1)));
        let env = d.outgoing.envelope.clone();
        match d.outgoing.destination {
            Destination::Queue(q) => {
                let result = pipeline::handle_raw(
                    &h.home.deps,
                    h.home.bus.as_ref(),
                    q,
                    &serde_json::to_string(&env).expect("json"),
                )
                .await;
                if stop(&env) {
                    return (env, result);
                }
                result.expect("handled");
            }
            Destination::Topic(Topic::EvolutionEvents) => {
                if let Body::DnaUpdated {
                    generation,
                    genes,
                    checksum,
                    ..
                } = &env.body
                {
                    report(h, evaluator, &env, *generation, genes, checksum).await;
                }
            }
            Destination::Topic(Topic::Alerts) => {}
        }
    }
    panic!("stop condition never met");
}

async fn report(
    h: &Harness,
    evaluator: &dyn Evaluator,
    cause: &Envelope,
    generation: u64,
    genes: &serde_json::Value,
    checksum: &str,
) {
    let (schema, _) = dna();
    let genes = genes_from_json(&schema, genes).expect("genes");
    let score = evaluator.evaluate(&genes).await.ok();
    let env = Envelope::caused_by(
        &cause.id,
        None,
        "test-subscriber",
        0,
        cause.system_id.clone(),
        generation,
        h.home.clock.now_plus(Duration::zero()),
        Body::FitnessReported {
            generation,
            checksum: checksum.to_owned(),
            score: score.as_ref().map(|s| s.score),
            metrics: std::collections::BTreeMap::default(),
            error: score.is_none().then(|| "failed".to_owned()),
            cohort: None,
        },
    );
    h.home.bus.send(&[Outgoing::new(env)]).await.expect("send");
}

/// The baseline measurement that `init` leaves waiting: measured, reported and closed.
async fn measure_baseline(h: &Harness, evaluator: &dyn Evaluator) {
    let opts = RunOptions {
        generations: 0,
        ..RunOptions::default()
    };
    h.home
        .runner(evaluator)
        .run(&system_id(), &opts, &Silent)
        .await
        .expect("baseline");
    let (_, result) = pump(h, evaluator, |e| {
        matches!(e.body, Body::FitnessReported { .. })
    })
    .await;
    result.expect("baseline closed");
}

trait ClockExt {
    fn now_plus(&self, d: Duration) -> chrono::DateTime<chrono::Utc>;
}
impl ClockExt for shared::clock::SimClock {
    fn now_plus(&self, d: Duration) -> chrono::DateTime<chrono::Utc> {
        shared::clock::Clock::now(self) + d
    }
}

async fn run(h: &Harness, evaluator: &dyn Evaluator, generations: u32) -> shared::local::RunReport {
    let opts = RunOptions {
        generations,
        ..RunOptions::default()
    };
    h.home
        .runner(evaluator)
        .run(&system_id(), &opts, &Silent)
        .await
        .expect("run")
}

#[tokio::test]
async fn duplicate_message_is_acknowledged_without_reapplying() {
    let h = harness(
        Scripted::with(vec![strategy(vec![step("a", "x", 60)])]),
        permissive(),
    )
    .await;
    let eval = rises_with_x();
    measure_baseline(&h, &eval).await;
    let (approved, result) = pump(&h, &eval, |e| {
        matches!(e.body, Body::MutationApproved { .. })
    })
    .await;
    assert!(
        matches!(result, Ok(Handled::Processed { .. })),
        "{result:?}"
    );
    let generations = h
        .store
        .list_generations(&system_id(), None, 100)
        .await
        .expect("list");
    let again = pipeline::handle(&h.home.deps, h.home.bus.as_ref(), &approved).await;
    // Its outbox was sent the first time: nothing is sent again, so nothing downstream replays.
    assert_eq!(
        again.expect("duplicate is fine"),
        Handled::Duplicate { resent: 0 }
    );
    let after = h
        .store
        .list_generations(&system_id(), None, 100)
        .await
        .expect("list");
    assert_eq!(generations, after, "a duplicate must not add a generation");
}

#[tokio::test]
async fn stale_proposal_is_a_no_op() {
    let h = harness(
        Scripted::with(vec![strategy(vec![step("a", "x", 60)])]),
        permissive(),
    )
    .await;
    let eval = rises_with_x();
    measure_baseline(&h, &eval).await;
    let (approved, _) = pump(&h, &eval, |e| {
        matches!(e.body, Body::MutationApproved { .. })
    })
    .await;
    let Body::MutationApproved { mutation, .. } = approved.body.clone() else {
        unreachable!()
    };
    let decisions = h
        .store
        .list_decisions(&system_id(), None, 100)
        .await
        .expect("list");
    let head = h
        .store
        .get_head(&system_id())
        .await
        .expect("head")
        .expect("exists");
    assert_eq!(head.generation, 1);
    // A proposal made against generation 0, delivered after generation 1 was committed.
    let stale = Envelope {
        id: "msg_stale_proposal".into(),
        causation_id: "test".into(),
        system_id: system_id(),
        base_generation: 0,
        sent_at: approved.sent_at,
        traceparent: None,
        body: Body::MutationProposed {
            mutation,
            deferrals: 0,
        },
    };
    let handled = pipeline::handle(&h.home.deps, h.home.bus.as_ref(), &stale)
        .await
        .expect("handled");
    assert!(
        matches!(handled, Handled::Processed { ref summary, sent: 0, .. } if summary.starts_with("no-op")),
        "{handled:?}"
    );
    assert_eq!(
        decisions,
        h.store
            .list_decisions(&system_id(), None, 100)
            .await
            .expect("list")
    );
    assert_eq!(
        head,
        h.store
            .get_head(&system_id())
            .await
            .expect("head")
            .expect("exists")
    );
}

#[tokio::test]
async fn outbox_resends_after_a_crash_between_commit_and_send() {
    let h = harness(
        Scripted::with(vec![strategy(vec![step("a", "x", 60)])]),
        permissive(),
    )
    .await;
    let eval = rises_with_x();
    measure_baseline(&h, &eval).await;
    // The baseline closed and asked for a cycle: the analyze stage commits, then "crashes"
    // before its messages leave.
    h.home.bus.fail_next_sends(1);
    let (cycle, result) = pump(&h, &eval, |e| matches!(e.body, Body::CycleRequested { .. })).await;
    assert!(
        matches!(result, Err(PipelineError::Retryable(_))),
        "{result:?}"
    );
    assert_eq!(h.llm.analyses(), 1, "the analysis ran and was committed");
    assert_eq!(h.home.bus.pending(), 0, "nothing was sent");
    // The redelivery finds the completed record and sends the stored messages.
    let again = pipeline::handle(&h.home.deps, h.home.bus.as_ref(), &cycle)
        .await
        .expect("redelivery succeeds");
    assert_eq!(again, Handled::Duplicate { resent: 1 });
    assert_eq!(h.llm.analyses(), 1, "the LLM is not asked again");
    let next = h
        .home
        .bus
        .pop_due(cycle.sent_at + Duration::days(1))
        .expect("sent now");
    assert!(matches!(
        next.outgoing.envelope.body,
        Body::AnalysisReady { .. }
    ));
}

#[tokio::test]
async fn a_publish_refused_after_the_commit_is_resent_from_the_outbox_not_dead_lettered() {
    let h = harness(
        Scripted::with(vec![strategy(vec![step("a", "x", 60)])]),
        permissive(),
    )
    .await;
    let eval = rises_with_x();
    measure_baseline(&h, &eval).await;
    // Decide approves; snapshot applies the mutation, commits, and SNS refuses its DnaUpdated.
    let (_, decided) = pump(&h, &eval, |e| {
        matches!(e.body, Body::MutationProposed { .. })
    })
    .await;
    decided.expect("decided");
    let approved = h
        .home
        .bus
        .pop_due(h.home.clock.now_plus(Duration::days(1)))
        .expect("the approval is pending")
        .outgoing
        .envelope;
    assert!(
        matches!(approved.body, Body::MutationApproved { .. }),
        "{approved:?}"
    );
    h.home.bus.refuse_next_publishes(1);
    let result = pipeline::handle(&h.home.deps, h.home.bus.as_ref(), &approved).await;
    assert!(
        matches!(result, Err(PipelineError::Retryable(_))),
        "a committed transaction's refused publish is retried, never dead-lettered: {result:?}"
    );
    assert_eq!(h.home.bus.pending(), 0, "nothing was sent");
    let head = h
        .store
        .get_head(&system_id())
        .await
        .expect("head")
        .expect("exists");
    assert_eq!(head.generation, 1, "the mutation was committed");

    // The redelivery finds the completed record and publishes what it stored.
    let again = pipeline::handle(&h.home.deps, h.home.bus.as_ref(), &approved)
        .await
        .expect("redelivery succeeds");
    assert!(
        matches!(again, Handled::Duplicate { resent } if resent > 0),
        "{again:?}"
    );
    let mut published = Vec::new();
    while let Some(d) = h.home.bus.pop_due(h.home.clock.now_plus(Duration::days(1))) {
        published.push(d.outgoing);
    }
    assert!(
        published.iter().any(
            |m| m.destination == Destination::Topic(Topic::EvolutionEvents)
                && matches!(m.envelope.body, Body::DnaUpdated { generation: 1, .. })
        ),
        "{published:?}"
    );
}

#[tokio::test]
async fn exhausted_plan_triggers_a_new_analysis() {
    let h = harness(
        Scripted::with(vec![
            strategy(vec![step("a", "x", 60), step("b", "x", 70)]),
            strategy(vec![step("c", "x", 80)]),
        ]),
        permissive(),
    )
    .await;
    let report = run(&h, &rises_with_x(), 3).await;
    assert_eq!(report.generations, 3);
    assert_eq!(h.llm.analyses(), 2);
    let cursor = h
        .store
        .get_cursor(&system_id())
        .await
        .expect("cursor")
        .expect("exists");
    assert_eq!(cursor.last_replan, Some(ReplanReason::Exhausted));
    let head = h
        .store
        .get_head(&system_id())
        .await
        .expect("head")
        .expect("exists");
    assert_eq!(head.stable_fitness, Some(80.0));
}

#[tokio::test]
async fn rolled_back_step_without_contingency_triggers_a_new_plan() {
    let h = harness(
        Scripted::with(vec![
            strategy(vec![step("down", "x", 40), step("never", "x", 45)]),
            strategy(vec![step("up", "x", 60)]),
        ]),
        permissive(),
    )
    .await;
    let report = run(&h, &rises_with_x(), 2).await;
    assert_eq!(report.rollbacks, 1);
    let cursor = h
        .store
        .get_cursor(&system_id())
        .await
        .expect("cursor")
        .expect("exists");
    assert_eq!(
        cursor.last_replan,
        Some(ReplanReason::RolledBack { step: 0 })
    );
    let history = h
        .store
        .list_history(&system_id(), 10)
        .await
        .expect("history");
    let changed: Vec<i64> = history
        .iter()
        .flat_map(|e| e.changes.iter())
        .map(|c| match c.value {
            GeneValue::Int(v) => v,
            _ => -1,
        })
        .collect();
    assert_eq!(
        changed,
        vec![40, 60],
        "step `never` was abandoned with its plan"
    );
}

#[tokio::test]
async fn rolled_back_step_with_contingency_tries_the_contingency() {
    let mut plan = strategy(vec![step("down", "x", 40), step("later", "y", 60)]);
    let mut up = step("up", "x", 60);
    up.contingency_for = Some("down".into());
    plan.contingency_mutations.push(up);
    let h = harness(Scripted::with(vec![plan]), permissive()).await;
    let report = run(&h, &rises_with_x(), 3).await;
    assert_eq!(
        h.llm.analyses(),
        1,
        "no re-plan: the contingency covered the rollback"
    );
    assert_eq!(report.rollbacks, 1);
    let history = h
        .store
        .list_history(&system_id(), 10)
        .await
        .expect("history");
    let outcomes: Vec<_> = history.iter().skip(1).map(|e| e.outcome).collect();
    assert_eq!(
        outcomes,
        vec![
            EvaluationOutcome::Rollback,
            EvaluationOutcome::Keep,
            EvaluationOutcome::Keep
        ]
    );
}

#[tokio::test]
async fn operator_rollback_during_a_plan_is_divergence() {
    let h = harness(
        Scripted::with(vec![
            strategy(vec![
                step("a", "x", 60),
                step("b", "x", 70),
                step("c", "x", 80),
            ]),
            strategy(vec![step("d", "y", 60)]),
        ]),
        permissive(),
    )
    .await;
    let eval = rises_with_x();
    run(&h, &eval, 1).await;
    // The run stopped with step b in flight; an operator rolls back generation 1.
    let head = h
        .store
        .get_head(&system_id())
        .await
        .expect("head")
        .expect("exists");
    let rollback = Envelope {
        id: "msg_operator_rollback".into(),
        causation_id: "operator".into(),
        system_id: system_id(),
        base_generation: head.generation,
        sent_at: head.updated_at,
        traceparent: None,
        body: Body::RollbackRequested {
            to_generation: Some(0),
            requested_by: "test".into(),
            reason: "manual".into(),
        },
    };
    // Let in-flight messages settle first, so the rollback lands on a stable head.
    let report = run(&h, &eval, 1).await;
    assert_eq!(report.generations, 1);
    let head = h
        .store
        .get_head(&system_id())
        .await
        .expect("head")
        .expect("exists");
    let rollback = Envelope {
        base_generation: head.generation,
        ..rollback
    };
    pipeline::handle(&h.home.deps, h.home.bus.as_ref(), &rollback)
        .await
        .expect("rollback");
    // An operator's rollback is measured afresh: its `DnaRolledBack` says so.
    let far = h.home.clock.now_plus(Duration::days(1));
    let sent: Vec<Outgoing> = std::iter::from_fn(|| h.home.bus.pop_due(far))
        .map(|d| d.outgoing)
        .collect();
    assert!(
        sent.iter()
            .any(|o| matches!(o.envelope.body, Body::DnaRolledBack { measure: true, .. })),
        "{sent:?}"
    );
    h.home.bus.send(&sent).await.expect("back on the bus");
    run(&h, &eval, 1).await;
    let cursor = h
        .store
        .get_cursor(&system_id())
        .await
        .expect("cursor")
        .expect("exists");
    assert!(
        matches!(cursor.last_replan, Some(ReplanReason::Diverged { .. })),
        "{:?}",
        cursor.last_replan
    );
}

#[tokio::test]
async fn missed_prediction_beyond_the_plans_tolerance_is_divergence() {
    let mut plan = strategy(vec![step("a", "x", 60), step("b", "x", 70)]);
    plan.success_criteria
        .insert("max_prediction_error".into(), 0.5);
    let h = harness(
        Scripted::with(vec![plan, strategy(vec![step("c", "y", 60)])]),
        permissive(),
    )
    .await;
    // Step a predicts +1 and delivers +10.
    run(&h, &rises_with_x(), 2).await;
    let cursor = h
        .store
        .get_cursor(&system_id())
        .await
        .expect("cursor")
        .expect("exists");
    assert!(matches!(
        cursor.last_replan,
        Some(ReplanReason::Diverged { .. })
    ));
    assert_eq!(h.llm.analyses(), 2);
}

#[tokio::test]
async fn plans_are_capped_and_invalid_steps_dropped() {
    let steps: Vec<_> = (0..20)
        .map(|i| {
            step(
                &format!("s{i}"),
                if i % 2 == 0 { "x" } else { "y" },
                51 + i / 2,
            )
        })
        .collect();
    let mut steps = steps;
    steps.insert(1, step("bad", "nope", 1));
    let h = harness(
        Scripted::with(vec![strategy(steps)]),
        PipelineConfig {
            max_plan_steps: 5,
            ..permissive()
        },
    )
    .await;
    run(&h, &rises_with_x(), 1).await;
    let first = h
        .store
        .get_generation(&system_id(), 1)
        .await
        .expect("read")
        .expect("generation 1");
    let plan_id = first.plan_step().expect("made by a plan").plan_id.clone();
    let plan = h
        .store
        .get_plan(&system_id(), &plan_id)
        .await
        .expect("plan")
        .expect("exists");
    assert!(plan.truncated);
    assert_eq!(plan.steps.len(), 4, "5 kept by the cap, 1 of them invalid");
    assert_eq!(plan.dropped.len(), 1);
    assert!(
        plan.dropped[0].1.contains("unknown gene"),
        "{:?}",
        plan.dropped
    );
}

#[tokio::test]
async fn regression_rolls_back_to_the_exact_parent_genes_as_a_new_generation() {
    let h = harness(
        Scripted::with(vec![strategy(vec![step("down", "x", 45)])]),
        permissive(),
    )
    .await;
    run(&h, &rises_with_x(), 1).await;
    let gens = h
        .store
        .list_generations(&system_id(), None, 10)
        .await
        .expect("list");
    assert_eq!(gens.len(), 3);
    assert_eq!(int(&gens[1].genes, "x"), 45);
    assert_eq!(gens[2].genes, gens[0].genes);
    assert_eq!(gens[2].checksum, gens[0].checksum);
    assert_eq!(gens[2].parent, Some(1));
    assert!(matches!(
        gens[2].origin,
        Origin::Rollback {
            restored: 0,
            rolled_back: 1,
            ..
        }
    ));
    let head = h
        .store
        .get_head(&system_id())
        .await
        .expect("head")
        .expect("exists");
    assert_eq!((head.generation, head.status), (2, HeadStatus::Stable));
    assert_eq!(head.stable_fitness, Some(50.0));
}

#[tokio::test]
async fn failed_evaluations_are_inconclusive_and_roll_back() {
    let h = harness(
        Scripted::with(vec![strategy(vec![step("cliff", "x", 60)])]),
        permissive(),
    )
    .await;
    let eval = FnEvaluator(Box::new(|g| {
        (int(g, "x") <= 55).then(|| int(g, "x") as f64)
    }));
    let report = run(&h, &eval, 1).await;
    assert_eq!(report.rollbacks, 1);
    let history = h
        .store
        .list_history(&system_id(), 10)
        .await
        .expect("history");
    assert_eq!(
        history.last().map(|e| e.outcome),
        Some(EvaluationOutcome::Inconclusive)
    );
}

#[tokio::test]
async fn nothing_approves_above_the_risk_ceiling() {
    let llm = Scripted::with(vec![strategy(vec![step("a", "x", 60)])]);
    let h = harness(
        llm,
        PipelineConfig {
            auto_approve_risk: 0.0,
            risk_ceiling: 0.0,
            ..PipelineConfig::default()
        },
    )
    .await;
    let opts = RunOptions {
        generations: 1,
        max_idle: Duration::hours(3),
        ..RunOptions::default()
    };
    let report = h
        .home
        .runner(&rises_with_x())
        .run(&system_id(), &opts, &Silent)
        .await
        .expect("run");
    assert_eq!(report.mutations_applied, 0);
    let decisions = h
        .store
        .list_decisions(&system_id(), None, 100)
        .await
        .expect("list");
    assert!(!decisions.is_empty());
    for d in &decisions {
        assert_eq!(d.decision, Recommendation::Reject);
        assert!(d.reasoning.contains("ceiling"), "{}", d.reasoning);
    }
}

#[tokio::test]
async fn invalid_llm_mutation_is_rejected_with_its_reason() {
    let h = harness(Scripted::with(vec![]), permissive()).await;
    measure_baseline(&h, &rises_with_x()).await;
    let bad = Envelope {
        id: "msg_bad_proposal".into(),
        causation_id: "test".into(),
        system_id: system_id(),
        base_generation: 0,
        sent_at: start() + Duration::minutes(5),
        traceparent: None,
        body: Body::MutationProposed {
            mutation: shared::domain::Mutation {
                id: "mut_bad".into(),
                changes: vec![shared::domain::GeneChange {
                    gene: name("x"),
                    value: GeneValue::Int(99),
                }],
                description: "too far".into(),
                predicted_impact: 1.0,
                plan_step: None,
            },
            deferrals: 0,
        },
    };
    pipeline::handle(&h.home.deps, h.home.bus.as_ref(), &bad)
        .await
        .expect("handled");
    let d = h
        .store
        .get_decision(&system_id(), &derive_id("dec", &[&bad.id]))
        .await
        .expect("read")
        .expect("recorded");
    assert_eq!(d.decision, Recommendation::Reject);
    assert!(d.reasoning.contains("max_step"), "{}", d.reasoning);
}

#[tokio::test]
async fn malformed_and_misrouted_messages_are_permanent_failures() {
    let h = harness(Scripted::with(vec![]), permissive()).await;
    let bus = h.home.bus.as_ref();
    let err = pipeline::handle_raw(&h.home.deps, bus, Queue::Analyze, "{not json")
        .await
        .expect_err("malformed");
    assert!(
        matches!(err, PipelineError::Permanent(ref r) if r.contains("malformed")),
        "{err}"
    );
    let fitness_on_analyze = serde_json::json!({
        "id": "m1", "system_id": "svc", "sent_at": "2026-03-01T12:00:00Z",
        "type": "FitnessReported", "generation": 0, "checksum": "x", "score": 1.0
    });
    let err = pipeline::handle_raw(
        &h.home.deps,
        bus,
        Queue::Analyze,
        &fitness_on_analyze.to_string(),
    )
    .await
    .expect_err("misrouted");
    assert!(matches!(err, PipelineError::Permanent(_)));
    let unknown = serde_json::json!({
        "id": "m2", "system_id": "nope", "sent_at": "2026-03-01T12:00:00Z",
        "type": "CycleRequested", "reason": "scheduled"
    });
    let err = pipeline::handle_raw(&h.home.deps, bus, Queue::Analyze, &unknown.to_string())
        .await
        .expect_err("unknown system");
    assert!(matches!(err, PipelineError::Permanent(ref r) if r.contains("unknown system")));
}

#[tokio::test]
async fn scheduled_cycle_while_evaluating_is_a_no_op() {
    let h = harness(Scripted::with(vec![]), permissive()).await;
    let env = Envelope {
        id: "msg_sched".into(),
        causation_id: "tick".into(),
        system_id: system_id(),
        base_generation: 0,
        sent_at: start(),
        traceparent: None,
        body: Body::CycleRequested {
            reason: CycleReason::Scheduled,
        },
    };
    let handled = pipeline::handle(&h.home.deps, h.home.bus.as_ref(), &env)
        .await
        .expect("handled");
    assert!(matches!(handled, Handled::Processed { sent: 0, .. }));
    assert_eq!(h.llm.analyses(), 0);
}

#[tokio::test]
async fn closed_evaluations_feed_the_strategists_prediction_error() {
    use shared::store::ControlState;
    let h = harness(
        Scripted::with(vec![strategy(vec![step("a", "x", 60)])]),
        permissive(),
    )
    .await;
    run(&h, &rises_with_x(), 1).await;
    let perf = h.store.performance().await.expect("performance");
    let stats = perf
        .stats("test:scripted", shared::domain::Role::Strategize)
        .expect("recorded for the model that made the plan");
    // Predicted +1, measured +10.
    assert!((stats.prediction_error - 9.0).abs() < 1e-9, "{stats:?}");
}

/// Two fitness reports read the window at once, when it needs both to close early: before, each
/// counted only itself and both committed, so the window waited for its deadline. Now the
/// second fails its condition, reads again, sees both and closes the window.
#[tokio::test]
async fn two_reports_read_together_count_each_other() {
    use shared::lambda::QueueSources;
    use shared::lambda::testing::TestFunction;
    use shared::store::{StoreError, Transaction, Write};

    let t = TestFunction::new("snapshot", QueueSources::Only(Queue::Snapshot))
        .await
        .expect("world");
    let id = TestFunction::system_id();
    let head = t.store.get_head(&id).await.expect("head").expect("exists");
    let mut two = head.clone();
    two.evaluation
        .as_mut()
        .expect("baseline window")
        .samples_required = 2;
    t.store
        .commit(Transaction {
            writes: vec![Write::UpdateHead {
                expected_generation: 0,
                expected_status: HeadStatus::Evaluating,
                head: two,
            }],
            completion: None,
        })
        .await
        .expect("two samples required");

    let mut a = t.baseline_report(0.5).await.expect("report");
    a.id = "msg-report-a".into();
    let mut b = t.baseline_report(0.7).await.expect("report");
    b.id = "msg-report-b".into();
    let deps = &t.deps.pipeline;
    let first = fitness(deps, &a).await.expect("a");
    let second = fitness(deps, &b).await.expect("b");
    t.store
        .commit(Transaction {
            writes: first.writes,
            completion: None,
        })
        .await
        .expect("a commits");
    let late = t
        .store
        .commit(Transaction {
            writes: second.writes,
            completion: None,
        })
        .await;
    assert!(
        matches!(late, Err(StoreError::ConditionFailed(_))),
        "{late:?}"
    );

    // The retry reads both reports and closes the window.
    let retried = fitness(deps, &b).await.expect("b again");
    t.store
        .commit(Transaction {
            writes: retried.writes,
            completion: None,
        })
        .await
        .expect("b commits");
    let closed = t.store.get_head(&id).await.expect("head").expect("exists");
    assert_eq!(closed.status, HeadStatus::Stable, "{closed:?}");
}

/// A fitness report and the tick's `EvaluationDue` both close the same window. The one whose
/// commit loses reads again at once, finds the window closed and is acknowledged as a no-op;
/// before, it failed its condition and waited a visibility timeout to learn the same thing.
#[tokio::test]
async fn the_loser_of_two_closers_of_a_window_is_acknowledged_as_stale() {
    use shared::lambda::QueueSources;
    use shared::lambda::testing::TestFunction;
    use shared::store::Transaction;

    let t = TestFunction::new("snapshot", QueueSources::Only(Queue::Snapshot))
        .await
        .expect("world");
    let id = TestFunction::system_id();
    t.clock.advance_to(t.clock.now_plus(Duration::days(2)));
    let report = t.baseline_report(0.5).await.expect("report");
    let deps = &t.deps.pipeline;
    let closing = fitness(deps, &report).await.expect("the report closes");
    // The report commits between the due message's reads and its commit.
    t.store.cut_in_before_next_commit(Transaction {
        writes: closing.writes,
        completion: None,
    });
    let due = Envelope {
        id: "msg-due".into(),
        causation_id: "tick".into(),
        system_id: id.clone(),
        base_generation: 0,
        sent_at: t.clock.now_plus(Duration::zero()),
        traceparent: None,
        body: Body::EvaluationDue { generation: 0 },
    };
    let handled = pipeline::handle(deps, t.bus.as_ref(), &due)
        .await
        .expect("acknowledged, not left for a retry");
    assert!(
        matches!(&handled, Handled::Processed { sent: 0, summary, .. }
            if summary.contains("not under evaluation")),
        "{handled:?}"
    );
    let history = t.store.list_history(&id, 10).await.expect("history");
    assert_eq!(history.len(), 1, "the window closed once: {history:?}");
    let head = t.store.get_head(&id).await.expect("head").expect("exists");
    assert_eq!(head.status, HeadStatus::Stable);
}

/// Closing a window asks for the next cycle at once and moves the scheduled one an interval on,
/// so the ticks that follow while that cycle is in flight ask for no second one. Before, the
/// close left the schedule as it was and the next tick asked again: two cycles per window.
#[tokio::test]
async fn a_closed_window_asks_for_one_cycle_not_two() {
    use shared::lambda::QueueSources;
    use shared::lambda::testing::TestFunction;

    let t = TestFunction::new("snapshot", QueueSources::Only(Queue::Snapshot))
        .await
        .expect("world");
    let deps = &t.deps.pipeline;
    t.drain();
    let report = t.baseline_report(0.5).await.expect("report");
    pipeline::handle(deps, t.bus.as_ref(), &report)
        .await
        .expect("the report closes the baseline");
    let mut cycles = 0;
    for minute in 1..=5 {
        let at = t.clock.now_plus(Duration::minutes(1));
        t.clock.advance_to(at);
        pipeline::tick(deps, t.bus.as_ref(), at)
            .await
            .unwrap_or_else(|e| panic!("tick {minute}: {e}"));
        for sent in t.drain() {
            match &sent.envelope.body {
                Body::CycleRequested { .. } => cycles += 1,
                Body::SystemTick { .. } => {
                    pipeline::handle(deps, t.bus.as_ref(), &sent.envelope)
                        .await
                        .expect("the system's tick");
                    cycles += t
                        .drain()
                        .iter()
                        .filter(|o| matches!(o.envelope.body, Body::CycleRequested { .. }))
                        .count();
                }
                _ => {}
            }
        }
    }
    assert_eq!(cycles, 1, "one close, one cycle");
}

/// A report for the generation under evaluation with another checksum means the running
/// system runs other genes than the committed ones: a `ChecksumMismatch` conflict, raised once
/// per generation; the window then closes on the reports that match, and what the running
/// system measured (its metrics, and its state on the close's event) is kept.
#[tokio::test]
async fn a_checksum_mismatch_is_raised_once_and_the_windows_metrics_are_kept() {
    use shared::domain::{ConflictKind, EventType, MetricName};
    use shared::lambda::QueueSources;
    use shared::lambda::testing::TestFunction;

    let t = TestFunction::new("snapshot", QueueSources::Only(Queue::Snapshot))
        .await
        .expect("world");
    let id = TestFunction::system_id();
    let deps = &t.deps.pipeline;
    let mut conflicts = 0;
    for n in 0..2 {
        let mut wrong = t.baseline_report(0.5).await.expect("report");
        wrong.id = format!("msg-wrong-{n}");
        if let Body::FitnessReported { checksum, .. } = &mut wrong.body {
            *checksum = "0".repeat(64);
        }
        pipeline::handle(deps, t.bus.as_ref(), &wrong)
            .await
            .expect("recorded and ignored");
        for sent in t.drain() {
            if let Body::ConflictDetected { conflict } = &sent.envelope.body {
                assert_eq!(conflict.kind, ConflictKind::ChecksumMismatch);
                // The resolver is told what it can fall back on.
                assert!(
                    conflict.available_resources[0].starts_with("stable generation 0"),
                    "{conflict:?}"
                );
                conflicts += 1;
            }
        }
    }
    assert_eq!(conflicts, 1, "raised at the first mismatching report only");

    let mut report = t.baseline_report(0.5).await.expect("report");
    if let Body::FitnessReported { metrics, .. } = &mut report.body {
        for (name, value) in [
            ("cpu_usage", 0.25),
            ("active_processes", 7.0),
            ("p99_latency_ms", 41.5),
        ] {
            metrics.insert(MetricName::parse(name).expect("name"), value);
        }
    }
    pipeline::handle(deps, t.bus.as_ref(), &report)
        .await
        .expect("the report closes the baseline");
    let history = t.store.list_history(&id, 10).await.expect("history");
    assert_eq!(
        history[0]
            .metrics
            .get(&MetricName::parse("p99_latency_ms").expect("name")),
        Some(&41.5)
    );
    let events = t.store.list_events(&id, None, 20).await.expect("events");
    let closed = events
        .iter()
        .find(|e| e.event_type == EventType::MutationKept)
        .expect("the close's event");
    let context = closed.system_context.as_ref().expect("system context");
    assert_eq!((context.cpu_usage, context.active_processes), (0.25, 7));
}

/// Runs snapshot's fitness stage on a report, without committing what it returns.
async fn fitness(
    deps: &shared::stages::Deps,
    env: &Envelope,
) -> Result<shared::stages::StageOutput, shared::stages::StageError> {
    let Body::FitnessReported {
        generation,
        checksum,
        score,
        metrics,
        error,
        cohort,
    } = &env.body
    else {
        unreachable!("a fitness report")
    };
    shared::stages::snapshot::handle_fitness(
        deps,
        env,
        *generation,
        checksum,
        *score,
        metrics,
        error.as_deref(),
        *cohort,
    )
    .await
}
