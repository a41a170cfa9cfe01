use chrono::{DateTime, Utc};
use proptest::prelude::*;

use super::*;
use crate::domain::{
    BudgetMode, Complexity, EvaluationOutcome, GeneDef, GeneName, GeneSchema, GeneSpec, GeneValue,
    Genes, HistoryEntry, Mutation, MutationStrategy, StrategicMutation, SystemConflict, SystemId,
    TaskContext,
};
use crate::llm::{CallContext, DnaView};

fn name(s: &str) -> GeneName {
    GeneName::parse(s).expect("valid gene name")
}

fn ctx(role: Role, envelope: &str) -> CallContext {
    CallContext {
        system_id: SystemId::parse("sys").expect("id"),
        envelope_id: envelope.to_owned(),
        task: TaskContext {
            role,
            complexity: Complexity::Medium,
            estimated_tokens: 1000,
            max_latency_ms: None,
            accuracy_requirements: 0.5,
            cost_sensitivity: 0.5,
            critical: false,
        },
        budget_mode: BudgetMode::Normal,
        deadline: None,
    }
}

fn def(spec: GeneSpec, frozen: bool) -> GeneDef {
    GeneDef {
        spec,
        risk_weight: 0.5,
        description: None,
        frozen,
    }
}

/// cache (int, max_step 64), ratio (float, max_step 0.2), fast (bool), codec (choice), region
/// (frozen choice).
fn sample() -> (GeneSchema, Genes) {
    let mut schema = GeneSchema::new();
    let mut genes = Genes::new();
    schema.insert(
        name("cache"),
        def(
            GeneSpec::Int {
                min: 0,
                max: 1024,
                max_step: Some(64),
            },
            false,
        ),
    );
    genes.insert(name("cache"), GeneValue::Int(256));
    schema.insert(
        name("ratio"),
        def(
            GeneSpec::Float {
                min: 0.0,
                max: 1.0,
                max_step: Some(0.2),
            },
            false,
        ),
    );
    genes.insert(name("ratio"), GeneValue::Float(0.5));
    schema.insert(name("fast"), def(GeneSpec::Bool, false));
    genes.insert(name("fast"), GeneValue::Bool(false));
    schema.insert(
        name("codec"),
        def(
            GeneSpec::Choice {
                choices: vec!["none".into(), "lz4".into(), "zstd".into()],
            },
            false,
        ),
    );
    genes.insert(name("codec"), GeneValue::Choice("none".into()));
    schema.insert(
        name("region"),
        def(
            GeneSpec::Choice {
                choices: vec!["eu".into(), "us".into()],
            },
            true,
        ),
    );
    genes.insert(name("region"), GeneValue::Choice("eu".into()));
    (schema, genes)
}

fn view(schema: &GeneSchema, genes: &Genes) -> DnaView {
    DnaView {
        system_id: SystemId::parse("sys").expect("id"),
        generation: 7,
        schema: schema.clone(),
        genes: genes.clone(),
        stable_fitness: Some(10.0),
        constraints: crate::domain::Constraints::default(),
    }
}

fn at(generation: u64) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp(1_700_000_000 + 60 * generation as i64, 0).expect("time")
}

fn entry(
    generation: u64,
    outcome: EvaluationOutcome,
    fitness: Option<f64>,
    baseline: f64,
    changes: Vec<(&str, GeneValue)>,
) -> HistoryEntry {
    HistoryEntry {
        generation,
        fitness,
        outcome,
        baseline_fitness: Some(baseline),
        changes: changes
            .into_iter()
            .map(|(g, value)| GeneChange {
                gene: name(g),
                value,
            })
            .collect(),
        predicted_impact: 0.0,
        plan_step: None,
        reports: 1,
        failed: 0,
        metrics: std::collections::BTreeMap::new(),
        breaches: Vec::new(),
        significance: None,
        canary: None,
        closed_at: at(generation),
    }
}

fn baseline_entry(fitness: f64) -> HistoryEntry {
    HistoryEntry {
        generation: 0,
        fitness: Some(fitness),
        outcome: EvaluationOutcome::Keep,
        baseline_fitness: None,
        changes: Vec::new(),
        predicted_impact: 0.0,
        plan_step: None,
        reports: 1,
        failed: 0,
        metrics: std::collections::BTreeMap::new(),
        breaches: Vec::new(),
        significance: None,
        canary: None,
        closed_at: at(0),
    }
}

