//! Seed Property 6: when Bedrock cannot answer, the local engine does, at most five seconds after
//! the first failure. Time here is the simulated clock's (backoff sleeps advance it), so the
//! bound is checked exactly and without waiting; and a whole pipeline cycle still completes.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use shared::clock::{Clock, SimClock};
use shared::cost::Budgets;
use shared::domain::{EvolutionAnalysis, FitnessScore, GeneValue, Genes, Role};
use shared::engine::LOCAL_MODEL_ID;
use shared::evaluator::{EvalError, Evaluator};
use shared::llm::bedrock::BedrockSettings;
use shared::llm::{LanguageModel, LlmAnswer};
use shared::local::{LocalHome, RunOptions, Silent, init_system};
use shared::stages::{Deps, PipelineConfig};
use shared::store::memory::MemoryStore;
use shared::store::{EvolutionStore, SystemSettings};
use tests::bedrock_stub::{Reply, StubOptions, StubServer};

use crate::fixture::{A, B, C, Fixture, bedrock_model, catalog, start};
use crate::requests::{analysis_json, analyze_req, gene, ok_from, reply_from, system_id};

fn always_throttled() -> StubOptions {
    StubOptions {
        fail_first: usize::MAX,
        ..StubOptions::default()
    }
}

/// Virtual time from `t0` to now.
fn since(f: &Fixture, t0: DateTime<Utc>) -> Duration {
    (f.now() - t0).to_std().expect("time never runs backwards")
}

async fn analyze_at_t0(
    f: &Fixture,
    envelope: &str,
) -> (DateTime<Utc>, LlmAnswer<EvolutionAnalysis>) {
    let t0 = f.now();
    let answer = f
        .model
        .analyze(&analyze_req(envelope))
        .await
        .expect("an answer");
    // Nothing passes before the first request, so the first failure happened at `t0`.
    assert_ne!(f.requests()[0].replied_status, 200);
    (t0, answer)
}

#[tokio::test]
async fn with_the_default_policy_the_local_engine_answers_within_five_virtual_seconds() {
    let f = Fixture::with_stub(
        always_throttled(),
        catalog(&[A, B, C]),
        Budgets::default(),
        |_| {},
    )
    .await;
    let (t0, answer) = analyze_at_t0(&f, "env-default").await;
    let within = f.settings.retry.fallback_within;
    assert_eq!(within, Duration::from_secs(5));
    assert!(since(&f, t0) <= within, "{:?}", since(&f, t0));
    assert!(answer.latency_ms <= 5_000, "{}", answer.latency_ms);
    assert_eq!(answer.model_id, LOCAL_MODEL_ID);
    assert!(answer.fallback.is_some());
    assert_eq!(answer.bedrock_requests, 9);
}

#[tokio::test]
async fn long_backoffs_are_cut_short_at_the_five_second_mark() {
    // A policy whose retries alone would take far longer than five seconds.
    let f = Fixture::with_stub(
        always_throttled(),
        catalog(&[A, B, C]),
        Budgets::default(),
        |s| {
            s.retry.retries_per_model = 50;
            s.retry.base_backoff = Duration::from_secs(1);
            s.retry.max_backoff = Duration::from_secs(4);
        },
    )
    .await;
    let (t0, answer) = analyze_at_t0(&f, "env-long-backoff").await;

    let elapsed = since(&f, t0);
    assert!(
        elapsed <= Duration::from_secs(5),
        "fallback after {elapsed:?}"
    );
    assert!(answer.latency_ms <= 5_000, "{}", answer.latency_ms);
    assert_eq!(answer.model_id, LOCAL_MODEL_ID);
    let reason = answer.fallback.expect("a fallback reason");
    assert!(reason.contains("no answer within"), "{reason}");
    assert!(answer.bedrock_requests > 1);
    // Only A was reached: its retries used up the five seconds.
    assert!(f.models_called().iter().all(|m| m == A));
}

#[tokio::test]
async fn slow_answers_time_out_are_charged_at_their_reservation_and_the_fallback_arrives_in_time() {
    let f = Fixture::with(catalog(&[A, B, C]), Budgets::default(), |s| {
        if let Some(analyze) = s.roles.get_mut(&Role::Analyze) {
            analyze.timeout = Duration::from_millis(150);
        }
    })
    .await;
    for model in [A, B, C] {
        for _ in 0..=f.settings.retry.retries_per_model {
            f.stub.push_for(
                model,
                Reply::slow(Duration::from_millis(900), ok_from(model, Role::Analyze)),
            );
        }
    }
    let t0 = f.now();
    let started = std::time::Instant::now();

    let answer = f
        .model
        .analyze(&analyze_req("env-slow"))
        .await
        .expect("an answer");

    assert!(since(&f, t0) <= Duration::from_secs(5));
    assert_eq!(answer.model_id, LOCAL_MODEL_ID);
    let reason = answer.fallback.expect("a fallback reason");
    // Bedrock may bill a request it was still working on: three of them are the call's budget.
    assert!(reason.contains("call budget"), "{reason}");
    assert_eq!(answer.bedrock_requests, 3);
    // Each request was given up after the role's timeout, not after the slow answer.
    assert!(
        started.elapsed() < Duration::from_millis(900) * 3,
        "{:?}",
        started.elapsed()
    );
    // Each is charged at what was reserved for it, and nothing stays held.
    let paid = f.today(&shared::cost::LedgerScope::Total).await;
    assert!(answer.cost_nano_usd > 0);
    assert_eq!(paid.spent_nano, answer.cost_nano_usd);
    assert_eq!(paid.reserved_nano, 0);
    assert_eq!(paid.calls, 3);
}

