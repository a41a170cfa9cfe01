//! LLM output is untrusted input (seed Property 1). An answer is extracted from the model's
//! content blocks, parsed into the role's type, and checked against the gene schema and the
//! value ranges. Every failure is a typed [`AnswerError`]; nothing here panics, whatever the
//! bytes.

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::domain::{
    DecisionResult, EvolutionAnalysis, GeneSchema, MutationStrategy, Recommendation,
    ResolutionStrategy, RiskAssessment, StrategicMutation,
};

/// Longest free text kept from an answer.
const TEXT_CHARS: usize = 2_000;
/// Most list items kept from an answer.
const LIST_ITEMS: usize = 20;
/// Most primary or contingency steps accepted in a strategy before the stage's cap applies.
const STRATEGY_STEPS: usize = 64;

/// One block of a model's answer, independent of the SDK's types.
#[derive(Debug, Clone, PartialEq)]
pub enum RawBlock {
    Text(String),
    ToolUse { name: String, input: Value },
}

/// A model's answer as received, checkpointed before it is parsed.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RawAnswer {
    pub blocks: Vec<RawContent>,
    pub stop_reason: String,
}

/// Serializable form of [`RawBlock`] (for checkpoints).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RawContent {
    Text { text: String },
    ToolUse { name: String, input: Value },
}

/// How the structured answer is expected to arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extraction {
    /// Forced tool use: the input of a `toolUse` block with this name.
    Tool(&'static str),
    /// Native JSON-schema output: the text is the JSON document.
    JsonText,
    /// Free text with one JSON object somewhere in it (Titan).
    EmbeddedJson,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AnswerError {
    #[error("the answer has no structured content")]
    NoStructuredAnswer,
    #[error("the answer used tool {got:?}, expected {expected:?}")]
    WrongTool { expected: String, got: String },
    #[error("the answer does not match the schema: {0}")]
    SchemaMismatch(String),
    #[error("the answer was cut off at the output token limit")]
    Truncated,
    #[error("{0} is not a finite number")]
    NonFinite(String),
    #[error("{field} = {value} is outside 0..1")]
    OutOfRange { field: String, value: f64 },
    #[error("the answer names unknown gene {0:?}")]
    UnknownGene(String),
    #[error("gene {gene}: {reason}")]
    IllegalValue { gene: String, reason: String },
    #[error("APPROVE with local risk {risk} above the ceiling {ceiling}")]
    ApproveAboveCeiling { risk: f64, ceiling: f64 },
    /// Schema-valid but self-contradicting: repaired once, then a DEFER (a decision) or an
    /// escalation (a resolution), never an approval.
    #[error("incoherent answer: {0}")]
    Incoherent(String),
}

/// Fewer words than this is a label (a gene name, "ok"), not reasoning.
const MIN_REASONING_WORDS: usize = 3;

fn reasoned(reasoning: &str) -> Result<(), AnswerError> {
    if reasoning.split_whitespace().count() < MIN_REASONING_WORDS {
        return Err(AnswerError::Incoherent(format!(
            "reasoning {:?} is too short to be reasoning",
            reasoning.chars().take(40).collect::<String>()
        )));
    }
    Ok(())
}

impl From<&RawContent> for RawBlock {
    fn from(c: &RawContent) -> Self {
        match c {
            RawContent::Text { text } => Self::Text(text.clone()),
            RawContent::ToolUse { name, input } => Self::ToolUse {
                name: name.clone(),
                input: input.clone(),
            },
        }
    }
}

/// Pulls the JSON document out of an answer.
pub fn extract(answer: &RawAnswer, how: Extraction) -> Result<Value, AnswerError> {
    if answer.stop_reason == "max_tokens" {
        return Err(AnswerError::Truncated);
    }
    let blocks: Vec<RawBlock> = answer.blocks.iter().map(RawBlock::from).collect();
    match how {
        Extraction::Tool(expected) => {
            let mut other = None;
            for block in &blocks {
                if let RawBlock::ToolUse { name, input } = block {
                    if name == expected {
                        return Ok(input.clone());
                    }
                    other.get_or_insert_with(|| name.clone());
                }
            }
            match other {
                Some(got) => Err(AnswerError::WrongTool {
                    expected: expected.to_owned(),
                    got,
                }),
                None => Err(AnswerError::NoStructuredAnswer),
            }
        }
        Extraction::JsonText | Extraction::EmbeddedJson => {
            let text: String = blocks
                .iter()
                .filter_map(|b| match b {
                    RawBlock::Text(t) => Some(t.as_str()),
                    RawBlock::ToolUse { .. } => None,
                })
                .collect::<Vec<_>>()
                .join("\n");
            if let Ok(v) = serde_json::from_str::<Value>(text.trim()) {
                if v.is_object() {
                    return Ok(v);
                }
            }
            first_json_object(&text).ok_or(AnswerError::NoStructuredAnswer)
        }
    }
}

/// The first balanced `{...}` in `text` that parses as a JSON object.
fn first_json_object(text: &str) -> Option<Value> {
    let bytes = text.as_bytes();
    let mut start = 0;
    while let Some(offset) = text.get(start..)?.find('{') {
        let open = start + offset;
        let mut depth = 0usize;
        let mut in_string = false;
        let mut escaped = false;
        for (i, &b) in bytes.iter().enumerate().skip(open) {
            if in_string {
                match (escaped, b) {
                    (true, _) => escaped = false,
                    (false, b'\\') => escaped = true,
                    (false, b'"') => in_string = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => in_string = true,
                b'{' => depth += 1,
                b'}' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        if let Some(Ok(v)) = text.get(open..=i).map(serde_json::from_str::<Value>) {
                            if v.is_object() {
                                return Some(v);
                            }
                        }
                        break;
                    }
                }
                _ => {}
            }
        }
        start = open + 1;
    }
    None
}