fn strategize_request(
    schema: &GeneSchema,
    genes: &Genes,
    history: Vec<HistoryEntry>,
    max_steps: u32,
) -> StrategizeRequest {
    let engine = LocalEngine::new(1);
    let analysis = engine.analysis(&AnalyzeRequest {
        ctx: ctx(Role::Analyze, "env-a"),
        dna: view(schema, genes),
        history: history.clone(),
    });
    StrategizeRequest {
        ctx: ctx(Role::Strategize, "env-s"),
        dna: view(schema, genes),
        history,
        analysis,
        max_steps,
    }
}

fn decide_request(
    schema: &GeneSchema,
    genes: &Genes,
    history: Vec<HistoryEntry>,
    changes: Vec<(&str, GeneValue)>,
    local_risk: f64,
    risk_ceiling: f64,
) -> DecideRequest {
    DecideRequest {
        ctx: ctx(Role::Decide, "env-d"),
        dna: view(schema, genes),
        history,
        mutation: Mutation {
            id: "mut_1".into(),
            changes: changes
                .into_iter()
                .map(|(g, value)| GeneChange {
                    gene: name(g),
                    value,
                })
                .collect(),
            description: String::new(),
            predicted_impact: 0.0,
            plan_step: None,
        },
        local_risk,
        risk_ceiling,
        deferrals: 0,
        batch: Vec::new(),
    }
}

fn as_mutation(step: &StrategicMutation) -> Mutation {
    Mutation {
        id: step.id.clone(),
        changes: step.changes.clone(),
        description: String::new(),
        predicted_impact: 0.0,
        plan_step: None,
    }
}

/// Every rule a plan must obey: length cap, sequential validity, contingencies valid from the
/// state their primary was tried in, no frozen gene, unique ids.
fn check_plan(
    schema: &GeneSchema,
    genes: &Genes,
    plan: &MutationStrategy,
    max_steps: u32,
) -> Result<(), String> {
    if plan.primary_mutations.len() > max_steps as usize {
        return Err(format!(
            "{} steps for a cap of {max_steps}",
            plan.primary_mutations.len()
        ));
    }
    let mut ids: Vec<&str> = plan
        .primary_mutations
        .iter()
        .chain(&plan.contingency_mutations)
        .map(|s| s.id.as_str())
        .collect();
    ids.sort_unstable();
    let total = ids.len();
    ids.dedup();
    if ids.len() != total {
        return Err("duplicate step ids".into());
    }
    let mut current = genes.clone();
    for step in &plan.primary_mutations {
        if !step.predicted_impact.is_finite() {
            return Err(format!("impact of {} is not finite", step.id));
        }
        for c in &step.changes {
            if schema.get(&c.gene).is_some_and(|d| d.frozen) {
                return Err(format!("frozen gene {} touched", c.gene));
            }
        }
        for alt in plan
            .contingency_mutations
            .iter()
            .filter(|c| c.contingency_for.as_deref() == Some(step.id.as_str()))
        {
            apply_mutation(schema, &current, &as_mutation(alt))
                .map_err(|e| format!("contingency {} invalid: {e}", alt.id))?;
        }
        current = apply_mutation(schema, &current, &as_mutation(step))
            .map_err(|e| format!("step {} invalid: {e}", step.id))?;
    }
    for alt in &plan.contingency_mutations {
        let Some(target) = &alt.contingency_for else {
            return Err(format!("contingency {} names no primary", alt.id));
        };
        if !plan.primary_mutations.iter().any(|p| &p.id == target) {
            return Err(format!("contingency {} names an unknown primary", alt.id));
        }
    }
    Ok(())
}

