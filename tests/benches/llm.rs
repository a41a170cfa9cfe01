//! `make bench`: the LLM layer's own overhead per call (prompt build, schema, routing, ledger
//! reserve and settle, answer extraction and validation; no HTTP), a real SDK round trip to the
//! Converse stub, and a whole Bedrock-adapter role call through the stub.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_sdk_bedrockruntime::config::{Credentials, Region};
use aws_sdk_bedrockruntime::types::{ContentBlock, ConversationRole, Message};
use chrono::Utc;
use serde_json::json;
use shared::clock::{SeededRandom, SystemClock};
use shared::cost::Budgets;
use shared::domain::{
    BudgetMode, Complexity, GeneChange, GeneDef, GeneName, GeneSchema, GeneSpec, GeneValue, Genes,
    Mutation, Role, SystemId, TaskContext,
};
use shared::engine::LocalEngine;
use shared::llm::bedrock::{BedrockModel, BedrockPorts, BedrockSettings, SdkConverse, schema_for};
use shared::llm::catalog::ModelCatalog;
use shared::llm::validate::{self, Extraction, RawAnswer, RawContent};
use shared::llm::{CallContext, DecideRequest, DnaView, LanguageModel, prompts, router};
use shared::store::Usage;
use shared::store::memory::MemoryStore;
use shared::store::performance::PerformanceSnapshot;
use shared::store::{CostLedger, Reservation, Settlement};
use tests::bedrock_stub::StubServer;

fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.50), at(0.99))
}

fn request(envelope: &str) -> DecideRequest {
    let mut schema = GeneSchema::new();
    let mut genes = Genes::new();
    for i in 0..8 {
        let name = GeneName::parse(format!("gene_{i}")).expect("name");
        schema.insert(
            name.clone(),
            GeneDef {
                spec: GeneSpec::Int {
                    min: 0,
                    max: 1000,
                    max_step: Some(100),
                },
                risk_weight: 0.5,
                description: Some("a tunable".into()),
                frozen: false,
            },
        );
        genes.insert(name, GeneValue::Int(500));
    }
    let system_id = SystemId::parse("bench").expect("id");
    DecideRequest {
        ctx: CallContext {
            system_id: system_id.clone(),
            envelope_id: envelope.to_owned(),
            task: TaskContext {
                role: Role::Decide,
                complexity: Complexity::Medium,
                estimated_tokens: 2_000,
                max_latency_ms: Some(10_000),
                accuracy_requirements: 0.7,
                cost_sensitivity: 0.7,
                critical: false,
            },
            budget_mode: BudgetMode::Normal,
            deadline: None,
        },
        dna: DnaView {
            system_id,
            generation: 10,
            schema,
            genes,
            stable_fitness: Some(100.0),
            constraints: shared::domain::Constraints::default(),
        },
        history: vec![],
        mutation: Mutation {
            id: "m".into(),
            changes: vec![GeneChange {
                gene: GeneName::parse("gene_0").expect("name"),
                value: GeneValue::Int(550),
            }],
            description: "bench".into(),
            predicted_impact: 1.0,
            plan_step: None,
        },
        local_risk: 0.5,
        risk_ceiling: 0.8,
        deferrals: 0,
        batch: Vec::new(),
    }
}

