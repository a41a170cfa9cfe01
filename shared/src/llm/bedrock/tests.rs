//! The role-call policy against a scripted [`Converse`]: each test scripts what Bedrock answers,
//! request by request, and checks what the policy did with it (retries, repair, safe answers,
//! security events, the ledger) without a network or an SDK type.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use chrono::TimeZone;
use serde_json::json;

use super::transport::{Converse, Reply, Request};
use super::*;
use crate::clock::{SeededRandom, SimClock};
use crate::domain::BudgetMode;
use crate::domain::{
    Complexity, GeneChange, GeneDef, GeneName, GeneSchema, GeneSpec, GeneValue, Genes, Mutation,
    SystemId, TaskContext,
};
use crate::engine::LocalEngine;
use crate::llm::DnaView;
use crate::store::memory::MemoryStore;

/// One request as the policy sent it.
#[derive(Debug, Clone)]
struct Sent {
    model: String,
    system: String,
}

/// Bedrock, scripted: each request takes the next scripted result (an answer given as the
/// JSON the role returns, wrapped as the model's structured output would carry it).
#[derive(Debug, Default, Clone)]
struct Scripted {
    script: Arc<Mutex<VecDeque<Result<Value, Failure>>>>,
    sent: Arc<Mutex<Vec<Sent>>>,
}

const USAGE: Usage = Usage {
    input_tokens: 1_000,
    output_tokens: 200,
    cache_read_tokens: 0,
    cache_write_tokens: 0,
};

impl Scripted {
    fn new(script: impl IntoIterator<Item = Result<Value, Failure>>) -> Self {
        Self {
            script: Arc::new(Mutex::new(script.into_iter().collect())),
            sent: Arc::default(),
        }
    }

    fn sent(&self) -> Vec<Sent> {
        self.sent.lock().expect("lock").clone()
    }
}

#[async_trait::async_trait]
impl Converse for Scripted {
    async fn converse(&self, request: Request<'_>) -> Result<Reply, Failure> {
        self.sent.lock().expect("lock").push(Sent {
            model: request.model.id.clone(),
            system: request.prompt.system.clone(),
        });
        let next = self.script.lock().expect("lock").pop_front();
        let value = next.unwrap_or_else(|| Err(Failure::Transport("script ended".into())))?;
        let block = match request.model.structured_output {
            StructuredOutput::ToolUse => RawContent::ToolUse {
                name: request.prompt.tool_name.to_owned(),
                input: value,
            },
            StructuredOutput::JsonSchema | StructuredOutput::Text => RawContent::Text {
                text: value.to_string(),
            },
        };
        Ok(Reply {
            answer: Ok(RawAnswer {
                blocks: vec![block],
                stop_reason: "end_turn".into(),
            }),
            usage: USAGE,
        })
    }
}

struct World {
    model: BedrockModel,
    bedrock: Scripted,
    store: Arc<MemoryStore>,
    clock: Arc<SimClock>,
}

fn world(script: impl IntoIterator<Item = Result<Value, Failure>>, budgets: Budgets) -> World {
    let bedrock = Scripted::new(script);
    let store = Arc::new(MemoryStore::new());
    let start = Utc
        .with_ymd_and_hms(2026, 3, 1, 12, 0, 0)
        .single()
        .expect("time");
    let clock = Arc::new(SimClock::new(start));
    let ports = BedrockPorts {
        ledger: store.clone(),
        control: store.clone(),
        clock: clock.clone(),
        sleeper: clock.clone(),
        random: Arc::new(SeededRandom::new(7)),
    };
    let catalog = ModelCatalog::embedded().expect("catalog");
    let settings = BedrockSettings::new(catalog, budgets);
    let model = BedrockModel::new(bedrock.clone(), settings, ports, LocalEngine::new(7));
    World {
        model,
        bedrock,
        store,
        clock,
    }
}

fn decide_request(local_risk: f64) -> DecideRequest {
    let gene = GeneName::parse("batch_size").expect("name");
    let schema = GeneSchema::from([(
        gene.clone(),
        GeneDef {
            spec: GeneSpec::Int {
                min: 1,
                max: 512,
                max_step: None,
            },
            risk_weight: 0.5,
            description: None,
            frozen: false,
        },
    )]);
    DecideRequest {
        ctx: CallContext {
            system_id: SystemId::parse("svc").expect("id"),
            envelope_id: "env-1".into(),
            task: TaskContext {
                role: Role::Decide,
                complexity: Complexity::Medium,
                estimated_tokens: 1_000,
                max_latency_ms: None,
                accuracy_requirements: 0.5,
                cost_sensitivity: 0.5,
                critical: false,
            },
            budget_mode: BudgetMode::Normal,
            deadline: None,
        },
        dna: DnaView {
            system_id: SystemId::parse("svc").expect("id"),
            generation: 3,
            schema,
            genes: Genes::from([(gene.clone(), GeneValue::Int(64))]),
            stable_fitness: Some(10.0),
            constraints: crate::domain::Constraints::default(),
        },
        history: Vec::new(),
        mutation: Mutation {
            id: "mut_1".into(),
            changes: vec![GeneChange {
                gene,
                value: GeneValue::Int(128),
            }],
            description: "double the batch".into(),
            predicted_impact: 0.1,
            plan_step: None,
        },
        local_risk,
        risk_ceiling: 0.7,
        deferrals: 0,
        batch: Vec::new(),
    }
}