#[test]
fn the_same_request_gets_the_same_answer() {
    let (schema, genes) = sample();
    let history = vec![
        baseline_entry(10.0),
        entry(
            1,
            EvaluationOutcome::Keep,
            Some(11.0),
            10.0,
            vec![("cache", GeneValue::Int(256))],
        ),
        entry(
            2,
            EvaluationOutcome::Rollback,
            Some(9.0),
            11.0,
            vec![("ratio", GeneValue::Float(0.6))],
        ),
    ];
    let engine = LocalEngine::new(42);
    let req = strategize_request(&schema, &genes, history.clone(), 6);
    assert_eq!(engine.strategy(&req), engine.strategy(&req));
    assert_eq!(
        engine.strategy(&req),
        LocalEngine::new(42).strategy(&req.clone())
    );
    let analyze = AnalyzeRequest {
        ctx: ctx(Role::Analyze, "env-a"),
        dna: view(&schema, &genes),
        history: history.clone(),
    };
    assert_eq!(engine.analysis(&analyze), engine.analysis(&analyze));
    let decide = decide_request(
        &schema,
        &genes,
        history,
        vec![("cache", GeneValue::Int(300))],
        0.5,
        0.8,
    );
    assert_eq!(engine.decision(&decide), engine.decision(&decide));
}

#[tokio::test]
async fn answers_are_local_free_and_repeatable_through_the_port() {
    let (schema, genes) = sample();
    let engine: &dyn LanguageModel = &LocalEngine::new(7);
    let req = strategize_request(&schema, &genes, vec![baseline_entry(1.0)], 4);
    let first = engine.strategize(&req).await.expect("answer");
    let second = engine.strategize(&req).await.expect("answer");
    assert_eq!(first, second);
    assert_eq!(first.model_id, LOCAL_MODEL_ID);
    assert_eq!(first.cost_nano_usd, 0);
    assert_eq!(first.usage.total(), 0);
    assert_eq!(first.bedrock_requests, 0);
    let analysis = engine
        .analyze(&AnalyzeRequest {
            ctx: ctx(Role::Analyze, "e"),
            dna: view(&schema, &genes),
            history: Vec::new(),
        })
        .await
        .expect("answer");
    assert_eq!(analysis.model_id, LOCAL_MODEL_ID);
}

#[test]
fn the_first_plan_explores_every_movable_gene_once() {
    let (schema, genes) = sample();
    let engine = LocalEngine::new(3);
    let req = strategize_request(&schema, &genes, vec![baseline_entry(10.0)], 8);
    let plan = engine.strategy(&req);
    check_plan(&schema, &genes, &plan, 8).expect("valid plan");
    let touched: Vec<&str> = plan
        .primary_mutations
        .iter()
        .flat_map(|s| s.changes.iter().map(|c| c.gene.as_str()))
        .collect();
    assert!(touched.contains(&"cache") && touched.contains(&"ratio"));
    assert!(!touched.contains(&"region"));
    // Numeric steps come first, each at half its max_step, with a mirrored contingency.
    let first = &plan.primary_mutations[0];
    assert_eq!(first.changes[0].gene.as_str(), "cache");
    assert_eq!(first.changes[0].value, GeneValue::Int(288));
    let alt = plan
        .contingency_mutations
        .iter()
        .find(|c| c.contingency_for.as_deref() == Some(first.id.as_str()))
        .expect("contingency");
    assert_eq!(alt.changes[0].value, GeneValue::Int(224));
    assert_eq!(plan.execution_order.len(), plan.primary_mutations.len());
}

#[test]
fn steps_adapt_to_outcomes() {
    let (schema, mut genes) = sample();
    // cache moved 256 -> 288 and improved; ratio moved 0.5 -> 0.6 and was rolled back.
    genes.insert(name("cache"), GeneValue::Int(288));
    let history = vec![
        baseline_entry(10.0),
        entry(
            1,
            EvaluationOutcome::Keep,
            Some(12.0),
            10.0,
            vec![("cache", GeneValue::Int(288))],
        ),
        entry(
            2,
            EvaluationOutcome::Rollback,
            Some(11.0),
            12.0,
            vec![("ratio", GeneValue::Float(0.6))],
        ),
    ];
    let plan = LocalEngine::new(1).strategy(&strategize_request(&schema, &genes, history, 8));
    check_plan(&schema, &genes, &plan, 8).expect("valid plan");
    let value_of = |gene: &str| {
        plan.primary_mutations
            .iter()
            .flat_map(|s| &s.changes)
            .find(|c| c.gene.as_str() == gene)
            .map(|c| c.value.clone())
    };
    // Grown x1.5 in the same direction: 288 + 48.
    assert_eq!(value_of("cache"), Some(GeneValue::Int(336)));
    // Halved and reversed: 0.5 - 0.05.
    let ratio = value_of("ratio")
        .and_then(|v| v.as_f64())
        .expect("ratio step");
    assert!((ratio - 0.45).abs() < 1e-9, "{ratio}");
    // The improving gene is tried first.
    assert_eq!(plan.primary_mutations[0].changes[0].gene.as_str(), "cache");
}

