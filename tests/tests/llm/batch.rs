//! Request batching under throttling: with a throttle window open, a decide request that
//! carries the plan's later steps decides them all in one Bedrock request; each later decision
//! that validates is reused when its proposal arrives unchanged, and decided normally otherwise.

use chrono::Duration;
use serde_json::json;
use shared::cost::Budgets;
use shared::domain::{GeneChange, GeneValue, Recommendation, Role};
use shared::llm::{DecideRequest, LanguageModel, PendingProposal};
use tests::bedrock_stub::Reply;

use crate::fixture::{A, Fixture, catalog};
use crate::requests::{analyze_req, decide_req, decision, decision_json, gene, ok_from};

fn step(id: &str, threads: i64) -> shared::domain::Mutation {
    shared::domain::Mutation {
        id: id.into(),
        changes: vec![GeneChange {
            gene: gene("threads"),
            value: GeneValue::Int(threads),
        }],
        description: format!("threads to {threads}"),
        predicted_impact: 1.0,
        plan_step: None,
    }
}

/// The proposal of step 1 with steps 2 and 3 pending, at local risks 0.5, 0.6 and 0.7.
fn batched(envelope: &str) -> DecideRequest {
    let mut req = decide_req(envelope, 0.5, 0.8);
    req.batch = vec![
        PendingProposal {
            mutation: step("m-2", 12),
            local_risk: 0.6,
        },
        PendingProposal {
            mutation: step("m-3", 14),
            local_risk: 0.7,
        },
    ];
    req
}

/// Step `i` (0-based) of `batched` as its own proposal, as decide sends it later.
fn alone(envelope: &str, i: usize) -> DecideRequest {
    let full = batched(envelope);
    if i == 0 {
        return DecideRequest {
            batch: Vec::new(),
            ..full
        };
    }
    let p = full.batch[i - 1].clone();
    DecideRequest {
        mutation: p.mutation,
        local_risk: p.local_risk,
        batch: Vec::new(),
        ..full
    }
}

/// A fixture with the response cache on and A's throttle window open.
async fn throttled_fixture() -> Fixture {
    let f = Fixture::with(catalog(&[A]), Budgets::default(), |s| {
        s.response_cache_ttl = Duration::minutes(15);
    })
    .await;
    // A low-priority call meets throttling: the window opens.
    f.stub.push_for(A, Reply::throttled());
    let mut low = analyze_req("env-low");
    low.history = Vec::new();
    f.model.analyze(&low).await.expect("an answer");
    assert!(f.circuit(A).await.and_then(|c| c.throttled_until).is_some());
    f
}

fn batch_reply(decisions: &[serde_json::Value]) -> Reply {
    Reply::tool(
        shared::llm::prompts::tool_name(Role::Decide),
        json!({ "decisions": decisions }),
    )
}

#[tokio::test]
async fn three_proposals_of_one_plan_cost_one_bedrock_decide_request() {
    let f = throttled_fixture().await;
    let before = f.stub.request_count();
    f.stub.push_for(
        A,
        batch_reply(&[
            decision_json("APPROVE"),
            decision_json("REJECT"),
            decision_json("DEFER"),
        ]),
    );

    let first = f.model.decide(&batched("env-1")).await.expect("an answer");

    assert_eq!(first.model_id, A);
    assert_eq!(first.value, decision(Recommendation::Approve));
    assert_eq!(f.stub.request_count(), before + 1);
    let batch_request = &f.requests()[before];
    let data = crate::fixture::data_document(batch_request);
    assert_eq!(data["more_mutations"].as_array().map(Vec::len), Some(2));

    // Steps 2 and 3 arrive later as their own proposals: answered without a request.
    for (i, expected) in [(1, Recommendation::Reject), (2, Recommendation::Defer)] {
        let answer = f
            .model
            .decide(&alone(&format!("env-{}", i + 1), i))
            .await
            .expect("an answer");
        assert!(answer.cache_hit, "step {i}");
        assert_eq!(answer.value, decision(expected));
        assert_eq!(answer.cost_nano_usd, 0);
    }
    assert_eq!(
        f.stub.request_count(),
        before + 1,
        "one decide request for three"
    );
}

