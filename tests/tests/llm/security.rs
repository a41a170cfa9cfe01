//! Access denied is a security event: no retry, no other model, the local engine answers, and
//! the stage raises a critical `security` alert with its outbox.

use std::sync::{Arc, Mutex};

use shared::bus::local::LocalBus;
use shared::clock::SimClock;
use shared::cost::Budgets;
use shared::domain::{Alert, AlertLevel, FitnessScore, Genes};
use shared::engine::LOCAL_MODEL_ID;
use shared::evaluator::{EvalError, Evaluator};
use shared::llm::LanguageModel;
use shared::llm::bedrock::BedrockSettings;
use shared::local::{LocalHome, Observer, RunOptions, init_system};
use shared::stages::{Deps, PipelineConfig};
use shared::store::memory::MemoryStore;
use shared::store::{EvolutionStore, SystemSettings};
use tests::bedrock_stub::{Reply, StubServer};

use crate::fixture::{A, B, Fixture, bedrock_model, catalog, start};
use crate::requests::{analyze_req, system_id};

#[tokio::test]
async fn access_denied_is_answered_locally_after_one_request_with_a_security_event() {
    let f = Fixture::new(&[A, B]).await;
    f.stub.push_for(A, Reply::access_denied());

    let answer = f
        .model
        .analyze(&analyze_req("env-denied"))
        .await
        .expect("an answer");

    assert_eq!(f.stub.request_count(), 1, "no retry and no other model");
    assert_eq!(answer.model_id, LOCAL_MODEL_ID);
    assert_eq!(answer.bedrock_requests, 1);
    let reason = answer.fallback.as_deref().expect("a fallback reason");
    assert!(reason.contains("access denied"), "{reason}");
    assert_eq!(answer.security_events.len(), 1);
    let event = &answer.security_events[0];
    assert_eq!(event.service, "bedrock");
    assert_eq!(event.operation, "Converse");
    assert_eq!(event.error_code, "AccessDeniedException");
    assert_eq!(event.resource.as_deref(), Some(A));
    // An authorization failure says nothing about the model's health.
    assert_eq!(f.circuit(A).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_whose_call_was_denied_raises_a_critical_security_alert() {
    let stub = StubServer::start().await;
    stub.push_for(A, Reply::access_denied());
    let store = Arc::new(MemoryStore::new());
    let clock = Arc::new(SimClock::new(start()));
    let settings = BedrockSettings::new(catalog(&[A]), Budgets::default());
    let model = bedrock_model(&stub.url(), &store, &clock, settings);
    let deps = Deps {
        store: store.clone(),
        control: store.clone(),
        ledger: store.clone(),
        llm: Arc::new(model),
        clock: clock.clone(),
        money_clock: clock.clone(),
        config: PipelineConfig::default(),
    };
    let home = LocalHome {
        deps,
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
    let alerts_seen = Collect::default();

    let report = home
        .runner(&Flat)
        .run(
            &system_id(),
            &RunOptions {
                generations: 1,
                ..RunOptions::default()
            },
            &alerts_seen,
        )
        .await
        .expect("the run completes on the local engine and the stub");

    assert!(report.dead_letters.is_empty(), "{:?}", report.dead_letters);
    let denied: Vec<_> = stub
        .requests()
        .into_iter()
        .filter(|r| r.replied_status == 403)
        .collect();
    assert_eq!(denied.len(), 1, "the denied call was not retried");
    let alerts = store.list_alerts(None, 10).await.expect("memory store");
    let security: Vec<_> = alerts.iter().filter(|a| a.kind == "security").collect();
    assert_eq!(security.len(), 1, "{alerts:?}");
    assert_eq!(security[0].level, AlertLevel::Critical);
    assert_eq!(security[0].system_id, Some(system_id()));
    // Published on the alerts topic too.
    let published = alerts_seen.0.lock().expect("not poisoned").clone();
    assert_eq!(published, vec![security[0].clone()]);
}

/// A system whose fitness never changes.
#[derive(Debug)]
pub struct Flat;

#[async_trait::async_trait]
impl Evaluator for Flat {
    async fn evaluate(&self, _: &Genes) -> Result<FitnessScore, EvalError> {
        Ok(FitnessScore {
            score: 1.0,
            metrics: std::collections::BTreeMap::default(),
        })
    }
}

/// The alerts the runner saw on the alerts topic.
#[derive(Debug, Default)]
struct Collect(Mutex<Vec<Alert>>);

impl Observer for Collect {
    fn alert(&self, alert: &Alert) {
        self.0.lock().expect("not poisoned").push(alert.clone());
    }
}