#[test]
fn two_confirmed_genes_open_the_plan_with_a_pattern_move() {
    let (schema, mut genes) = sample();
    genes.insert(name("cache"), GeneValue::Int(288));
    genes.insert(name("ratio"), GeneValue::Float(0.6));
    let history = vec![
        baseline_entry(10.0),
        entry(
            1,
            EvaluationOutcome::Keep,
            Some(12.0),
            10.0,
            vec![("cache", GeneValue::Int(288))],
        ),
        entry(
            2,
            EvaluationOutcome::Keep,
            Some(13.0),
            12.0,
            vec![("ratio", GeneValue::Float(0.6))],
        ),
    ];
    let plan = LocalEngine::new(1).strategy(&strategize_request(&schema, &genes, history, 8));
    check_plan(&schema, &genes, &plan, 8).expect("valid plan");
    let first = &plan.primary_mutations[0];
    assert_eq!(first.changes.len(), 2, "{first:?}");
    assert!(first.rationale.starts_with("pattern move"));
    assert!(first.predicted_impact > 0.0);
    let half = plan
        .contingency_mutations
        .iter()
        .find(|c| c.contingency_for.as_deref() == Some(first.id.as_str()))
        .expect("half-length contingency");
    assert_eq!(half.changes.len(), 2);
}

#[test]
fn a_value_that_failed_is_neither_planned_nor_approved_again() {
    let (schema, genes) = sample();
    // cache 256 -> 320 made the workload fail.
    let history = vec![
        baseline_entry(10.0),
        entry(
            1,
            EvaluationOutcome::Inconclusive,
            None,
            10.0,
            vec![("cache", GeneValue::Int(320))],
        ),
    ];
    let engine = LocalEngine::new(1);
    let decision = engine.decision(&decide_request(
        &schema,
        &genes,
        history.clone(),
        vec![("cache", GeneValue::Int(320))],
        0.4,
        0.8,
    ));
    assert_eq!(decision.recommendation, Recommendation::Reject);
    assert!(
        decision.reasoning.contains("failed"),
        "{}",
        decision.reasoning
    );
    let below = engine.decision(&decide_request(
        &schema,
        &genes,
        history.clone(),
        vec![("cache", GeneValue::Int(300))],
        0.4,
        0.8,
    ));
    assert_eq!(below.recommendation, Recommendation::Approve);
    // Later plans stay below the failed value.
    let plan = engine.strategy(&strategize_request(&schema, &genes, history, 8));
    check_plan(&schema, &genes, &plan, 8).expect("valid plan");
    for step in plan
        .primary_mutations
        .iter()
        .chain(&plan.contingency_mutations)
    {
        for c in &step.changes {
            if c.gene.as_str() == "cache" {
                let v = c.value.as_f64().expect("int");
                assert!(v < 320.0, "{v}");
            }
        }
    }
}

