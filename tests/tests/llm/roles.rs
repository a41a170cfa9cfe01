//! Each role turns one structured answer into its typed result, whichever way the model
//! delivers it (forced tool, native JSON schema, JSON inside prose), and the request carries
//! what the model needs: the forced tool or output format, the system prompt and the data.

use std::fmt::Debug;

use serde_json::Value;
use shared::domain::{Recommendation, Role};
use shared::llm::bedrock::schema_for;
use shared::llm::prompts::{self, Prompt};
use shared::llm::{LanguageModel, LlmAnswer};
use tests::bedrock_stub::{Recorded, Usage as StubUsage};

use crate::fixture::{
    A, B, C, Fixture, cost_u64, data_document, forced_tool, spec, store_usage, system_text,
    user_text,
};
use crate::requests::{
    analysis, analysis_json, analyze_req, decide_req, decision, decision_json, reply_from,
    resolution, resolution_json, resolve_req, strategize_req, strategy, strategy_json,
};

fn check_answer<T: PartialEq + Debug>(
    answer: &LlmAnswer<T>,
    expected: &T,
    model: &str,
    usage: &StubUsage,
) {
    assert_eq!(&answer.value, expected, "typed value from {model}");
    assert_eq!(answer.model_id, model);
    assert_eq!(answer.usage, store_usage(usage));
    assert_eq!(answer.cost_nano_usd, cost_u64(&spec(model).rates, usage));
    assert_eq!(answer.bedrock_requests, 1);
    assert_eq!(answer.fallback, None);
    assert!(answer.budget_crossings.is_empty());
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).expect("valid JSON")
}

/// The request carries the structured-output mechanism of its model, the role's system prompt
/// and the role's data document.
fn check_request(f: &Fixture, r: &Recorded, model: &str, prompt: &Prompt) {
    assert_eq!(r.model_id, model);
    assert_eq!(r.replied_status, 200);
    let role = prompt.role;
    let max_tokens = f.settings.roles[&role].max_tokens.min(4_096);
    assert_eq!(r.body["inferenceConfig"]["maxTokens"], max_tokens);
    let temperature = r.body["inferenceConfig"]["temperature"]
        .as_f64()
        .expect("a temperature");
    assert!((temperature - f64::from(f.settings.roles[&role].temperature)).abs() < 1e-6);
    match spec(model).structured_output {
        "tool_use" => {
            assert_eq!(forced_tool(r), Some(prompts::tool_name(role)));
            let tool = &r.body["toolConfig"]["tools"][0]["toolSpec"];
            assert_eq!(tool["name"], prompts::tool_name(role));
            assert_eq!(tool["inputSchema"]["json"], schema_for(role));
            assert!(r.body.get("outputConfig").is_none());
            assert_eq!(system_text(r), Some(prompt.system.as_str()));
            assert_eq!(data_document(r), json(&prompt.user));
        }
        "json_schema" => {
            let format = &r.body["outputConfig"]["textFormat"];
            assert_eq!(format["type"], "json_schema");
            let definition = &format["structure"]["jsonSchema"];
            assert_eq!(definition["name"], prompts::tool_name(role));
            let schema = definition["schema"].as_str().expect("the schema as text");
            assert_eq!(json(schema), schema_for(role));
            assert!(r.body.get("toolConfig").is_none());
            assert_eq!(system_text(r), Some(prompt.system.as_str()));
            assert_eq!(data_document(r), json(&prompt.user));
        }
        _ => {
            // Text models take no system prompt: instructions, schema and data share one message.
            assert!(r.body.get("system").is_none());
            assert!(r.body.get("toolConfig").is_none());
            assert!(r.body.get("outputConfig").is_none());
            let text = user_text(r);
            assert!(text.starts_with(&prompt.system), "{text}");
            let (instructions, data) = text.split_once("\n\nData:\n").expect("a data section");
            assert!(instructions.contains(&schema_for(role).to_string()));
            assert_eq!(json(data), json(&prompt.user));
        }
    }
}

/// All four roles against a catalog holding only `model`.
async fn every_role_through(model: &'static str) {
    let f = Fixture::new(&[model]).await;
    let limit = f.settings.history_limit;
    let usages = [
        StubUsage::new(1_200, 340).with_cache(800, 64),
        StubUsage::new(2_345, 678),
        StubUsage::new(999, 1).with_cache(0, 17),
        StubUsage::new(1, 2).with_cache(3, 4),
    ];

    let req = analyze_req("env-analyze");
    f.stub
        .push(reply_from(model, Role::Analyze, &analysis_json()).with_usage(usages[0]));
    let answer = f.model.analyze(&req).await.expect("an analysis");
    check_answer(&answer, &analysis(), model, &usages[0]);
    check_request(&f, &f.requests()[0], model, &prompts::analyze(&req, limit));

    let req = strategize_req("env-strategize");
    f.stub
        .push(reply_from(model, Role::Strategize, &strategy_json()).with_usage(usages[1]));
    let answer = f.model.strategize(&req).await.expect("a strategy");
    check_answer(&answer, &strategy(), model, &usages[1]);
    check_request(
        &f,
        &f.requests()[1],
        model,
        &prompts::strategize(&req, limit),
    );

    let req = decide_req("env-decide", 0.5, 0.8);
    f.stub
        .push(reply_from(model, Role::Decide, &decision_json("APPROVE")).with_usage(usages[2]));
    let answer = f.model.decide(&req).await.expect("a decision");
    check_answer(
        &answer,
        &decision(Recommendation::Approve),
        model,
        &usages[2],
    );
    check_request(&f, &f.requests()[2], model, &prompts::decide(&req, limit));

    let req = resolve_req("env-resolve");
    f.stub
        .push(reply_from(model, Role::Resolve, &resolution_json()).with_usage(usages[3]));
    let answer = f.model.resolve_conflict(&req).await.expect("a resolution");
    check_answer(&answer, &resolution(), model, &usages[3]);
    check_request(&f, &f.requests()[3], model, &prompts::resolve(&req));

    assert_eq!(f.stub.request_count(), 4);
    assert_eq!(f.stub.pending(), 0);
}

#[tokio::test]
async fn tool_use_models_answer_every_role_through_the_forced_tool() {
    every_role_through(A).await;
}

#[tokio::test]
async fn json_schema_models_answer_every_role_with_a_json_text() {
    every_role_through(B).await;
}

#[tokio::test]
async fn text_models_answer_every_role_with_json_inside_prose() {
    every_role_through(C).await;
}