async fn overhead(catalog: &ModelCatalog, store: &MemoryStore, n: usize) -> Vec<Duration> {
    let answer = RawAnswer {
        blocks: vec![RawContent::ToolUse {
            name: "submit_decision".into(),
            input: json!({"recommendation": "APPROVE", "confidence": 0.8,
                "risk_assessment": {"overall_risk": 0.3, "technical_risk": 0.3,
                    "business_risk": 0.2, "operational_risk": 0.2},
                "mitigation_strategies": ["monitor"], "reasoning": "fine"}),
        }],
        stop_reason: "tool_use".into(),
    };
    let perf = PerformanceSnapshot::default();
    let budgets = Budgets {
        global_daily: Some(1_000_000_000_000),
        economy_percent: 80,
        ..Budgets::default()
    };
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let req = request(&format!("env-{i}"));
        let began = Instant::now();
        let prompt = prompts::decide(&req, 30);
        let schema = schema_for(Role::Decide);
        let route = router::route(
            &req.ctx.task,
            catalog,
            &perf,
            BudgetMode::Normal,
            &router::RoutingPolicy::default(),
        );
        let model = route.ranked.first().cloned().unwrap_or_default();
        let reservation = Reservation {
            call_id: format!("call-{i}"),
            system_id: req.ctx.system_id.clone(),
            model_id: model.clone(),
            amount_nano: 10_000 + (prompt.user.len() + schema.to_string().len()) as u64,
            at: Utc::now(),
            limits: budgets.limits(),
        };
        store.reserve(&reservation).await.expect("reserve");
        store
            .settle(&Settlement {
                call_id: reservation.call_id.clone(),
                system_id: reservation.system_id.clone(),
                model_id: model,
                reserved_nano: reservation.amount_nano,
                reserved_at: reservation.at,
                actual_nano: 5_000,
                usage: Usage::default(),
                at: reservation.at,
            })
            .await
            .expect("settle");
        let value =
            validate::extract(&answer, Extraction::Tool("submit_decision")).expect("extract");
        validate::decision(value, req.local_risk, req.risk_ceiling).expect("valid");
        samples.push(began.elapsed());
    }
    samples
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let catalog = ModelCatalog::embedded().expect("catalog");
        let store = MemoryStore::new();
        let _ = overhead(&catalog, &store, 500).await;
        let (p50, p99) = percentiles(overhead(&catalog, &store, 10_000).await);
        println!("LLM-layer overhead per call (no HTTP), 10000 calls: p50 {p50:?}, p99 {p99:?}");

        let stub = StubServer::start().await;
        let config = aws_sdk_bedrockruntime::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(stub.url())
            .credentials_provider(Credentials::new("test", "test", None, None, "static"))
            .retry_config(RetryConfig::disabled())
            .build();
        let client = aws_sdk_bedrockruntime::Client::from_conf(config);
        let mut samples = Vec::new();
        for i in 0..1_100 {
            let message = Message::builder()
                .role(ConversationRole::User)
                .content(ContentBlock::Text(format!("ping {i}")))
                .build()
                .expect("message");
            let began = Instant::now();
            client
                .converse()
                .model_id("us.amazon.nova-micro-v1:0")
                .messages(message)
                .send()
                .await
                .expect("converse");
            if i >= 100 {
                samples.push(began.elapsed());
            }
        }
        let (p50, p99) = percentiles(samples);
        println!("real SDK Converse round trip to the local stub, 1000 calls: p50 {p50:?}, p99 {p99:?}");

        // The same request every time: with the response cache off every call goes to the stub;
        // with it on, every call after the first is a cache hit.
        for (label, ttl) in [
            ("cache off", chrono::Duration::zero()),
            ("cache hits", chrono::Duration::minutes(15)),
        ] {
            let store = Arc::new(MemoryStore::new());
            let ports = BedrockPorts {
                ledger: store.clone(),
                control: store.clone(),
                clock: Arc::new(SystemClock),
                sleeper: Arc::new(SystemClock),
                random: Arc::new(SeededRandom::new(1)),
            };
            let mut settings = BedrockSettings::new(catalog.clone(), Budgets::default());
            settings.response_cache_ttl = ttl;
            let model = BedrockModel::new(SdkConverse::new(client.clone()), settings, ports, LocalEngine::new(1));
            let mut samples = Vec::new();
            for i in 0..600 {
                let req = request(&format!("whole-{i}"));
                let began = Instant::now();
                let answer = model.decide(&req).await.expect("answer");
                assert!(answer.fallback.is_none(), "{:?}", answer.fallback);
                if i >= 100 {
                    samples.push(began.elapsed());
                }
            }
            let (p50, p99) = percentiles(samples);
            println!(
                "Bedrock adapter decide call through the stub (routing, ledger, HTTP, parse), {label}, 500 calls: p50 {p50:?}, p99 {p99:?}"
            );
        }
    });
}
