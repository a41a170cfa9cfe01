//! LLM output is untrusted input (seed Property 1): whatever bytes or JSON arrive, extraction and
//! the four role parsers return a result or a typed error, and never panic.

use std::sync::LazyLock;

use proptest::prelude::*;
use serde_json::{Map, Value};
use shared::domain::{GeneSchema, Role};
use shared::llm::validate::{self, Extraction, RawAnswer, RawContent};

use crate::requests::{answer_json, schema_and_genes};

static SCHEMA: LazyLock<GeneSchema> = LazyLock::new(|| schema_and_genes().0);

/// Field names of the four answer types and the test genes, so generated objects reach past
/// "missing field" into the value checks.
const KEYS: &[&str] = &[
    "current_state_assessment",
    "strengths",
    "weaknesses",
    "opportunities",
    "threats",
    "recommended_focus_areas",
    "confidence_score",
    "reasoning",
    "primary_mutations",
    "contingency_mutations",
    "execution_order",
    "success_criteria",
    "risk_mitigation",
    "expected_outcomes",
    "timeline_estimate",
    "id",
    "changes",
    "gene",
    "value",
    "rationale",
    "predicted_impact",
    "contingency_for",
    "recommendation",
    "confidence",
    "risk_assessment",
    "overall_risk",
    "technical_risk",
    "business_risk",
    "operational_risk",
    "benefits",
    "drawbacks",
    "mitigation_strategies",
    "estimated_impact",
    "action",
    "retry_after_seconds",
    "immediate_actions",
    "root_cause_analysis",
    "prevention_measures",
    "success_metrics",
    "threads",
    "timeout_s",
    "codec",
];

/// Strings the enums and genes accept, besides arbitrary ones.
const WORDS: &[&str] = &[
    "APPROVE",
    "REJECT",
    "DEFER",
    "approve",
    "pause",
    "rollback_to_last_stable",
    "retry_later",
    "escalate",
    "resume",
    "threads",
    "timeout_s",
    "codec",
    "lz4",
    "zstd",
    "",
];

const TOOLS: &[&str] = &[
    "submit_analysis",
    "submit_strategy",
    "submit_decision",
    "submit_resolution",
    "other",
];

fn arb_string() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(WORDS).prop_map(str::to_owned),
        "[a-z_{}\\[\\]\":,\\\\ ]{0,12}",
        any::<String>().prop_map(|s| s.chars().take(12).collect()),
    ]
}

fn arb_key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(KEYS).prop_map(str::to_owned),
        1 => "[a-z_]{0,8}",
    ]
}

/// Any JSON value, small.
fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-2.0_f64..3.0).prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        arb_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 40, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((arb_key(), inner), 0..8)
                .prop_map(|fields| Value::Object(fields.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A valid answer of some role with one field replaced (or removed), often nested.
fn arb_near_valid() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(Role::ALL.to_vec()),
        any::<prop::sample::Index>(),
        any::<prop::sample::Index>(),
        prop::option::of(arb_json()),
    )
        .prop_map(|(role, outer, inner, replacement)| {
            let mut answer = answer_json(role);
            if let Some(fields) = answer.as_object_mut() {
                let keys: Vec<String> = fields.keys().cloned().collect();
                let key = outer.get(&keys).clone();
                let target = fields.get_mut(&key).map(|field| {
                    // Go one level down into a list half of the time.
                    let deeper = field.as_array().is_some_and(|items| !items.is_empty())
                        && inner.index(2) == 0;
                    if deeper {
                        if let Value::Array(items) = field {
                            let i = inner.index(items.len());
                            return &mut items[i];
                        }
                    }
                    field
                });
                match (target, replacement) {
                    (Some(slot), Some(value)) => *slot = value,
                    _ => {
                        fields.remove(&key);
                    }
                }
            }
            answer
        })
}

/// Text as a model might send it: raw bytes, or JSON inside arbitrary bytes.
fn arb_text() -> impl Strategy<Value = String> {
    let bytes = || prop::collection::vec(any::<u8>(), 0..48);
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..160)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        (bytes(), arb_json(), bytes()).prop_map(|(before, json, after)| {
            format!(
                "{}{json}{}",
                String::from_utf8_lossy(&before),
                String::from_utf8_lossy(&after)
            )
        }),
        "[{}\\[\\]\"\\\\a:, 0-9]{0,80}",
    ]
}

fn arb_stop_reason() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("end_turn".to_owned()),
        Just("tool_use".to_owned()),
        Just("max_tokens".to_owned()),
        "[a-z_]{0,10}",
    ]
}

fn parse_as_every_role(value: &Value, local_risk: f64, ceiling: f64) {
    let _ = validate::analysis(value.clone());
    let _ = validate::strategy(value.clone(), &SCHEMA);
    let _ = validate::decision(value.clone(), local_risk, ceiling);
    let _ = validate::resolution(value.clone());
}

fn feed(text: String, tool: &str, input: Value, stop_reason: String, risk: (f64, f64)) {
    parse_as_every_role(&input, risk.0, risk.1);
    let answer = RawAnswer {
        blocks: vec![
            RawContent::Text { text },
            RawContent::ToolUse {
                name: tool.to_owned(),
                input,
            },
        ],
        stop_reason,
    };
    let ways = TOOLS
        .iter()
        .copied()
        .map(Extraction::Tool)
        .chain([Extraction::JsonText, Extraction::EmbeddedJson]);
    for how in ways {
        if let Ok(value) = validate::extract(&answer, how) {
            parse_as_every_role(&value, risk.0, risk.1);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10_000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_and_json_never_panic_the_parser(
        text in arb_text(),
        tool in prop::sample::select(TOOLS),
        input in prop_oneof![arb_json(), arb_near_valid()],
        stop_reason in arb_stop_reason(),
        local_risk in prop_oneof![0.0_f64..=1.0, any::<f64>()],
        ceiling in prop_oneof![0.0_f64..=1.0, any::<f64>()],
    ) {
        feed(text, tool, input, stop_reason, (local_risk, ceiling));
    }
}

proptest! {
    // Nearly valid answers are also part of the 10 000 cases above; these add a focused few.
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn nearly_valid_answers_never_panic_the_parser(
        answer in arb_near_valid(),
        prose in prop::collection::vec(any::<u8>(), 0..32),
        local_risk in 0.0_f64..=1.0,
    ) {
        // As a JSON text, inside prose, and as a tool input.
        let text = format!("{}{answer}", String::from_utf8_lossy(&prose));
        feed(answer.to_string(), "submit_decision", answer.clone(), "end_turn".into(), (local_risk, 0.8));
        feed(text, "submit_strategy", answer, "tool_use".into(), (local_risk, 0.8));
    }
}
