//! The healing table (docs/architecture.md, "The LLM layer"), read off the stub's request log: which models were
//! asked, how often, and in which order.

use std::time::Duration;

use serde_json::json;
use shared::cost::Budgets;
use shared::domain::{EvolutionAnalysis, Recommendation, Role};
use shared::engine::LOCAL_MODEL_ID;
use shared::llm::{LanguageModel, LlmAnswer, validate};
use tests::bedrock_stub::{DEFAULT_SCRIPTED_USAGE, Reply, StubOptions};

use crate::fixture::{
    A, B, C, Fixture, catalog, catalog_of, cost_u64, data_document, forced_tool, history_len, spec,
    system_text, times, user_text,
};
use crate::requests::{
    analysis_json, analyze_req, decide_req, decision_json, ok_from, reply_from, resolve_req,
    schema_and_genes, strategize_req,
};

async fn analyze(f: &Fixture, envelope_id: &str) -> LlmAnswer<EvolutionAnalysis> {
    f.model
        .analyze(&analyze_req(envelope_id))
        .await
        .expect("an analysis")
}

fn then(mut first: Vec<String>, next: &str) -> Vec<String> {
    first.push(next.to_owned());
    first
}

/// The most full-jitter backoff can sleep before retry `n` (0-based).
fn backoff_cap(f: &Fixture, n: u32) -> Duration {
    let retry = &f.settings.retry;
    retry
        .base_backoff
        .saturating_mul(1 << n)
        .min(retry.max_backoff)
}

fn slept(f: &Fixture, since: chrono::DateTime<chrono::Utc>) -> Duration {
    (f.now() - since)
        .to_std()
        .expect("time never runs backwards")
}

#[tokio::test]
async fn throttling_is_retried_with_backoff_up_to_the_policy_then_the_next_model() {
    for retries in [0_u32, 1, 2, 4] {
        let f = Fixture::with(catalog(&[A, B, C]), Budgets::default(), |s| {
            s.retry.retries_per_model = retries;
        })
        .await;
        let attempts = retries as usize + 1;
        for _ in 0..attempts {
            f.stub.push_for(A, Reply::throttled());
        }
        f.stub.push_for(B, ok_from(B, Role::Analyze));
        let before = f.now();

        let answer = analyze(&f, "env-throttled").await;

        assert_eq!(f.models_called(), then(times(A, attempts), B));
        assert_eq!(answer.model_id, B);
        assert_eq!(answer.bedrock_requests as usize, attempts + 1);
        assert_eq!(answer.fallback, None);
        // Errors cost nothing; only the answer is billed.
        assert_eq!(
            answer.cost_nano_usd,
            cost_u64(&spec(B).rates, &DEFAULT_SCRIPTED_USAGE)
        );
        // The backoff sleeps on the simulated clock, with full jitter under each retry's cap.
        let waited = slept(&f, before);
        let cap: Duration = (0..retries).map(|n| backoff_cap(&f, n)).sum();
        assert!(
            waited <= cap,
            "{retries} retries slept {waited:?} > {cap:?}"
        );
        assert_eq!(waited > Duration::ZERO, retries > 0, "slept {waited:?}");
        // Every throttled request counts against the model's breaker.
        let circuit = f.circuit(A).await.expect("a circuit record");
        assert_eq!(circuit.consecutive_failures, retries + 1);
        assert_eq!(f.stub.pending(), 0);
    }
}

#[tokio::test]
async fn model_timeouts_and_server_errors_are_retried_like_throttling() {
    for (status, reply) in [
        (408, Reply::model_timeout()),
        (500, Reply::internal()),
        (503, Reply::unavailable()),
    ] {
        let f = Fixture::new(&[A, B, C]).await;
        let attempts = f.settings.retry.retries_per_model as usize + 1;
        for _ in 0..attempts {
            f.stub.push_for(A, reply.clone());
        }
        f.stub.push_for(B, ok_from(B, Role::Analyze));
        let before = f.now();

        let answer = analyze(&f, "env-transient").await;

        assert_eq!(f.models_called(), then(times(A, attempts), B), "{status}");
        let statuses: Vec<u16> = f.requests().iter().map(|r| r.replied_status).collect();
        let mut expected = vec![status; attempts];
        expected.push(200);
        assert_eq!(statuses, expected);
        assert_eq!(answer.model_id, B, "{status}");
        assert_eq!(answer.fallback, None);
        assert!(slept(&f, before) > Duration::ZERO, "{status}: no backoff");
    }
}