fn parse<T: DeserializeOwned>(value: Value) -> Result<T, AnswerError> {
    serde_json::from_value(value).map_err(|e| AnswerError::SchemaMismatch(e.to_string()))
}

fn unit(field: &str, value: f64) -> Result<(), AnswerError> {
    if !value.is_finite() {
        return Err(AnswerError::NonFinite(field.to_owned()));
    }
    if !(0.0..=1.0).contains(&value) {
        return Err(AnswerError::OutOfRange {
            field: field.to_owned(),
            value,
        });
    }
    Ok(())
}

fn finite(field: &str, value: f64) -> Result<(), AnswerError> {
    if value.is_finite() {
        Ok(())
    } else {
        Err(AnswerError::NonFinite(field.to_owned()))
    }
}

fn cap_text(text: &mut String) {
    if text.chars().count() > TEXT_CHARS {
        *text = text.chars().take(TEXT_CHARS).collect();
    }
}

fn cap_list(list: &mut Vec<String>) {
    list.truncate(LIST_ITEMS);
    list.iter_mut().for_each(cap_text);
}

fn risk(r: &RiskAssessment) -> Result<(), AnswerError> {
    unit("risk_assessment.overall_risk", r.overall_risk)?;
    unit("risk_assessment.technical_risk", r.technical_risk)?;
    unit("risk_assessment.business_risk", r.business_risk)?;
    unit("risk_assessment.operational_risk", r.operational_risk)
}

pub fn analysis(value: Value) -> Result<EvolutionAnalysis, AnswerError> {
    let mut a: EvolutionAnalysis = parse(value)?;
    unit("confidence_score", a.confidence_score)?;
    cap_text(&mut a.current_state_assessment);
    cap_text(&mut a.reasoning);
    for list in [
        &mut a.strengths,
        &mut a.weaknesses,
        &mut a.opportunities,
        &mut a.threats,
        &mut a.recommended_focus_areas,
    ] {
        cap_list(list);
    }
    Ok(a)
}