#[tokio::test]
async fn a_later_decision_that_does_not_validate_is_decided_normally() {
    let f = throttled_fixture().await;
    let before = f.stub.request_count();
    // Step 3's approval is fine at its risk 0.7, but step 2's answer is not a decision.
    f.stub.push_for(
        A,
        batch_reply(&[
            decision_json("REJECT"),
            json!({"recommendation": "MAYBE"}),
            decision_json("APPROVE"),
        ]),
    );
    f.model.decide(&batched("env-1")).await.expect("an answer");
    assert_eq!(f.stub.request_count(), before + 1);

    f.stub.push_for(A, ok_from(A, Role::Decide));
    let second = f.model.decide(&alone("env-2", 1)).await.expect("an answer");
    assert!(!second.cache_hit);
    assert_eq!(f.stub.request_count(), before + 2, "decided on its own");

    let third = f.model.decide(&alone("env-3", 2)).await.expect("an answer");
    assert!(third.cache_hit);
    assert_eq!(third.value, decision(Recommendation::Approve));
}

#[tokio::test]
async fn a_changed_proposal_misses_and_without_throttling_nothing_is_batched() {
    let f = throttled_fixture().await;
    let before = f.stub.request_count();
    f.stub.push_for(
        A,
        batch_reply(&[
            decision_json("REJECT"),
            decision_json("REJECT"),
            decision_json("REJECT"),
        ]),
    );
    f.model.decide(&batched("env-1")).await.expect("an answer");

    // Step 2 arrives with another local risk (the DNA moved): its own request.
    let mut moved = alone("env-2", 1);
    moved.local_risk = 0.65;
    f.stub.push_for(A, ok_from(A, Role::Decide));
    assert!(!f.model.decide(&moved).await.expect("an answer").cache_hit);
    assert_eq!(f.stub.request_count(), before + 2);

    // Once the window has passed, a request with pending steps is decided alone.
    f.clock.advance(Duration::seconds(31));
    f.stub.push_for(A, ok_from(A, Role::Decide));
    let mut later = batched("env-3");
    later.local_risk = 0.55;
    f.model.decide(&later).await.expect("an answer");
    let last = f.requests().pop().expect("a request");
    assert!(
        crate::fixture::data_document(&last)
            .get("more_mutations")
            .is_none()
    );
}

#[tokio::test]
async fn the_stubs_default_answer_to_a_batch_covers_every_proposal() {
    let f = throttled_fixture().await;
    let before = f.stub.request_count();

    let first = f.model.decide(&batched("env-1")).await.expect("an answer");

    assert_eq!(first.model_id, A, "{:?}", first.fallback);
    assert_eq!(f.stub.request_count(), before + 1);
    for i in [1, 2] {
        let answer = f
            .model
            .decide(&alone(&format!("env-{}", i + 1), i))
            .await
            .expect("an answer");
        assert!(answer.cache_hit, "step {i}");
    }
    assert_eq!(f.stub.request_count(), before + 1);
}