#[test]
fn a_guardrail_breach_is_a_barrier_not_just_a_worse_score() {
    let (schema, genes) = sample();
    // cache 256 -> 320 scored higher but broke a latency guardrail, and was rolled back.
    let mut breached = entry(
        1,
        EvaluationOutcome::Rollback,
        Some(12.0),
        10.0,
        vec![("cache", GeneValue::Int(320))],
    );
    let plain = breached.clone();
    breached.breaches.push(crate::domain::Breach {
        guardrail: "p99_latency_ms <= 250".into(),
        value: 300.0,
        limit: 250.0,
    });
    let engine = LocalEngine::new(1);
    let beyond = |history: Vec<HistoryEntry>| {
        engine.decision(&decide_request(
            &schema,
            &genes,
            history,
            vec![("cache", GeneValue::Int(320))],
            0.4,
            0.8,
        ))
    };
    // The breached value is a failed region (so later plans stay below it); a mere
    // rollback only refuses the same move from the same genes.
    let after_breach = beyond(vec![baseline_entry(10.0), breached]);
    let after_rollback = beyond(vec![baseline_entry(10.0), plain]);
    assert_eq!(after_breach.recommendation, Recommendation::Reject);
    assert!(
        after_breach.reasoning.contains("failed"),
        "{}",
        after_breach.reasoning
    );
    assert!(
        !after_rollback.reasoning.contains("failed"),
        "{}",
        after_rollback.reasoning
    );
}

#[test]
fn invalid_and_repeated_mutations_are_rejected() {
    let (schema, genes) = sample();
    let engine = LocalEngine::new(1);
    for changes in [
        vec![("cache", GeneValue::Int(2000))],
        vec![("cache", GeneValue::Int(400))],
        vec![("region", GeneValue::Choice("us".into()))],
        vec![("nope", GeneValue::Int(1))],
    ] {
        let d = engine.decision(&decide_request(
            &schema,
            &genes,
            Vec::new(),
            changes.clone(),
            0.1,
            0.8,
        ));
        assert_eq!(d.recommendation, Recommendation::Reject, "{changes:?}");
    }
    // ratio 0.5 -> 0.7 was rolled back from these very genes: do not repeat it.
    let history = vec![
        baseline_entry(10.0),
        entry(
            1,
            EvaluationOutcome::Rollback,
            Some(9.0),
            10.0,
            vec![("ratio", GeneValue::Float(0.7))],
        ),
    ];
    let d = engine.decision(&decide_request(
        &schema,
        &genes,
        history.clone(),
        vec![("ratio", GeneValue::Float(0.7))],
        0.1,
        0.8,
    ));
    assert_eq!(d.recommendation, Recommendation::Reject);
    let d = engine.decision(&decide_request(
        &schema,
        &genes,
        history,
        vec![("ratio", GeneValue::Float(0.3))],
        0.1,
        0.8,
    ));
    assert_eq!(d.recommendation, Recommendation::Approve);
}

#[test]
fn conflicts_map_to_the_fixed_actions() {
    let (schema, genes) = sample();
    let engine = LocalEngine::new(1);
    let resolve = |kind, severity| {
        engine.resolution(&ResolveRequest {
            ctx: ctx(Role::Resolve, "env-r"),
            dna: view(&schema, &genes),
            conflict: SystemConflict {
                kind,
                description: "test".into(),
                affected_components: Vec::new(),
                severity,
                current_impact: String::new(),
                available_resources: Vec::new(),
                active_processes: 0,
                recent_changes: Vec::new(),
            },
        })
    };
    assert_eq!(
        resolve(ConflictKind::RollbackStreak, Severity::High).action,
        ResolutionAction::Pause
    );
    assert_eq!(
        resolve(ConflictKind::RollbackStreak, Severity::Critical).action,
        ResolutionAction::Pause
    );
    let later = resolve(ConflictKind::RollbackStreak, Severity::Medium);
    assert_eq!(later.action, ResolutionAction::RetryLater);
    assert_eq!(later.retry_after_seconds, 600);
    assert_eq!(
        resolve(ConflictKind::ChecksumMismatch, Severity::Low).action,
        ResolutionAction::RollbackToLastStable
    );
    assert_eq!(
        resolve(ConflictKind::BaselineUnmeasured, Severity::Low).action,
        ResolutionAction::Escalate
    );
    assert!(!later.reasoning.is_empty());
}