/// Checks every step names known genes with values of the right type. Bounds and step sizes are
/// left to strategize, which drops such steps one by one with their reasons.
pub fn strategy(value: Value, schema: &GeneSchema) -> Result<MutationStrategy, AnswerError> {
    let mut s: MutationStrategy = parse(value)?;
    s.primary_mutations.truncate(STRATEGY_STEPS);
    s.contingency_mutations.truncate(STRATEGY_STEPS);
    let check = |m: &StrategicMutation| -> Result<(), AnswerError> {
        finite("predicted_impact", m.predicted_impact)?;
        for c in &m.changes {
            let def = schema
                .get(&c.gene)
                .ok_or_else(|| AnswerError::UnknownGene(c.gene.to_string()))?;
            let value = def.spec.coerce(&c.value);
            if def.spec.kind() != value.kind() {
                return Err(AnswerError::IllegalValue {
                    gene: c.gene.to_string(),
                    reason: format!("expected {}, got {}", def.spec.kind(), value.kind()),
                });
            }
            if let Some(v) = value.as_f64() {
                finite(c.gene.as_str(), v)?;
            }
        }
        Ok(())
    };
    for m in s.primary_mutations.iter().chain(&s.contingency_mutations) {
        check(m)?;
    }
    for v in s.success_criteria.values() {
        finite("success_criteria", *v)?;
    }
    for m in s
        .primary_mutations
        .iter_mut()
        .chain(s.contingency_mutations.iter_mut())
    {
        cap_text(&mut m.rationale);
    }
    cap_list(&mut s.risk_mitigation);
    Ok(s)
}

pub fn decision(
    value: Value,
    local_risk: f64,
    ceiling: f64,
) -> Result<DecisionResult, AnswerError> {
    let mut d: DecisionResult = parse(value)?;
    unit("confidence", d.confidence)?;
    risk(&d.risk_assessment)?;
    for (k, v) in &d.estimated_impact {
        finite(k, *v)?;
    }
    if d.recommendation == Recommendation::PendingApproval {
        // Holding for a human is the gate's call, never the model's.
        return Err(AnswerError::SchemaMismatch(
            "recommendation PENDING_APPROVAL is not an answer a model may give".into(),
        ));
    }
    if d.recommendation == Recommendation::Approve && local_risk > ceiling {
        return Err(AnswerError::ApproveAboveCeiling {
            risk: local_risk,
            ceiling,
        });
    }
    let r = &d.risk_assessment;
    let own_risk = [
        r.overall_risk,
        r.technical_risk,
        r.business_risk,
        r.operational_risk,
    ]
    .into_iter()
    .fold(0.0, f64::max);
    if d.recommendation == Recommendation::Approve && own_risk > ceiling {
        return Err(AnswerError::Incoherent(format!(
            "APPROVE at the model's own risk {own_risk} above the ceiling {ceiling}"
        )));
    }
    reasoned(&d.reasoning)?;
    cap_text(&mut d.reasoning);
    cap_list(&mut d.benefits);
    cap_list(&mut d.drawbacks);
    cap_list(&mut d.mitigation_strategies);
    Ok(d)
}

