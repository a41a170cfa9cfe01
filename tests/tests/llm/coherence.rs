//! Answers that match the schema but contradict themselves: an APPROVE the model itself rates
//! above the risk ceiling, or reasoning too short to be reasoning. Each is repaired once and
//! otherwise becomes a DEFER (a conflict resolution: an escalation to a human), never an APPROVE.

use serde_json::{Value, json};
use shared::domain::{Recommendation, ResolutionAction, Role};
use shared::engine::LOCAL_MODEL_ID;
use shared::llm::LanguageModel;

use crate::fixture::{A, B, C, Fixture};
use crate::requests::{decide_req, decision_json, reply_from, resolution_json, resolve_req};

/// The local risk is below the ceiling: only the model's own numbers say the step is unsafe.
const LOCAL_RISK: f64 = 0.47;
const CEILING: f64 = 0.8;

fn approve_at(overall: f64, component: f64) -> Value {
    let mut d = decision_json("APPROVE");
    d["confidence"] = json!(1.0);
    d["risk_assessment"] = json!({"overall_risk": overall, "technical_risk": component,
                                  "business_risk": 0.1, "operational_risk": 0.1});
    d
}

fn with_reasoning(mut answer: Value, reasoning: &str) -> Value {
    answer["reasoning"] = json!(reasoning);
    answer
}

#[tokio::test]
async fn an_approve_the_model_rates_above_the_ceiling_is_repaired_once_then_deferred() {
    let incoherent = [
        ("its overall risk", approve_at(1.0, 0.2)),
        ("a component risk", approve_at(0.3, 0.95)),
        (
            "a gene name for reasoning",
            with_reasoning(decision_json("APPROVE"), "cache_size_mb"),
        ),
        (
            "empty reasoning",
            with_reasoning(decision_json("REJECT"), "  "),
        ),
    ];
    for (what, answer) in incoherent {
        let f = Fixture::new(&[A, B, C]).await;
        f.stub.push_for(A, reply_from(A, Role::Decide, &answer));
        f.stub.push_for(A, reply_from(A, Role::Decide, &answer));
        f.stub
            .push_for(B, reply_from(B, Role::Decide, &decision_json("APPROVE")));

        let d = f
            .model
            .decide(&decide_req("env-incoherent", LOCAL_RISK, CEILING))
            .await
            .expect("an answer");

        assert_eq!(d.value.recommendation, Recommendation::Defer, "{what}");
        // The answer and its one repair; no other model is asked to approve instead.
        assert_eq!(f.models_called(), [A, A], "{what}");
        assert_eq!(d.model_id, LOCAL_MODEL_ID, "{what}");
        let reason = d.fallback.expect("the reason is recorded");
        assert!(reason.contains("incoherent"), "{what}: {reason}");
        assert!(d.value.reasoning.contains("incoherent"), "{what}");
    }
}

#[tokio::test]
async fn an_incoherent_answer_whose_repair_is_coherent_stands() {
    let f = Fixture::new(&[A, B, C]).await;
    f.stub
        .push_for(A, reply_from(A, Role::Decide, &approve_at(1.0, 1.0)));
    f.stub
        .push_for(A, reply_from(A, Role::Decide, &decision_json("APPROVE")));

    let d = f
        .model
        .decide(&decide_req("env-repaired", LOCAL_RISK, CEILING))
        .await
        .expect("an answer");

    assert_eq!(d.value.recommendation, Recommendation::Approve);
    assert_eq!((d.model_id.as_str(), d.fallback), (A, None));
}

#[tokio::test]
async fn a_coherent_approve_at_model_risk_0_4_stands() {
    let f = Fixture::new(&[A, B, C]).await;
    f.stub
        .push_for(A, reply_from(A, Role::Decide, &approve_at(0.4, 0.4)));

    let d = f
        .model
        .decide(&decide_req("env-coherent", LOCAL_RISK, CEILING))
        .await
        .expect("an answer");

    assert_eq!(d.value.recommendation, Recommendation::Approve);
    assert_eq!(f.models_called(), [A]);
}