#[tokio::test]
async fn the_repair_request_is_bounded_by_the_call_deadline_and_the_fallback_window() {
    // Variant 0: a deadline 1.5 s away. Variant 1: a 1.5 s fallback window. (A request with
    // less than a second left is not sent at all.)
    for variant in 0..2 {
        let f = Fixture::with(catalog(&[A, B, C]), Budgets::default(), |s| {
            if variant == 1 {
                s.retry.fallback_within = Duration::from_millis(1_500);
            }
        })
        .await;
        f.stub
            .push_for(A, Reply::tool("submit_strategy", analysis_json()));
        f.stub.push_for(
            A,
            Reply::slow(Duration::from_secs(4), ok_from(A, Role::Analyze)),
        );
        f.stub
            .push_for(B, reply_from(B, Role::Analyze, &analysis_json()));
        let mut req = analyze_req("env-slow-repair");
        if variant == 0 {
            req.ctx.deadline = Some(f.now() + chrono::Duration::milliseconds(1_500));
        }

        let answer = f.model.analyze(&req).await.expect("an answer");

        // The slow repair is given up in time, and the next model answers.
        assert_eq!(f.models_called(), [A, A, B], "variant {variant}");
        assert_eq!(answer.model_id, B, "variant {variant}");
        assert_eq!(answer.bedrock_requests, 3);
    }
}

/// Fitness rises with `threads`.
#[derive(Debug)]
struct MoreThreads;