pub fn resolution(value: Value) -> Result<ResolutionStrategy, AnswerError> {
    let mut r: ResolutionStrategy = parse(value)?;
    unit("risk_assessment", r.risk_assessment)?;
    r.retry_after_seconds = r.retry_after_seconds.min(900);
    reasoned(&r.reasoning)?;
    cap_text(&mut r.reasoning);
    cap_text(&mut r.root_cause_analysis);
    cap_list(&mut r.immediate_actions);
    cap_list(&mut r.prevention_measures);
    cap_list(&mut r.success_metrics);
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tool(name: &str, input: Value) -> RawAnswer {
        RawAnswer {
            blocks: vec![RawContent::ToolUse {
                name: name.into(),
                input,
            }],
            stop_reason: "tool_use".into(),
        }
    }

    fn text(t: &str) -> RawAnswer {
        RawAnswer {
            blocks: vec![RawContent::Text { text: t.into() }],
            stop_reason: "end_turn".into(),
        }
    }

    fn decision_json(rec: &str, confidence: f64) -> Value {
        json!({"recommendation": rec, "confidence": confidence,
               "risk_assessment": {"overall_risk": 0.4, "technical_risk": 0.3,
                                   "business_risk": 0.2, "operational_risk": 0.1},
               "reasoning": "the gain is worth the risk"})
    }

    #[test]
    fn self_contradicting_decisions_are_incoherent() {
        let mut high = decision_json("APPROVE", 1.0);
        high["risk_assessment"]["overall_risk"] = json!(1.0);
        assert!(matches!(
            decision(high.clone(), 0.47, 0.8),
            Err(AnswerError::Incoherent(_))
        ));
        // The same numbers on a REJECT are consistent.
        high["recommendation"] = json!("REJECT");
        assert!(decision(high, 0.47, 0.8).is_ok());
        let mut component = decision_json("APPROVE", 0.9);
        component["risk_assessment"]["operational_risk"] = json!(0.81);
        assert!(matches!(
            decision(component, 0.1, 0.8),
            Err(AnswerError::Incoherent(_))
        ));
        for reasoning in ["", "cache_size_mb", "looks fine"] {
            let mut short = decision_json("REJECT", 0.9);
            short["reasoning"] = json!(reasoning);
            assert!(
                matches!(decision(short, 0.1, 0.8), Err(AnswerError::Incoherent(_))),
                "{reasoning:?}"
            );
        }
        assert!(decision(decision_json("APPROVE", 0.9), 0.1, 0.8).is_ok());
    }

    #[test]
    fn typed_errors_for_each_failure() {
        let t = Extraction::Tool("submit_decision");
        assert_eq!(
            extract(&text("no json here"), t),
            Err(AnswerError::NoStructuredAnswer)
        );
        assert!(matches!(
            extract(&tool("other", json!({})), t),
            Err(AnswerError::WrongTool { .. })
        ));
        let mut cut = tool("submit_decision", json!({}));
        cut.stop_reason = "max_tokens".into();
        assert_eq!(extract(&cut, t), Err(AnswerError::Truncated));
        assert!(matches!(
            decision(json!({"recommendation": "APPROVE"}), 0.1, 0.8),
            Err(AnswerError::SchemaMismatch(_))
        ));
        assert!(matches!(
            decision(decision_json("APPROVE", 1.5), 0.1, 0.8),
            Err(AnswerError::OutOfRange { .. })
        ));
        assert!(matches!(
            decision(decision_json("APPROVE", 0.9), 0.9, 0.8),
            Err(AnswerError::ApproveAboveCeiling { .. })
        ));
        assert!(decision(decision_json("REJECT", 0.9), 0.9, 0.8).is_ok());
    }

    #[test]
    fn a_model_cannot_hold_a_decision_for_approval() {
        let err = decision(decision_json("PENDING_APPROVAL", 0.9), 0.1, 0.8)
            .expect_err("only the gate holds decisions");
        assert!(matches!(err, AnswerError::SchemaMismatch(_)), "{err:?}");
        // Nor is it offered in the schema the model answers in.
        let schema = serde_json::to_string(&schemars::schema_for!(crate::domain::DecisionResult))
            .expect("schema");
        assert!(schema.contains("APPROVE"), "{schema}");
        assert!(!schema.contains("PENDING_APPROVAL"), "{schema}");
    }

    #[test]
    fn json_is_found_inside_prose() {
        let answer = text("Sure! Here it is: {\"a\": \"}{\", \"b\": {\"c\": 1}} and more {x}");
        assert_eq!(
            extract(&answer, Extraction::EmbeddedJson),
            Ok(json!({"a": "}{", "b": {"c": 1}}))
        );
        assert_eq!(
            extract(&text("{\"a\": 1}"), Extraction::JsonText),
            Ok(json!({"a": 1}))
        );
    }
}
