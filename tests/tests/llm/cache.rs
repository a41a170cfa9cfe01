//! The response cache: an identical request (model, role, system prompt, messages, schema,
//! inference settings) within the TTL reuses the stored, validated answer, free and without a
//! request; any difference misses; expiry follows the clock port.

use chrono::Duration;
use serde_json::json;
use shared::cost::{Budgets, LedgerScope};
use shared::domain::Role;
use shared::llm::LanguageModel;
use shared::llm::bedrock::BedrockSettings;
use tests::bedrock_stub::Reply;

use crate::fixture::{A, B, Fixture, bedrock_model, catalog};
use crate::requests::{analyze_req, history, ok_from, strategize_req};

fn cached(settings: &mut BedrockSettings) {
    settings.response_cache_ttl = Duration::minutes(15);
}

async fn cache_fixture(ids: &[&'static str]) -> Fixture {
    Fixture::with(catalog(ids), Budgets::default(), cached).await
}

#[tokio::test]
async fn a_repeated_request_is_answered_from_the_cache_for_nothing() {
    let f = cache_fixture(&[A]).await;
    f.stub.push_for(A, ok_from(A, Role::Analyze));
    let first = f
        .model
        .analyze(&analyze_req("env-1"))
        .await
        .expect("an answer");
    assert!(!first.cache_hit);
    assert!(first.cost_nano_usd > 0);
    let paid = f.today(&LedgerScope::Total).await;

    // Another envelope (no checkpoint applies), the same request.
    let again = f
        .model
        .analyze(&analyze_req("env-2"))
        .await
        .expect("an answer");

    assert_eq!(f.stub.request_count(), 1, "no second request");
    assert!(again.cache_hit);
    assert_eq!(again.value, first.value);
    assert_eq!(again.model_id, A, "the model whose answer is reused");
    assert_eq!(again.cost_nano_usd, 0);
    assert_eq!(again.bedrock_requests, 0);
    assert_eq!(again.usage, shared::store::Usage::default());
    assert_eq!(again.fallback, None);
    assert_eq!(f.today(&LedgerScope::Total).await, paid, "nothing paid");
}

#[tokio::test]
async fn any_difference_in_model_role_prompt_or_settings_misses() {
    let f = cache_fixture(&[A]).await;
    f.model
        .analyze(&analyze_req("env-1"))
        .await
        .expect("an answer");
    assert_eq!(f.stub.request_count(), 1);

    // Another prompt: one more closed evaluation in the history.
    let mut longer = analyze_req("env-2");
    longer.history = history(5);
    let answer = f.model.analyze(&longer).await.expect("an answer");
    assert!(!answer.cache_hit);
    assert_eq!(f.stub.request_count(), 2);

    // Another role.
    let answer = f
        .model
        .strategize(&strategize_req("env-3"))
        .await
        .expect("an answer");
    assert!(!answer.cache_hit);
    assert_eq!(f.stub.request_count(), 3);

    // Another model, over the same store.
    let mut on_b = f.settings.clone();
    on_b.catalog = catalog(&[B]);
    let model_b = bedrock_model(&f.stub.url(), &f.store, &f.clock, on_b);
    let answer = model_b
        .analyze(&analyze_req("env-4"))
        .await
        .expect("an answer");
    assert!(!answer.cache_hit);
    assert_eq!(answer.model_id, B);
    assert_eq!(f.stub.request_count(), 4);

    // Other inference settings.
    let mut warmer = f.settings.clone();
    if let Some(role) = warmer.roles.get_mut(&Role::Analyze) {
        role.temperature = 0.9;
    }
    let warm = bedrock_model(&f.stub.url(), &f.store, &f.clock, warmer);
    let answer = warm
        .analyze(&analyze_req("env-5"))
        .await
        .expect("an answer");
    assert!(!answer.cache_hit);
    assert_eq!(f.stub.request_count(), 5);

    // And the first request again: a hit.
    let answer = f
        .model
        .analyze(&analyze_req("env-6"))
        .await
        .expect("an answer");
    assert!(answer.cache_hit);
    assert_eq!(f.stub.request_count(), 5);
}

#[tokio::test]
async fn a_cached_answer_expires_with_the_clock() {
    let f = cache_fixture(&[A]).await;
    f.model
        .analyze(&analyze_req("env-1"))
        .await
        .expect("an answer");
    f.clock
        .advance(Duration::minutes(15) - Duration::seconds(1));
    assert!(
        f.model
            .analyze(&analyze_req("env-2"))
            .await
            .expect("an answer")
            .cache_hit
    );
    f.clock.advance(Duration::seconds(1));

    let late = f
        .model
        .analyze(&analyze_req("env-3"))
        .await
        .expect("an answer");

    assert!(!late.cache_hit);
    assert_eq!(f.stub.request_count(), 2);
}

#[tokio::test]
async fn a_zero_ttl_turns_the_cache_off() {
    let f = Fixture::with(catalog(&[A]), Budgets::default(), |s| {
        s.response_cache_ttl = Duration::zero();
    })
    .await;
    for envelope in ["env-1", "env-2"] {
        let answer = f
            .model
            .analyze(&analyze_req(envelope))
            .await
            .expect("an answer");
        assert!(!answer.cache_hit);
    }
    assert_eq!(f.stub.request_count(), 2);
}

#[tokio::test]
async fn only_answers_that_validated_are_cached() {
    let f = cache_fixture(&[A]).await;
    // An answer that does not validate, then the repair's valid one.
    f.stub.push_for(
        A,
        Reply::tool(
            shared::llm::prompts::tool_name(Role::Analyze),
            json!({"not": "an analysis"}),
        ),
    );
    f.stub.push_for(A, ok_from(A, Role::Analyze));
    let first = f
        .model
        .analyze(&analyze_req("env-1"))
        .await
        .expect("an answer");
    assert_eq!(first.bedrock_requests, 2, "the answer and its repair");

    // Nothing of that was stored under the request: it is sent again, and this valid answer is.
    f.stub.push_for(A, ok_from(A, Role::Analyze));
    let second = f
        .model
        .analyze(&analyze_req("env-2"))
        .await
        .expect("an answer");
    assert!(!second.cache_hit);
    assert_eq!(f.stub.request_count(), 3);
    let third = f
        .model
        .analyze(&analyze_req("env-3"))
        .await
        .expect("an answer");
    assert!(third.cache_hit);
    assert_eq!(third.value, second.value);
    assert_eq!(f.stub.request_count(), 3);
}

/// Runs `generations` of the pipeline on the stub's default answers and returns (Bedrock
/// requests, LLM calls, cache hits).
async fn demo_run(cache_ttl: Duration, generations: u32) -> (usize, usize, usize) {
    use std::sync::Arc;

    use shared::bus::local::LocalBus;
    use shared::clock::SimClock;
    use shared::local::{LocalHome, RunOptions, Silent, init_system};
    use shared::stages::{Deps, PipelineConfig};
    use shared::store::memory::MemoryStore;
    use shared::store::{EvolutionStore, SystemSettings};
    use tests::bedrock_stub::StubServer;

    use crate::fixture::start;
    use crate::requests::system_id;

    let stub = StubServer::start().await;
    let store = Arc::new(MemoryStore::new());
    let clock = Arc::new(SimClock::new(start()));
    let mut settings = BedrockSettings::new(catalog(&[A, B]), Budgets::default());
    settings.response_cache_ttl = cache_ttl;
    let model = crate::fixture::bedrock_model(&stub.url(), &store, &clock, settings);
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
    let report = home
        .runner(&crate::security::Flat)
        .run(
            &system_id(),
            &RunOptions {
                generations,
                ..RunOptions::default()
            },
            &Silent,
        )
        .await
        .expect("the run completes");
    assert_eq!(report.generations, generations, "{report:?}");
    let calls = store
        .list_llm_calls(Some(&system_id()), None)
        .await
        .expect("memory store");
    let hits = calls.iter().filter(|c| c.cache_hit).count();
    (stub.request_count(), calls.len(), hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_demo_like_run_the_cache_never_adds_requests() {
    let (without, calls_without, hits_without) = demo_run(Duration::zero(), 12).await;
    let (with, calls_with, hits_with) = demo_run(Duration::minutes(15), 12).await;
    println!(
        "12 generations on the stub: {without} Bedrock requests for {calls_without} LLM calls \
         without the cache; {with} requests for {calls_with} calls ({hits_with} hits) with it"
    );
    assert_eq!(hits_without, 0);
    assert!(with <= without, "{with} > {without}");
}

/// Asking again after a DEFER is a new question: the deferral count is part of the prompt, so the
/// cached DEFER is not what the second ask gets; the first ask's key is unchanged.
#[tokio::test]
async fn a_deferred_proposal_asked_again_is_not_served_from_the_cache() {
    let f = cache_fixture(&[A]).await;
    let first = crate::requests::decide_req("env-1", 0.5, 0.9);
    f.model.decide(&first).await.expect("an answer");
    assert_eq!(f.stub.request_count(), 1);
    let same = crate::requests::decide_req("env-2", 0.5, 0.9);
    assert!(f.model.decide(&same).await.expect("an answer").cache_hit);
    assert_eq!(f.stub.request_count(), 1);

    let mut again = crate::requests::decide_req("env-3", 0.5, 0.9);
    again.deferrals = 1;
    let answer = f.model.decide(&again).await.expect("an answer");
    assert!(!answer.cache_hit);
    assert_eq!(f.stub.request_count(), 2);
}
