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
async fn slow_answers_time_out_and_the_fallback_still_arrives_within_five_virtual_seconds() {
    let f = Fixture::with(catalog(&[A, B, C]), Budgets::default(), |s| {
        if let Some(analyze) = s.roles.get_mut(&Role::Analyze) {
            analyze.timeout = Duration::from_millis(150);
        }
    })
    .await;
    let attempts = 3 * (f.settings.retry.retries_per_model as usize + 1);
    for model in [A, B, C] {
        for _ in 0..attempts / 3 {
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
    assert!(reason.contains("no answer within"), "{reason}");
    assert_eq!(answer.bedrock_requests as usize, attempts);
    // (A request given up before it reached the stub is not in its log.)
    assert!(f.stub.request_count() <= attempts);
    // Each request was given up after the role's timeout, not after the slow answer.
    assert!(
        started.elapsed() < Duration::from_millis(900) * u32::try_from(attempts).expect("small"),
        "{:?}",
        started.elapsed()
    );
    // Answers that never arrived are not billed.
    assert_eq!(answer.cost_nano_usd, 0);
}

#[tokio::test]
async fn the_repair_request_is_bounded_by_the_call_deadline_and_the_fallback_window() {
    // Variant 0: a deadline 300 ms away. Variant 1: a 300 ms fallback window.
    for variant in 0..2 {
        let f = Fixture::with(catalog(&[A, B, C]), Budgets::default(), |s| {
            if variant == 1 {
                s.retry.fallback_within = Duration::from_millis(300);
            }
        })
        .await;
        f.stub
            .push_for(A, Reply::tool("submit_strategy", analysis_json()));
        f.stub.push_for(
            A,
            Reply::slow(Duration::from_millis(950), ok_from(A, Role::Analyze)),
        );
        f.stub
            .push_for(B, reply_from(B, Role::Analyze, &analysis_json()));
        let mut req = analyze_req("env-slow-repair");
        if variant == 0 {
            req.ctx.deadline = Some(f.now() + chrono::Duration::milliseconds(300));
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