#[async_trait]
impl Evaluator for MoreThreads {
    async fn evaluate(&self, genes: &Genes) -> Result<FitnessScore, EvalError> {
        let threads = match genes.get(&gene("threads")) {
            Some(GeneValue::Int(t)) => *t as f64,
            _ => 0.0,
        };
        Ok(FitnessScore {
            score: 10.0 + threads,
            metrics: std::collections::BTreeMap::default(),
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_cycle_completes_on_the_local_engine_when_bedrock_throttles_everything() {
    let stub = StubServer::start_with(always_throttled())
        .await
        .expect("bind the stub on 127.0.0.1");
    let store = Arc::new(MemoryStore::new());
    // One clock for the pipeline and the adapter: backoff sleeps move the pipeline's time.
    let clock = Arc::new(SimClock::new(start()));
    let settings = BedrockSettings::new(catalog(&[A, B, C]), Budgets::default());
    let model = bedrock_model(&stub.url(), &store, &clock, settings);
    let home = LocalHome {
        deps: Deps {
            store: store.clone(),
            control: store.clone(),
            ledger: store.clone(),
            llm: Arc::new(model),
            clock: clock.clone(),
            money_clock: clock.clone(),
            config: PipelineConfig::default(),
        },
        bus: Arc::new(shared::bus::local::LocalBus::new(clock.clone())),
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
    let options = RunOptions {
        generations: 2,
        ..RunOptions::default()
    };

    let report = home
        .runner(&MoreThreads)
        .run(&system_id(), &options, &Silent)
        .await
        .expect("the run completes");

    assert_eq!(report.generations, 2, "{report:?}");
    assert_eq!(report.stopped, None);
    assert!(report.dead_letters.is_empty(), "{:?}", report.dead_letters);
    let calls = store
        .list_llm_calls(Some(&system_id()), None)
        .await
        .expect("memory store");
    assert!(!calls.is_empty());
    for call in &calls {
        assert_eq!(call.model_id, LOCAL_MODEL_ID, "{call:?}");
        assert!(call.fallback.is_some(), "{call:?}");
        assert_eq!(call.cost_nano_usd, 0);
    }
    // The first call tried every model; later ones found their circuits open or tried again.
    let tried: Vec<_> = calls.iter().filter(|c| c.bedrock_requests > 0).collect();
    assert!(!tried.is_empty());
    for call in tried {
        let reason = call.fallback.as_deref().unwrap_or_default();
        assert!(
            reason.contains("throttled") || reason.contains("within"),
            "{reason}"
        );
    }
    // Every request the stub saw is accounted for in the call records, and all were refused.
    let requests = stub.requests();
    assert_eq!(
        requests.len() as u64,
        calls
            .iter()
            .map(|c| u64::from(c.bedrock_requests))
            .sum::<u64>()
    );
    assert!(requests.iter().all(|r| r.replied_status == 429));
    assert_eq!(report.cost_nano_usd, 0);
    assert!(clock.now() > start());
}

/// Bedrock answers only after every invocation's deadline: each message of a cycle still
/// commits on its first delivery, its LLM calls given up early enough for the local engine to
/// answer and the stage to commit, and each given-up request charged at its reservation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cycle_whose_bedrock_answers_outlast_each_invocation_commits_every_message_first_time() {
    use shared::bus::local::LocalBus;
    use shared::clock::SystemClock;
    use shared::domain::{Envelope, Outgoing};
    use shared::pipeline::{self, Handled};
    use shared::store::CostLedger;

    let stub = StubServer::start().await;
    stub.delay_defaults(Duration::from_secs(60));
    let store = Arc::new(MemoryStore::new());
    let clock = Arc::new(SystemClock);
    let settings = BedrockSettings::new(catalog(&[A, B, C]), Budgets::default());
    let ports = shared::llm::bedrock::BedrockPorts {
        ledger: store.clone(),
        control: store.clone(),
        clock: clock.clone(),
        sleeper: clock.clone(),
        random: Arc::new(shared::clock::SeededRandom::new(crate::fixture::SEED)),
    };
    let model: Arc<dyn LanguageModel> = Arc::new(shared::llm::bedrock::BedrockModel::new(
        shared::llm::bedrock::SdkConverse::new(crate::fixture::client(&stub.url())),
        settings,
        ports,
        shared::engine::LocalEngine::new(crate::fixture::SEED),
    ));
    // Each message is its own invocation, with `budget` left when it starts.
    let budget = chrono::Duration::seconds(8);
    let deps = |deadline| Deps {
        store: store.clone(),
        control: store.clone(),
        ledger: store.clone(),
        llm: model.clone(),
        clock: clock.clone(),
        money_clock: clock.clone(),
        config: PipelineConfig {
            deadline: Some(deadline),
            ..PipelineConfig::default()
        },
    };
    let (schema, genes) = crate::requests::schema_and_genes();
    let init = deps(Utc::now() + budget);
    init_system(
        &init,
        &shared::bus::local::LocalBus::new(init.clock.clone()),
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
    let envelope: Envelope = serde_json::from_value(serde_json::json!({
        "id": "fit-baseline",
        "system_id": system_id().as_str(),
        "base_generation": 0,
        "sent_at": Utc::now().to_rfc3339(),
        "type": "FitnessReported",
        "generation": 0,
        "checksum": baseline.checksum,
        "score": 10.0,
        "metrics": {},
    }))
    .expect("a fitness report");
    bus.inject(Outgoing::new(envelope));

    let mut handled = Vec::new();
    while let Some(delivery) = bus.pop_due(Utc::now()) {
        if matches!(
            delivery.outgoing.envelope.body.destination(),
            shared::domain::Destination::Topic(_)
        ) {
            // Published for subscribers outside the pipeline.
            continue;
        }
        let deps = deps(Utc::now() + budget);
        let started = std::time::Instant::now();
        let outcome = pipeline::handle(&deps, &bus, &delivery.outgoing.envelope).await;
        let kind = delivery.outgoing.envelope.body.type_name();
        match outcome {
            Ok(Handled::Processed { .. }) => handled.push(kind),
            other => panic!("{kind} on its first delivery: {other:?}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "{kind} outlived its invocation: {:?}",
            started.elapsed()
        );
    }

    assert!(
        handled.contains(&"DecisionRequested") || handled.len() > 3,
        "{handled:?}"
    );
    let head = store
        .get_head(&system_id())
        .await
        .expect("head")
        .expect("exists");
    assert_eq!(head.generation, 1, "{handled:?}");
    let calls = store
        .list_llm_calls(Some(&system_id()), None)
        .await
        .expect("calls");
    assert!(!calls.is_empty());
    for call in &calls {
        assert_eq!(call.model_id, LOCAL_MODEL_ID, "{call:?}");
        // One request each, given up before the deadline's margin: no request is sent into the
        // margin, and the one given up is charged, not free.
        assert_eq!(call.bedrock_requests, 1, "{call:?}");
        assert!(call.cost_nano_usd > 0, "{call:?}");
    }
    let spent: u64 = calls.iter().map(|c| c.cost_nano_usd).sum();
    let total = store
        .entries(None)
        .await
        .expect("entries")
        .iter()
        .map(|e| e.cost_nano)
        .sum::<u64>();
    assert_eq!(spent, total);
    assert!(
        store
            .holds(Utc::now() + chrono::Duration::days(1), 10)
            .await
            .expect("holds")
            .is_empty()
    );
}