fn decision(recommendation: &str, risk: f64) -> Value {
    json!({
        "recommendation": recommendation,
        "confidence": 0.8,
        "risk_assessment": {
            "overall_risk": risk,
            "technical_risk": risk,
            "business_risk": risk,
            "operational_risk": risk,
        },
        "reasoning": "a larger batch amortises the per-request overhead",
    })
}

impl World {
    async fn reserved_today(&self) -> u64 {
        let period = PeriodKey::of(crate::domain::BudgetPeriod::Day, self.clock.now());
        self.store
            .totals(period, &LedgerScope::Total)
            .await
            .expect("totals")
            .reserved_nano
    }
}

#[tokio::test]
async fn a_throttled_request_is_retried_on_the_same_model_after_a_backoff() {
    let w = world(
        [
            Err(Failure::Throttled("slow down".into())),
            Ok(decision("APPROVE", 0.2)),
        ],
        Budgets::default(),
    );
    let before = w.clock.now();
    let answer = w.model.decide(&decide_request(0.2)).await.expect("answer");
    let sent = w.bedrock.sent();
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert_eq!(sent[0].model, sent[1].model);
    assert!(
        w.clock.now() > before,
        "the backoff sleeps through the port"
    );
    assert_eq!(answer.fallback, None);
    assert_eq!(answer.value.recommendation, Recommendation::Approve);
    assert_eq!(answer.bedrock_requests, 2);
    assert!(answer.cost_nano_usd > 0);
    assert_eq!(w.reserved_today().await, 0, "every reservation is settled");
}

#[tokio::test]
async fn an_unusable_answer_gets_one_repair_that_says_what_was_wrong() {
    let w = world(
        [Ok(json!({"verdict": "yes"})), Ok(decision("REJECT", 0.2))],
        Budgets::default(),
    );
    let answer = w.model.decide(&decide_request(0.2)).await.expect("answer");
    let sent = w.bedrock.sent();
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert!(
        sent[1]
            .system
            .contains("A previous answer to this request was rejected"),
        "{}",
        sent[1].system
    );
    assert_eq!(answer.fallback, None);
    assert_eq!(answer.value.recommendation, Recommendation::Reject);
    assert_eq!(answer.model_id, sent[1].model);
}

#[tokio::test]
async fn an_incoherent_approval_becomes_a_deferral_without_asking_another_model() {
    // The model approves at a risk above the ceiling, twice (the answer and its repair).
    let w = world(
        [Ok(decision("APPROVE", 0.9)), Ok(decision("APPROVE", 0.9))],
        Budgets::default(),
    );
    let answer = w.model.decide(&decide_request(0.2)).await.expect("answer");
    assert_eq!(w.bedrock.sent().len(), 2);
    assert_eq!(answer.value.recommendation, Recommendation::Defer);
    assert!(
        answer
            .value
            .reasoning
            .starts_with("deferred: the model's incoherent answer"),
        "{}",
        answer.value.reasoning
    );
    assert!(answer.fallback.is_some());
}

#[tokio::test]
async fn a_denied_request_raises_a_security_event_and_is_not_tried_elsewhere() {
    let w = world(
        [
            Err(Failure::AccessDenied("not allowed".into())),
            Ok(decision("APPROVE", 0.2)),
        ],
        Budgets::default(),
    );
    let answer = w.model.decide(&decide_request(0.2)).await.expect("answer");
    assert_eq!(w.bedrock.sent().len(), 1, "no retry, no other model");
    assert_eq!(answer.security_events.len(), 1);
    let reason = answer.fallback.expect("the local engine answered");
    assert!(reason.contains("access denied"), "{reason}");
}

#[tokio::test]
async fn a_refused_reservation_sends_nothing_and_the_local_engine_answers() {
    let budgets = Budgets {
        global_daily: Some(1),
        ..Budgets::default()
    };
    let w = world([Ok(decision("APPROVE", 0.2))], budgets);
    let answer = w.model.decide(&decide_request(0.2)).await.expect("answer");
    assert!(w.bedrock.sent().is_empty());
    let reason = answer.fallback.expect("the local engine answered");
    assert!(reason.starts_with("budget:"), "{reason}");
    assert_eq!(answer.cost_nano_usd, 0);
}

#[tokio::test]
async fn a_paid_answer_is_resumed_from_its_checkpoint_after_a_crash() {
    let w = world([Ok(decision("REJECT", 0.2))], Budgets::default());
    let first = w.model.decide(&decide_request(0.2)).await.expect("answer");
    // The same envelope again, as after a crash before the commit: no second request.
    let again = w.model.decide(&decide_request(0.2)).await.expect("answer");
    assert_eq!(w.bedrock.sent().len(), 1);
    assert_eq!(again.value, first.value);
    assert_eq!(again.cost_nano_usd, first.cost_nano_usd);
}

#[tokio::test]
async fn a_model_that_keeps_failing_gives_the_call_to_the_local_engine_with_the_reason() {
    let w = world(
        std::iter::repeat_with(|| {
            Err(Failure::Server {
                status: 500,
                message: "boom".into(),
            })
        })
        .take(20),
        Budgets::default(),
    );
    let answer = w.model.decide(&decide_request(0.2)).await.expect("answer");
    let reason = answer.fallback.expect("the local engine answered");
    assert!(reason.contains("boom"), "{reason}");
    let policy = &w.model.settings.retry;
    assert!(answer.bedrock_requests <= policy.max_requests);
    assert_eq!(w.reserved_today().await, 0);
}
