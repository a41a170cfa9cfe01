//! Role requests for a small gene schema, built by hand, and the structured answers a model might
//! give to them (as JSON and as the typed values they must parse into).

use std::collections::BTreeMap;

use chrono::Duration;
use serde_json::{Value, json};
use shared::domain::{
    BudgetMode, Complexity, ConflictKind, DecisionResult, EvaluationOutcome, EvolutionAnalysis,
    GeneChange, GeneDef, GeneName, GeneSchema, GeneSpec, GeneValue, Genes, HistoryEntry, Mutation,
    MutationStrategy, Recommendation, ResolutionAction, ResolutionStrategy, RiskAssessment, Role,
    Severity, StrategicMutation, SystemConflict, SystemId, TaskContext,
};
use shared::llm::{
    AnalyzeRequest, CallContext, DecideRequest, DnaView, ResolveRequest, StrategizeRequest,
};

use crate::fixture::start;

pub fn system_id() -> SystemId {
    SystemId::parse("svc").expect("valid system id")
}

pub fn gene(name: &str) -> GeneName {
    GeneName::parse(name).expect("valid gene name")
}

/// `threads` (int 1..64, step 8, at 8), `timeout_s` (float 0.5..30, step 2, at 2.5) and
/// `codec` (choice, at lz4).
pub fn schema_and_genes() -> (GeneSchema, Genes) {
    let def = |spec| GeneDef {
        spec,
        risk_weight: 0.3,
        description: Some("a tunable".into()),
        frozen: false,
    };
    let schema: GeneSchema = [
        (
            gene("threads"),
            def(GeneSpec::Int {
                min: 1,
                max: 64,
                max_step: Some(8),
            }),
        ),
        (
            gene("timeout_s"),
            def(GeneSpec::Float {
                min: 0.5,
                max: 30.0,
                max_step: Some(2.0),
            }),
        ),
        (
            gene("codec"),
            def(GeneSpec::Choice {
                choices: vec!["none".into(), "lz4".into(), "zstd".into()],
            }),
        ),
    ]
    .into();
    let genes: Genes = [
        (gene("threads"), GeneValue::Int(8)),
        (gene("timeout_s"), GeneValue::Float(2.5)),
        (gene("codec"), GeneValue::Choice("lz4".into())),
    ]
    .into();
    (schema, genes)
}

pub fn dna() -> DnaView {
    let (schema, genes) = schema_and_genes();
    DnaView {
        system_id: system_id(),
        generation: 12,
        schema,
        genes,
        stable_fitness: Some(41.5),
        constraints: shared::domain::Constraints::default(),
    }
}

/// `n` closed evaluations, oldest first, alternately kept and rolled back.
pub fn history(n: usize) -> Vec<HistoryEntry> {
    (0..n)
        .map(|i| {
            let generation = i as u64 + 1;
            let kept = i % 2 == 0;
            HistoryEntry {
                generation,
                fitness: Some(40.0 + i as f64 * 0.25),
                outcome: if kept {
                    EvaluationOutcome::Keep
                } else {
                    EvaluationOutcome::Rollback
                },
                baseline_fitness: Some(40.0),
                changes: vec![GeneChange {
                    gene: gene("threads"),
                    value: GeneValue::Int(8 + (i as i64 % 3)),
                }],
                predicted_impact: 0.5,
                plan_step: None,
                reports: 1,
                failed: 0,
                metrics: std::collections::BTreeMap::new(),
                breaches: Vec::new(),
                significance: None,
                canary: None,
                closed_at: start() - Duration::hours(n as i64 - i as i64),
            }
        })
        .collect()
}

pub fn ctx(role: Role, envelope_id: &str) -> CallContext {
    CallContext {
        system_id: system_id(),
        envelope_id: envelope_id.to_owned(),
        task: TaskContext {
            role,
            complexity: Complexity::High,
            estimated_tokens: 2_000,
            max_latency_ms: None,
            accuracy_requirements: 0.5,
            cost_sensitivity: 0.5,
            critical: false,
        },
        budget_mode: BudgetMode::Normal,
        deadline: None,
    }
}