/// Through the decide stage: a plan of three steps, Bedrock throttling, every proposal
/// rejected. The first proposal's request decides all three; the next two proposals arrive
/// against the same DNA and history and are answered from the stored decisions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_decide_stage_decides_a_plans_three_proposals_with_one_request() {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use shared::bus::local::LocalBus;
    use shared::clock::{Clock, SimClock};
    use shared::domain::{Body, Envelope, Plan, PlanStep, PlanStepRef, derive_id};
    use shared::local::{LocalHome, init_system};
    use shared::stages::{Deps, PipelineConfig};
    use shared::store::memory::MemoryStore;
    use shared::store::{
        CircuitState, ControlState, EvolutionStore, SystemSettings, Transaction, Write,
    };

    use crate::fixture::{bedrock_model, start};
    use crate::requests::system_id;

    let stub = tests::bedrock_stub::StubServer::start().await;
    let store = Arc::new(MemoryStore::new());
    let clock = Arc::new(SimClock::new(start()));
    let mut settings =
        shared::llm::bedrock::BedrockSettings::new(catalog(&[A]), Budgets::default());
    settings.response_cache_ttl = Duration::minutes(15);
    let model = bedrock_model(&stub.url(), &store, &clock, settings);
    let home = LocalHome {
        deps: Deps {
            store: store.clone(),
            control: store.clone(),
            ledger: store.clone(),
            llm: Arc::new(model),
            clock: clock.clone(),
            money_clock: clock.clone(),
            // Every proposal goes to the engine; nothing is above the ceiling.
            config: PipelineConfig {
                auto_approve_risk: 0.0,
                risk_ceiling: 1.0,
                ..PipelineConfig::default()
            },
        },
        bus: Arc::new(LocalBus::new(clock.clone())),
        clock: clock.clone(),
    };
    let (schema, genes) = crate::requests::schema_and_genes();
    init_system(
        &home.deps,
        home.bus.as_ref(),
        &system_id(),
        schema,
        genes,
        SystemSettings::default(),
    )
    .await
    .expect("init");
    // The baseline measurement init leaves open: reported and closed.
    let baseline = store
        .get_generation(&system_id(), 0)
        .await
        .expect("read")
        .expect("generation 0");
    let report = Envelope::caused_by(
        "baseline",
        None,
        "subscriber",
        0,
        system_id(),
        0,
        clock.now(),
        Body::FitnessReported {
            generation: 0,
            checksum: baseline.checksum.clone(),
            score: Some(1.0),
            metrics: BTreeMap::default(),
            error: None,
            cohort: None,
        },
    );
    let handled = shared::pipeline::handle(&home.deps, home.bus.as_ref(), &report)
        .await
        .expect("the baseline closes");
    let head = store
        .get_head(&system_id())
        .await
        .expect("read")
        .expect("a head");
    assert_eq!(
        head.status,
        shared::domain::HeadStatus::Stable,
        "{head:?} {handled:?}"
    );
    let plan = Plan {
        plan_id: "plan-1".into(),
        system_id: system_id(),
        analysis_id: "ana-1".into(),
        base_generation: head.generation,
        steps: [10, 12, 14]
            .iter()
            .enumerate()
            .map(|(i, threads)| PlanStep {
                id: format!("s{i}"),
                changes: vec![GeneChange {
                    gene: gene("threads"),
                    value: GeneValue::Int(*threads),
                }],
                rationale: format!("threads to {threads}"),
                predicted_impact: 1.0,
                contingency: None,
            })
            .collect(),
        dropped: Vec::new(),
        truncated: false,
        success_criteria: BTreeMap::new(),
        model_used: A.into(),
        created_at: clock.now(),
        cache_hit: false,
    };
    store
        .commit(Transaction {
            writes: vec![Write::PutPlan { plan: plan.clone() }],
            completion: None,
        })
        .await
        .expect("the plan");
    // Bedrock is throttling: A's window is open.
    store
        .put_circuit(&CircuitState {
            model_id: A.into(),
            consecutive_failures: 0,
            open_until: None,
            throttled_until: Some(clock.now() + Duration::seconds(30)),
        })
        .await
        .expect("the window");
    stub.push_for(
        A,
        batch_reply(&[
            decision_json("REJECT"),
            decision_json("REJECT"),
            decision_json("REJECT"),
        ]),
    );

    for (i, step) in plan.steps.iter().enumerate() {
        let mutation = shared::domain::Mutation {
            id: derive_id("mut", &[&plan.plan_id, &i.to_string(), "false"]),
            changes: step.changes.clone(),
            description: step.rationale.clone(),
            predicted_impact: step.predicted_impact,
            plan_step: Some(PlanStepRef {
                plan_id: plan.plan_id.clone(),
                step: i as u32,
            }),
        };
        let env = Envelope::caused_by(
            &format!("cycle-{i}"),
            None,
            "analyze",
            0,
            system_id(),
            head.generation,
            clock.now(),
            Body::MutationProposed {
                mutation,
                deferrals: 0,
            },
        );
        shared::pipeline::handle(&home.deps, home.bus.as_ref(), &env)
            .await
            .expect("decided");
    }

    assert_eq!(
        stub.request_count(),
        1,
        "one decide request for three proposals"
    );
    let decisions = store
        .list_decisions(&system_id(), None, 10)
        .await
        .expect("read");
    assert_eq!(decisions.len(), 3);
    assert!(
        decisions
            .iter()
            .all(|d| d.decision == Recommendation::Reject)
    );
    assert_eq!(decisions.iter().filter(|d| d.cache_hit).count(), 2);
    let calls = store
        .list_llm_calls(Some(&system_id()), None)
        .await
        .expect("read");
    assert_eq!(calls.iter().map(|c| c.bedrock_requests).sum::<u32>(), 1);
    assert_eq!(calls.iter().filter(|c| c.cache_hit).count(), 2);
}