#[tokio::test]
async fn input_too_long_trims_history_oldest_first_then_moves_to_a_larger_context_model() {
    // B ranks above C but has a smaller context window than A: only C is larger.
    let mut small_b = spec(B);
    small_b.context_window = 4_096;
    let f = Fixture::with(
        catalog_of(&[spec(A), small_b, spec(C)]),
        Budgets::default(),
        |_| {},
    )
    .await;
    for _ in 0..10 {
        f.stub.push_for(A, Reply::input_too_long());
    }
    f.stub.push_for(C, ok_from(C, Role::Analyze));
    let mut req = analyze_req("env-too-long");
    req.history = crate::requests::history(20);
    let before = f.now();

    let answer = f.model.analyze(&req).await.expect("an analysis");

    let called = f.models_called();
    let a_requests = called.iter().take_while(|m| *m == A).count();
    assert_eq!(called, then(times(A, a_requests), C));
    assert_eq!(answer.model_id, C);
    // History is halved on every "too long" until none is left; only then does the call move on.
    let requests = f.requests();
    let kept: Vec<usize> = requests[..a_requests].iter().map(history_len).collect();
    assert_eq!(kept, [20, 15, 7, 3, 1, 0]);
    assert!(
        kept[1] < kept[0],
        "the second request must carry less history"
    );
    // The oldest entries go first: what is left is the newest.
    let second = data_document(&requests[1]);
    let generations: Vec<u64> = second["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|h| h["generation"].as_u64().expect("a generation"))
        .collect();
    assert_eq!(generations, (6..=20).collect::<Vec<_>>());
    // The larger model gets the trimmed prompt too.
    let (_, data) = user_text(&requests[a_requests])
        .split_once("\n\nData:\n")
        .expect("a data section");
    let data: serde_json::Value = serde_json::from_str(data).expect("JSON data");
    assert_eq!(data["history"], json!([]));
    // Trimming is not a transient failure: no backoff, and the breaker is untouched.
    assert_eq!(slept(&f, before), Duration::ZERO);
    assert_eq!(f.circuit(A).await, None);
}

#[tokio::test]
async fn validation_and_not_found_errors_move_to_the_next_model_without_retry() {
    for reply in [
        Reply::error(
            400,
            "ValidationException",
            "Malformed input request: #: extraneous key [foo] is not permitted",
        ),
        Reply::not_found(),
    ] {
        let f = Fixture::new(&[A, B, C]).await;
        f.stub.push_for(A, reply.clone());
        f.stub.push_for(A, ok_from(A, Role::Analyze));
        f.stub.push_for(B, ok_from(B, Role::Analyze));
        let before = f.now();

        let answer = analyze(&f, "env-permanent").await;

        assert_eq!(f.models_called(), [A, B], "{reply:?}");
        assert_eq!(answer.model_id, B);
        assert_eq!(answer.bedrock_requests, 2);
        assert_eq!(slept(&f, before), Duration::ZERO, "{reply:?}: no backoff");
        // Not the model's health: the breaker does not count them.
        assert_eq!(f.circuit(A).await, None, "{reply:?}");
    }
}

#[tokio::test]
async fn a_malformed_response_body_is_retried_on_the_same_model() {
    for garbage in [
        Reply::raw(200, "{\"output\": {\"message\": "),
        Reply::raw(200, "not json at all"),
        Reply::raw(502, "<html><body>Bad Gateway</body></html>"),
    ] {
        let f = Fixture::new(&[A, B, C]).await;
        f.stub.push_for(A, garbage.clone());
        f.stub.push_for(A, ok_from(A, Role::Analyze));

        let answer = analyze(&f, "env-malformed").await;

        assert_eq!(f.models_called(), [A, A], "{garbage:?}");
        assert_eq!(answer.model_id, A);
        assert_eq!(answer.value, crate::requests::analysis());
        assert_eq!(answer.bedrock_requests, 2);
        assert_eq!(
            answer.cost_nano_usd,
            cost_u64(&spec(A).rates, &DEFAULT_SCRIPTED_USAGE)
        );
    }
}

/// One kind of unusable answer, for a role.
struct Invalid {
    what: &'static str,
    role: Role,
    reply: Reply,
}

fn invalid_answers() -> Vec<Invalid> {
    vec![
        Invalid {
            what: "wrong tool name",
            role: Role::Analyze,
            reply: Reply::tool("submit_strategy", analysis_json()),
        },
        Invalid {
            what: "schema mismatch",
            role: Role::Analyze,
            reply: Reply::tool(
                "submit_analysis",
                json!({"current_state_assessment": 7, "confidence_score": "high"}),
            ),
        },
        Invalid {
            what: "APPROVE above the risk ceiling",
            role: Role::Decide,
            reply: Reply::tool("submit_decision", decision_json("APPROVE")),
        },
        Invalid {
            what: "truncated at max_tokens",
            role: Role::Analyze,
            reply: Reply::max_tokens("{\"current_state_assessment\": \"stable, sli"),
        },
    ]
}

/// Calls `role` on envelope `id`; risky decisions (local risk 0.9, ceiling 0.8).
async fn call(f: &Fixture, role: Role, id: &str) -> (String, u32, Option<String>) {
    match role {
        Role::Analyze => {
            let a = analyze(f, id).await;
            (a.model_id, a.bedrock_requests, a.fallback)
        }
        Role::Decide => {
            let a = f
                .model
                .decide(&decide_req(id, 0.9, 0.8))
                .await
                .expect("a decision");
            assert_ne!(
                a.value.recommendation,
                Recommendation::Approve,
                "never APPROVE above the ceiling"
            );
            (a.model_id, a.bedrock_requests, a.fallback)
        }
        other => panic!("no invalid-answer case for {other:?}"),
    }
}

#[tokio::test]
async fn an_invalid_answer_gets_exactly_one_repair_request_then_the_next_model() {
    for case in invalid_answers() {
        let f = Fixture::new(&[A, B, C]).await;
        f.stub.push_for(A, case.reply.clone());
        f.stub.push_for(A, case.reply.clone());
        f.stub.push_for(A, ok_from(A, case.role));
        f.stub.push_for(B, ok_from(B, case.role));

        let (model, requests, fallback) = call(&f, case.role, "env-invalid").await;

        // The answer, one repair on the cheapest structured model (A), then the next model.
        assert_eq!(f.models_called(), [A, A, B], "{}", case.what);
        assert_eq!(model, B, "{}", case.what);
        assert_eq!(requests, 3);
        assert_eq!(fallback, None);
        let log = f.requests();
        let repair = &log[1];
        assert_eq!(
            forced_tool(repair),
            Some(shared::llm::prompts::tool_name(case.role))
        );
        let system = system_text(repair).expect("a system prompt");
        assert!(
            system.contains("A previous answer to this request was rejected"),
            "{}: {system}",
            case.what
        );
        assert!(
            !system_text(&log[0])
                .expect("a system prompt")
                .contains("rejected"),
            "{}",
            case.what
        );
        assert_eq!(data_document(repair), data_document(&log[0]));
    }
}

#[tokio::test]
async fn a_model_that_keeps_answering_out_of_bounds_costs_at_most_three_billed_answers() {
    for case in invalid_answers() {
        let f = Fixture::new(&[A, B, C]).await;
        for model in [A, A, B, C] {
            f.stub.push_for(model, case.reply.clone());
        }

        let (model, requests, fallback) = call(&f, case.role, "env-walk").await;

        // The first answer, one repair, one other model: then the local engine, not C.
        assert_eq!(f.models_called(), [A, A, B], "{}", case.what);
        assert_eq!(model, LOCAL_MODEL_ID, "{}", case.what);
        assert_eq!(requests, 3);
        let reason = fallback.expect("a fallback reason");
        assert!(reason.contains("call budget"), "{}: {reason}", case.what);
        assert_eq!(f.stub.pending(), 1, "C's answer was never asked for");
    }
}

#[tokio::test]
async fn a_role_call_is_never_charged_past_its_money_budget() {
    for multiple in [1, 3] {
        let f = Fixture::with(catalog(&[A, B, C]), Budgets::default(), |s| {
            s.retry.max_cost_multiple = multiple;
            s.retry.retries_per_model = 0;
            if let Some(analyze) = s.roles.get_mut(&Role::Analyze) {
                analyze.timeout = Duration::from_millis(150);
            }
        })
        .await;
        // A is given up mid-work: charged its whole reservation, the worst case.
        f.stub.push_for(
            A,
            Reply::slow(Duration::from_millis(900), ok_from(A, Role::Analyze)),
        );
        f.stub.push_for(B, ok_from(B, Role::Analyze));

        let a = analyze(&f, "env-money").await;

        let paid = f.today(&shared::cost::LedgerScope::Total).await;
        if multiple == 1 {
            // Nothing more fits in one worst case: the local engine answers.
            assert_eq!(f.models_called(), [A]);
            assert_eq!(
                (a.model_id.as_str(), a.bedrock_requests),
                (LOCAL_MODEL_ID, 1)
            );
            let reason = a.fallback.expect("a fallback reason");
            assert!(reason.contains("call budget"), "{reason}");
        } else {
            assert_eq!(f.models_called(), [A, B]);
            assert_eq!(a.model_id, B);
        }
        assert_eq!(paid.spent_nano, a.cost_nano_usd);
        assert_eq!(paid.reserved_nano, 0);
    }
}

#[tokio::test]
async fn a_successful_repair_answers_and_both_answers_are_paid_for() {
    for case in invalid_answers() {
        let f = Fixture::new(&[A, B, C]).await;
        f.stub.push_for(A, case.reply.clone());
        f.stub.push_for(A, ok_from(A, case.role));

        let (model, requests, fallback) = call(&f, case.role, "env-repaired").await;

        assert_eq!(f.models_called(), [A, A], "{}", case.what);
        assert_eq!((model.as_str(), requests, fallback), (A, 2, None));
        let paid = f.today(&shared::cost::LedgerScope::Total).await;
        assert_eq!(
            paid.spent_nano,
            2 * cost_u64(&spec(A).rates, &DEFAULT_SCRIPTED_USAGE),
            "{}",
            case.what
        );
        assert_eq!(paid.reserved_nano, 0);
    }
}

#[tokio::test]
async fn when_every_model_fails_the_local_engine_gives_a_valid_typed_answer() {
    let always_throttled = || StubOptions {
        fail_first: usize::MAX,
        ..StubOptions::default()
    };
    let (schema, _) = schema_and_genes();
    for role in [Role::Analyze, Role::Strategize, Role::Decide, Role::Resolve] {
        let f = Fixture::with_stub(
            always_throttled(),
            catalog(&[A, B, C]),
            Budgets::default(),
            |_| {},
        )
        .await;
        let per_model = f.settings.retry.retries_per_model as usize + 1;
        let env = format!("env-all-fail-{}", role.as_str());
        let (model_id, requests, fallback, usage_total, cost) = match role {
            Role::Analyze => {
                let a = analyze(&f, &env).await;
                let json = serde_json::to_value(&a.value).expect("serializable");
                validate::analysis(json).expect("a valid analysis");
                (
                    a.model_id,
                    a.bedrock_requests,
                    a.fallback,
                    a.usage.total(),
                    a.cost_nano_usd,
                )
            }
            Role::Strategize => {
                let a = f
                    .model
                    .strategize(&strategize_req(&env))
                    .await
                    .expect("a strategy");
                let json = serde_json::to_value(&a.value).expect("serializable");
                validate::strategy(json, &schema).expect("a valid strategy");
                (
                    a.model_id,
                    a.bedrock_requests,
                    a.fallback,
                    a.usage.total(),
                    a.cost_nano_usd,
                )
            }
            Role::Decide => {
                let a = f
                    .model
                    .decide(&decide_req(&env, 0.9, 0.8))
                    .await
                    .expect("a decision");
                let json = serde_json::to_value(&a.value).expect("serializable");
                validate::decision(json, 0.9, 0.8).expect("a valid decision below the ceiling");
                (
                    a.model_id,
                    a.bedrock_requests,
                    a.fallback,
                    a.usage.total(),
                    a.cost_nano_usd,
                )
            }
            Role::Resolve => {
                let a = f
                    .model
                    .resolve_conflict(&resolve_req(&env))
                    .await
                    .expect("a resolution");
                let json = serde_json::to_value(&a.value).expect("serializable");
                validate::resolution(json).expect("a valid resolution");
                (
                    a.model_id,
                    a.bedrock_requests,
                    a.fallback,
                    a.usage.total(),
                    a.cost_nano_usd,
                )
            }
        };
        let mut expected = times(A, per_model);
        expected.extend(times(B, per_model));
        expected.extend(times(C, per_model));
        assert_eq!(f.models_called(), expected, "{role:?}");
        assert_eq!(model_id, LOCAL_MODEL_ID);
        assert_eq!(requests as usize, 3 * per_model);
        let reason = fallback.expect("the fallback reason");
        assert!(reason.contains("throttled"), "{role:?}: {reason}");
        assert_eq!((usage_total, cost), (0, 0));
    }
}

#[tokio::test]
async fn a_text_answer_for_a_tool_use_model_is_invalid_too() {
    // A model that ignores the forced tool and writes prose is repaired like any invalid answer.
    let f = Fixture::new(&[A, B]).await;
    f.stub
        .push_for(A, reply_from(C, Role::Analyze, &analysis_json()));
    f.stub.push_for(A, ok_from(A, Role::Analyze));

    let answer = analyze(&f, "env-prose").await;

    assert_eq!(f.models_called(), [A, A]);
    assert_eq!(answer.model_id, A);
    assert_eq!(answer.bedrock_requests, 2);
}