pub fn analyze_req(envelope_id: &str) -> AnalyzeRequest {
    AnalyzeRequest {
        ctx: ctx(Role::Analyze, envelope_id),
        dna: dna(),
        history: history(4),
    }
}

pub fn strategize_req(envelope_id: &str) -> StrategizeRequest {
    StrategizeRequest {
        ctx: ctx(Role::Strategize, envelope_id),
        dna: dna(),
        history: history(4),
        analysis: analysis(),
        max_steps: 4,
    }
}

pub fn decide_req(envelope_id: &str, local_risk: f64, risk_ceiling: f64) -> DecideRequest {
    DecideRequest {
        ctx: ctx(Role::Decide, envelope_id),
        dna: dna(),
        history: history(4),
        mutation: Mutation {
            id: "m-1".into(),
            changes: vec![GeneChange {
                gene: gene("threads"),
                value: GeneValue::Int(16),
            }],
            description: "double the threads".into(),
            predicted_impact: 2.0,
            plan_step: None,
        },
        local_risk,
        risk_ceiling,
        deferrals: 0,
        batch: Vec::new(),
    }
}

pub fn resolve_req(envelope_id: &str) -> ResolveRequest {
    ResolveRequest {
        ctx: ctx(Role::Resolve, envelope_id),
        dna: dna(),
        conflict: SystemConflict {
            kind: ConflictKind::RollbackStreak,
            description: "five rollbacks in a row".into(),
            affected_components: vec!["worker-pool".into()],
            severity: Severity::High,
            current_impact: "no improvement for two hours".into(),
            available_resources: vec![],
            active_processes: 2,
            recent_changes: vec![],
        },
    }
}

// ---- answers ----

pub fn analysis_json() -> Value {
    json!({
        "current_state_assessment": "stable, slightly under-threaded",
        "strengths": ["codec choice"],
        "weaknesses": ["threads"],
        "opportunities": ["raise threads"],
        "threats": [],
        "recommended_focus_areas": ["threads", "timeout_s"],
        "confidence_score": 0.75,
        "reasoning": "kept changes raised threads",
    })
}

pub fn analysis() -> EvolutionAnalysis {
    EvolutionAnalysis {
        current_state_assessment: "stable, slightly under-threaded".into(),
        strengths: vec!["codec choice".into()],
        weaknesses: vec!["threads".into()],
        opportunities: vec!["raise threads".into()],
        threats: vec![],
        recommended_focus_areas: vec!["threads".into(), "timeout_s".into()],
        confidence_score: 0.75,
        reasoning: "kept changes raised threads".into(),
    }
}

pub fn strategy_json() -> Value {
    json!({
        "primary_mutations": [
            {"id": "s1", "changes": [{"gene": "threads", "value": 12}],
             "rationale": "more workers", "predicted_impact": 1.5},
            {"id": "s2", "changes": [{"gene": "timeout_s", "value": 3.5}, {"gene": "codec", "value": "zstd"}],
             "rationale": "longer timeout, denser codec", "predicted_impact": 0.5},
        ],
        "contingency_mutations": [],
        "execution_order": ["s1", "s2"],
        "success_criteria": {"min_fitness": 40.0},
        "risk_mitigation": ["roll back on errors"],
        "expected_outcomes": {"s1": "higher throughput"},
        "timeline_estimate": "two generations",
    })
}