#[test]
fn analysis_ranks_genes_and_bounds_confidence() {
    let (schema, mut genes) = sample();
    genes.insert(name("ratio"), GeneValue::Float(0.6));
    let history = vec![
        baseline_entry(10.0),
        entry(
            1,
            EvaluationOutcome::Keep,
            Some(12.0),
            10.0,
            vec![("ratio", GeneValue::Float(0.6))],
        ),
        entry(
            2,
            EvaluationOutcome::Inconclusive,
            None,
            12.0,
            vec![("cache", GeneValue::Int(320))],
        ),
    ];
    let a = LocalEngine::new(1).analysis(&AnalyzeRequest {
        ctx: ctx(Role::Analyze, "env"),
        dna: view(&schema, &genes),
        history,
    });
    assert_eq!(a.recommended_focus_areas[0], "ratio");
    assert!(!a.recommended_focus_areas.contains(&"region".to_owned()));
    assert_eq!(a.recommended_focus_areas.len(), 4);
    assert!((0.0..=1.0).contains(&a.confidence_score));
    assert!(
        a.threats.iter().any(|t| t.contains("cache")),
        "{:?}",
        a.threats
    );
}

// ---- property tests ----

#[derive(Debug, Clone)]
enum Kind {
    Int(i64, i64, Option<i64>),
    Float(f64, f64, Option<f64>),
    Bool,
    Choice(usize),
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        (-50i64..50, 1i64..200, prop::option::of(1i64..40))
            .prop_map(|(min, width, step)| Kind::Int(min, min + width, step)),
        (
            -10.0f64..10.0,
            0.01f64..20.0,
            prop::option::of(0.001f64..5.0)
        )
            .prop_map(|(min, width, step)| Kind::Float(min, min + width, step)),
        Just(Kind::Bool),
        (1usize..4).prop_map(Kind::Choice),
    ]
}

