//! The built-in catalog through the real client: the seed's AI21 model (Jamba 1.5) answers every
//! role in text and is paid at its list prices, and a legacy seed model is called only once a
//! catalog file pins it.

use shared::cost::Budgets;
use shared::domain::{Complexity, Role};
use shared::llm::catalog::ModelCatalog;
use shared::llm::{LanguageModel, LlmAnswer, prompts};
use tests::bedrock_stub::{Reply, Usage as StubUsage};

use crate::fixture::{Fixture, Rates, cost_u64, forced_tool, system_text, user_text};
use crate::requests::{analyze_req, answer_json, decide_req, resolve_req, strategize_req};

const JAMBA_MINI: &str = "ai21.jamba-1-5-mini-v1:0";
const JAMBA_LARGE: &str = "ai21.jamba-1-5-large-v1:0";
const HAIKU_3: &str = "anthropic.claude-3-haiku-20240307-v1:0";

/// List prices in nano-USD per million tokens; no prompt caching, so cache tokens cost input.
fn rates(input: u64, output: u64) -> Rates {
    Rates {
        input,
        output,
        cache_read: input,
        cache_write_5m: input,
        cache_write_1h: input,
    }
}

/// The built-in catalog (or `catalog`) with only in-Region on-demand models allowed: there the
/// built-in catalog's usable models are the two Jambas.
async fn in_region(catalog: ModelCatalog) -> Fixture {
    Fixture::with(catalog, Budgets::default(), |settings| {
        settings.routing.preferred_geography = Some("regional".into());
    })
    .await
}

/// Which model answered a call, what it was paid, and whether the local engine stood in.
#[derive(Debug, PartialEq, Eq)]
struct Answered {
    model: String,
    cost: u64,
    fallback: Option<String>,
}

fn answered<T>(answer: LlmAnswer<T>) -> Answered {
    Answered {
        model: answer.model_id,
        cost: answer.cost_nano_usd,
        fallback: answer.fallback,
    }
}

/// Asks `role` once, at `complexity`, under a fresh envelope id.
async fn ask(f: &Fixture, role: Role, complexity: Complexity, envelope: &str) -> Answered {
    match role {
        Role::Analyze => {
            let mut req = analyze_req(envelope);
            req.ctx.task.complexity = complexity;
            answered(f.model.analyze(&req).await.expect("an analysis"))
        }
        Role::Strategize => {
            let mut req = strategize_req(envelope);
            req.ctx.task.complexity = complexity;
            answered(f.model.strategize(&req).await.expect("a strategy"))
        }
        Role::Decide => {
            let mut req = decide_req(envelope, 0.2, 0.8);
            req.ctx.task.complexity = complexity;
            answered(f.model.decide(&req).await.expect("a decision"))
        }
        Role::Resolve => {
            let mut req = resolve_req(envelope);
            req.ctx.task.complexity = complexity;
            answered(f.model.resolve_conflict(&req).await.expect("a resolution"))
        }
    }
}

/// JSON inside prose, as a model without structured output answers.
fn prose(role: Role, usage: StubUsage) -> Reply {
    let answer = answer_json(role);
    Reply::text(format!(
        "Here is the answer:\n```json\n{answer}\n```\nAsk if you need more."
    ))
    .with_usage(usage)
}

#[tokio::test]
async fn jamba_answers_every_role_in_text_at_its_list_prices() {
    let f = in_region(ModelCatalog::embedded().expect("the built-in catalog")).await;
    let usage = StubUsage::new(1_234, 567);
    let cases = [
        (Complexity::Low, JAMBA_MINI, rates(200_000_000, 400_000_000)),
        (
            Complexity::High,
            JAMBA_LARGE,
            rates(2_000_000_000, 8_000_000_000),
        ),
    ];
    let mut sent = 0;
    for (complexity, model, rates) in cases {
        for role in Role::ALL {
            f.stub.push_for(model, prose(role, usage));
            let envelope = format!("env-{}-{model}", role.as_str());
            let got = ask(&f, role, complexity, &envelope).await;
            let expected = Answered {
                model: model.to_owned(),
                cost: cost_u64(&rates, &usage),
                fallback: None,
            };
            assert_eq!(got, expected, "{role:?} at {complexity:?}");

            // Instructions, schema and data travel in one user message: no system prompt, no
            // tool and no output format for a model whose answers are read from text.
            let request = &f.requests()[sent];
            sent += 1;
            assert_eq!(request.model_id, model);
            assert_eq!(system_text(request), None);
            assert!(request.body.get("toolConfig").is_none());
            assert!(request.body.get("outputConfig").is_none());
            assert!(user_text(request).contains("\n\nData:\n"));
        }
    }
    assert_eq!(f.stub.request_count(), sent);
    assert_eq!(f.stub.pending(), 0);
}

#[tokio::test]
async fn a_legacy_model_is_called_only_once_a_catalog_file_pins_it() {
    let built_in = ModelCatalog::embedded().expect("the built-in catalog");

    let f = in_region(built_in.clone()).await;
    f.stub
        .push_for(JAMBA_MINI, prose(Role::Decide, StubUsage::new(10, 10)));
    let got = ask(&f, Role::Decide, Complexity::Low, "env-built-in").await;
    assert_eq!((got.model.as_str(), got.fallback), (JAMBA_MINI, None));
    assert_eq!(f.requests()[0].model_id, JAMBA_MINI);
    assert!(f.models_called().iter().all(|m| m != HAIKU_3));

    // An operator's copy of the built-in catalog, Claude 3 Haiku pinned, as `--model-catalog`.
    let mut document = serde_json::to_value(&built_in).expect("encode");
    for model in document["models"].as_array_mut().expect("models") {
        if model["id"] == HAIKU_3 {
            model["pinned"] = true.into();
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("models.json");
    std::fs::write(&path, document.to_string()).expect("write the catalog file");
    let pinned = ModelCatalog::load(Some(&path)).expect("the catalog file loads");

    let f = in_region(pinned).await;
    let usage = StubUsage::new(2_000, 300);
    let tool = prompts::tool_name(Role::Decide);
    f.stub.push_for(
        HAIKU_3,
        Reply::tool(tool, answer_json(Role::Decide)).with_usage(usage),
    );
    let got = ask(&f, Role::Decide, Complexity::Low, "env-pinned").await;
    let expected = Answered {
        model: HAIKU_3.to_owned(),
        cost: cost_u64(
            &Rates {
                input: 250_000_000,
                output: 1_250_000_000,
                cache_read: 30_000_000,
                cache_write_5m: 300_000_000,
                cache_write_1h: 500_000_000,
            },
            &usage,
        ),
        fallback: None,
    };
    assert_eq!(got, expected);
    assert_eq!(f.models_called(), [HAIKU_3]);
    assert_eq!(forced_tool(&f.requests()[0]), Some(tool));
}