pub fn strategy() -> MutationStrategy {
    let step =
        |id: &str, changes: Vec<GeneChange>, rationale: &str, impact: f64| StrategicMutation {
            id: id.into(),
            changes,
            rationale: rationale.into(),
            predicted_impact: impact,
            contingency_for: None,
        };
    MutationStrategy {
        primary_mutations: vec![
            step(
                "s1",
                vec![GeneChange {
                    gene: gene("threads"),
                    value: GeneValue::Int(12),
                }],
                "more workers",
                1.5,
            ),
            step(
                "s2",
                vec![
                    GeneChange {
                        gene: gene("timeout_s"),
                        value: GeneValue::Float(3.5),
                    },
                    GeneChange {
                        gene: gene("codec"),
                        value: GeneValue::Choice("zstd".into()),
                    },
                ],
                "longer timeout, denser codec",
                0.5,
            ),
        ],
        contingency_mutations: vec![],
        execution_order: vec!["s1".into(), "s2".into()],
        success_criteria: BTreeMap::from([("min_fitness".to_owned(), 40.0)]),
        risk_mitigation: vec!["roll back on errors".into()],
        expected_outcomes: BTreeMap::from([("s1".to_owned(), "higher throughput".to_owned())]),
        timeline_estimate: "two generations".into(),
    }
}

pub fn decision_json(recommendation: &str) -> Value {
    json!({
        "recommendation": recommendation,
        "confidence": 0.8,
        "risk_assessment": {"overall_risk": 0.4, "technical_risk": 0.5,
                            "business_risk": 0.25, "operational_risk": 0.125},
        "benefits": ["throughput"],
        "drawbacks": ["memory"],
        "mitigation_strategies": ["watch memory"],
        "reasoning": "the gain is worth the risk",
        "estimated_impact": {"fitness": 2.0},
    })
}

pub fn decision(recommendation: Recommendation) -> DecisionResult {
    DecisionResult {
        recommendation,
        confidence: 0.8,
        risk_assessment: RiskAssessment {
            overall_risk: 0.4,
            technical_risk: 0.5,
            business_risk: 0.25,
            operational_risk: 0.125,
        },
        benefits: vec!["throughput".into()],
        drawbacks: vec!["memory".into()],
        mitigation_strategies: vec!["watch memory".into()],
        reasoning: "the gain is worth the risk".into(),
        estimated_impact: BTreeMap::from([("fitness".to_owned(), 2.0)]),
    }
}

pub fn resolution_json() -> Value {
    json!({
        "action": "retry_later",
        "retry_after_seconds": 120,
        "immediate_actions": ["pause new plans"],
        "root_cause_analysis": "steps too large",
        "prevention_measures": ["smaller steps"],
        "risk_assessment": 0.3,
        "success_metrics": ["no rollback for an hour"],
        "reasoning": "cool down before trying again",
    })
}

pub fn resolution() -> ResolutionStrategy {
    ResolutionStrategy {
        action: ResolutionAction::RetryLater,
        retry_after_seconds: 120,
        immediate_actions: vec!["pause new plans".into()],
        root_cause_analysis: "steps too large".into(),
        prevention_measures: vec!["smaller steps".into()],
        risk_assessment: 0.3,
        success_metrics: vec!["no rollback for an hour".into()],
        reasoning: "cool down before trying again".into(),
    }
}

/// How a model of `model`'s kind delivers `answer` for `role`: through the forced tool, as a
/// JSON text, or as JSON inside prose.
pub fn reply_from(
    model: &str,
    role: shared::domain::Role,
    answer: &Value,
) -> tests::bedrock_stub::Reply {
    use tests::bedrock_stub::Reply;
    match crate::fixture::spec(model).structured_output {
        "tool_use" => Reply::tool(shared::llm::prompts::tool_name(role), answer.clone()),
        "json_schema" => Reply::text(answer.to_string()),
        _ => Reply::text(format!(
            "Certainly. Here is the answer:\n```json\n{answer}\n```\nTell me if you need more {{details}}."
        )),
    }
}

/// The valid answer of each role, as JSON.
pub fn answer_json(role: Role) -> Value {
    match role {
        Role::Analyze => analysis_json(),
        Role::Strategize => strategy_json(),
        Role::Decide => decision_json("REJECT"),
        Role::Resolve => resolution_json(),
    }
}

/// A valid answer for `role` from `model`.
pub fn ok_from(model: &str, role: Role) -> tests::bedrock_stub::Reply {
    reply_from(model, role, &answer_json(role))
}