/// A schema of up to six genes, their current values, and a random history of changes.
fn world() -> impl Strategy<Value = (GeneSchema, Genes, Vec<HistoryEntry>)> {
    prop::collection::vec((kind(), any::<bool>(), 0.0f64..1.0), 1..7).prop_flat_map(|kinds| {
        let mut schema = GeneSchema::new();
        let mut genes = Genes::new();
        let mut pickers = Vec::new();
        for (i, (kind, frozen, position)) in kinds.iter().enumerate() {
            let gene = name(&format!("g{i}"));
            let (spec, value) = match kind {
                Kind::Int(min, max, step) => (
                    GeneSpec::Int {
                        min: *min,
                        max: *max,
                        max_step: *step,
                    },
                    GeneValue::Int(min + ((max - min) as f64 * position).round() as i64),
                ),
                Kind::Float(min, max, step) => (
                    GeneSpec::Float {
                        min: *min,
                        max: *max,
                        max_step: *step,
                    },
                    GeneValue::Float(min + (max - min) * position),
                ),
                Kind::Bool => (GeneSpec::Bool, GeneValue::Bool(*position > 0.5)),
                Kind::Choice(n) => {
                    let choices: Vec<String> = (0..*n).map(|c| format!("c{c}")).collect();
                    let pick = ((*n as f64 * position) as usize).min(n - 1);
                    (
                        GeneSpec::Choice {
                            choices: choices.clone(),
                        },
                        GeneValue::Choice(choices[pick].clone()),
                    )
                }
            };
            pickers.push((gene.clone(), spec.clone()));
            schema.insert(gene.clone(), def(spec, *frozen && i > 0));
            genes.insert(gene, value);
        }
        let entry_strategy = (
            prop::collection::vec((0..pickers.len(), 0.0f64..1.0), 0..3),
            0u8..3,
            -5.0f64..5.0,
            -5.0f64..5.0,
        );
        (
            Just(schema),
            Just(genes),
            Just(pickers),
            prop::collection::vec(entry_strategy, 0..25),
        )
            .prop_map(|(schema, genes, pickers, raw)| {
                let mut history = vec![baseline_entry(0.0)];
                for (n, (changes, outcome, fitness, baseline)) in raw.into_iter().enumerate() {
                    let mut seen = Vec::new();
                    let changes: Vec<GeneChange> = changes
                        .into_iter()
                        .filter(|(i, _)| {
                            let fresh = !seen.contains(i);
                            seen.push(*i);
                            fresh
                        })
                        .map(|(i, x)| {
                            let (gene, spec) = &pickers[i];
                            let value = match spec {
                                GeneSpec::Int { min, max, .. } => {
                                    GeneValue::Int(min + ((max - min) as f64 * x).round() as i64)
                                }
                                GeneSpec::Float { min, max, .. } => {
                                    GeneValue::Float(min + (max - min) * x)
                                }
                                GeneSpec::Bool => GeneValue::Bool(x > 0.5),
                                GeneSpec::Choice { choices } => GeneValue::Choice(
                                    choices[((choices.len() as f64 * x) as usize)
                                        .min(choices.len() - 1)]
                                    .clone(),
                                ),
                            };
                            GeneChange {
                                gene: gene.clone(),
                                value,
                            }
                        })
                        .collect();
                    let outcome = match outcome {
                        0 => EvaluationOutcome::Keep,
                        1 => EvaluationOutcome::Rollback,
                        _ => EvaluationOutcome::Inconclusive,
                    };
                    history.push(HistoryEntry {
                        generation: n as u64 + 1,
                        fitness: (outcome != EvaluationOutcome::Inconclusive).then_some(fitness),
                        outcome,
                        baseline_fitness: Some(baseline),
                        changes,
                        predicted_impact: 0.0,
                        plan_step: None,
                        reports: 1,
                        failed: 0,
                        metrics: std::collections::BTreeMap::new(),
                        breaches: Vec::new(),
                        significance: None,
                        canary: None,
                        closed_at: at(n as u64 + 1),
                    });
                }
                (schema, genes, history)
            })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_planned_step_validates_against_the_schema(
        (schema, genes, history) in world(),
        max_steps in 0u32..10,
        seed in any::<u64>(),
    ) {
        let engine = LocalEngine::new(seed);
        let req = strategize_request(&schema, &genes, history, max_steps);
        let plan = engine.strategy(&req);
        if let Err(why) = check_plan(&schema, &genes, &plan, max_steps) {
            return Err(TestCaseError::fail(why));
        }
        prop_assert_eq!(&plan, &engine.strategy(&req));
    }

    /// The first step of a plan is decided against the very genes and history it was planned
    /// on, so the engine's own decide must take it; a refusal there would loop the pipeline.
    #[test]
    fn the_engine_approves_the_first_step_of_its_own_plans(
        (schema, genes, history) in world(),
        seed in any::<u64>(),
    ) {
        let engine = LocalEngine::new(seed);
        let plan = engine.strategy(&strategize_request(&schema, &genes, history.clone(), 8));
        if let Some(first) = plan.primary_mutations.first() {
            let mutation = as_mutation(first);
            let risk = crate::domain::risk::assess(&schema, &genes, &mutation, &history);
            let decision = engine.decision(&DecideRequest {
                ctx: ctx(Role::Decide, "env-first"),
                dna: view(&schema, &genes),
                history,
                mutation,
                local_risk: risk.overall_risk,
                risk_ceiling: 0.8,
                deferrals: 0,
                batch: Vec::new(),
            });
            prop_assert_eq!(
                decision.recommendation,
                Recommendation::Approve,
                "{}",
                decision.reasoning
            );
        }
    }

    #[test]
    fn never_approves_above_the_ceiling(
        risk in prop_oneof![-1.0f64..2.0, Just(f64::NAN), Just(f64::INFINITY)],
        ceiling in prop_oneof![0.0f64..1.0, Just(f64::NAN)],
        value in 192i64..320,
        seed in any::<u64>(),
    ) {
        let (schema, genes) = sample();
        let decision = LocalEngine::new(seed).decision(&decide_request(
            &schema,
            &genes,
            vec![baseline_entry(1.0)],
            vec![("cache", GeneValue::Int(value))],
            risk,
            ceiling,
        ));
        let within = matches!(
            risk.partial_cmp(&ceiling),
            Some(std::cmp::Ordering::Less | std::cmp::Ordering::Equal)
        );
        if !within {
            prop_assert_ne!(decision.recommendation, Recommendation::Approve);
        }
        let r = decision.risk_assessment;
        for v in [decision.confidence, r.overall_risk, r.technical_risk, r.business_risk, r.operational_risk] {
            prop_assert!(v.is_finite() && (0.0..=1.0).contains(&v), "{v}");
        }
    }
}