#[tokio::test]
async fn a_resolution_without_reasoning_is_repaired_once_then_escalated() {
    let f = Fixture::new(&[A, B, C]).await;
    let answer = with_reasoning(resolution_json(), "retry");
    f.stub.push_for(A, reply_from(A, Role::Resolve, &answer));
    f.stub.push_for(A, reply_from(A, Role::Resolve, &answer));

    let r = f
        .model
        .resolve_conflict(&resolve_req("env-resolve"))
        .await
        .expect("an answer");

    assert_eq!(r.value.action, ResolutionAction::Escalate);
    assert_eq!(f.models_called(), [A, A]);
    assert!(r.fallback.expect("a reason").contains("incoherent"));
}

/// Through the pipeline: the decision role's answer approves at its own risk 1.0 twice; the
/// proposal is deferred, nothing is applied, and the audit record says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incoherent_approval_is_never_applied_and_the_audit_record_says_why() {
    use std::sync::Arc;

    use shared::bus::local::LocalBus;
    use shared::clock::{Clock, SimClock};
    use shared::cost::Budgets;
    use shared::domain::{Envelope, Outgoing};
    use shared::llm::bedrock::BedrockSettings;
    use shared::local::init_system;
    use shared::pipeline;
    use shared::stages::{Deps, PipelineConfig};
    use shared::store::memory::MemoryStore;
    use shared::store::{EvolutionStore, SystemSettings};
    use tests::bedrock_stub::StubServer;

    use crate::fixture::{bedrock_model, catalog, start};
    use crate::requests::{analysis_json, schema_and_genes, strategy_json, system_id};

    let stub = StubServer::start().await;
    // One model, so the order of its answers is the order of the roles' requests.
    for (role, answer) in [
        (Role::Analyze, analysis_json()),
        (Role::Strategize, strategy_json()),
        (Role::Decide, approve_at(1.0, 1.0)),
        (Role::Decide, approve_at(1.0, 1.0)),
    ] {
        stub.push_for(A, reply_from(A, role, &answer));
    }
    let store = Arc::new(MemoryStore::new());
    let clock = Arc::new(SimClock::new(start()));
    let mut settings = BedrockSettings::new(catalog(&[A]), Budgets::default());
    settings.response_cache_ttl = chrono::Duration::zero();
    let deps = Deps {
        store: store.clone(),
        control: store.clone(),
        ledger: store.clone(),
        llm: Arc::new(bedrock_model(&stub.url(), &store, &clock, settings)),
        clock: clock.clone(),
        money_clock: clock.clone(),
        config: PipelineConfig {
            // Every proposal goes to the decision role.
            auto_approve_risk: 0.0,
            ..PipelineConfig::default()
        },
    };
    let (schema, genes) = schema_and_genes();
    init_system(
        &deps,
        &shared::bus::local::LocalBus::new(clock.clone()),
        &system_id(),
        schema,
        genes,
        SystemSettings::default(),
    )
    .await
    .expect("init");
    let baseline = store
        .get_generation(&system_id(), 0)
        .await
        .expect("read")
        .expect("generation 0");
    let bus = LocalBus::new(clock.clone());
    let report: Envelope = serde_json::from_value(json!({
        "id": "fit-baseline",
        "system_id": system_id().as_str(),
        "base_generation": 0,
        "sent_at": clock.now().to_rfc3339(),
        "type": "FitnessReported",
        "generation": 0,
        "checksum": baseline.checksum,
        "score": 10.0,
        "metrics": {},
    }))
    .expect("a fitness report");
    bus.inject(Outgoing::new(report));
    while let Some(delivery) = bus.pop_due(clock.now()) {
        if matches!(
            delivery.outgoing.envelope.body.destination(),
            shared::domain::Destination::Topic(_)
        ) {
            continue;
        }
        pipeline::handle(&deps, &bus, &delivery.outgoing.envelope)
            .await
            .expect("handled");
    }

    assert_eq!(stub.pending(), 0, "every scripted answer was asked for");
    let head = store
        .get_head(&system_id())
        .await
        .expect("head")
        .expect("exists");
    assert_eq!(head.generation, 0, "nothing was applied");
    let decisions = store
        .list_decisions(&system_id(), None, 10)
        .await
        .expect("decisions");
    assert_eq!(decisions.len(), 1, "{decisions:?}");
    assert_eq!(decisions[0].decision, Recommendation::Defer);
    assert!(
        decisions[0].reasoning.contains("incoherent")
            && decisions[0].reasoning.contains("above the ceiling"),
        "{}",
        decisions[0].reasoning
    );
}
