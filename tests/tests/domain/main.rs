//! Domain contracts: the seed's schemas round-trip through our types, and no mutation that
//! `apply_mutation` accepts can leave the gene schema.

use proptest::prelude::*;
use serde_json::Value;
use shared::domain::{
    Body, BudgetMode, DecisionRecord, DnaFile, Envelope, EvolutionEvent, GeneChange, GeneDef,
    GeneName, GeneSchema, GeneSpec, GeneValue, Generation, Genes, MAX_CHOICE_BYTES, MAX_CHOICES,
    MAX_DESCRIPTION_CHARS, MAX_GENES, Mutation, MutationError, Origin, apply_mutation, checksum,
    genes_from_json,
};
use shared::store::{SystemRecord, SystemSettings};

fn round_trip<T: serde::Serialize + serde::de::DeserializeOwned>(text: &str) -> (Value, Value) {
    let original: Value = serde_json::from_str(text).expect("fixture is JSON");
    let typed: T = serde_json::from_value(original.clone()).expect("fixture fits the type");
    let back = serde_json::to_value(&typed).expect("serializes");
    (original, back)
}

#[test]
fn seed_evolution_event_round_trips_with_the_same_fields() {
    let (original, back) =
        round_trip::<EvolutionEvent>(include_str!("../../data/seed_evolution_event.json"));
    assert_eq!(original, back);
}

#[test]
fn seed_bedrock_decision_round_trips_with_the_same_fields() {
    let (original, back) =
        round_trip::<DecisionRecord>(include_str!("../../data/seed_bedrock_decision.json"));
    assert_eq!(original, back);
}

#[test]
fn seed_decision_rejects_an_unknown_recommendation() {
    let text = include_str!("../../data/seed_bedrock_decision.json").replace("APPROVE", "MAYBE");
    assert!(serde_json::from_str::<DecisionRecord>(&text).is_err());
}

/// A random gene: its definition and a valid current value.
fn gene() -> impl Strategy<Value = (GeneDef, GeneValue)> {
    let int = (-1000i64..1000, 1i64..500, proptest::option::of(1i64..100)).prop_flat_map(
        |(min, span, step)| {
            (min..=min + span).prop_map(move |v| {
                (
                    GeneSpec::Int {
                        min,
                        max: min + span,
                        max_step: step,
                    },
                    GeneValue::Int(v),
                )
            })
        },
    );
    let float = (
        -100.0f64..100.0,
        0.1f64..50.0,
        proptest::option::of(0.01f64..10.0),
    )
        .prop_flat_map(|(min, span, step)| {
            (0.0f64..=1.0).prop_map(move |t| {
                (
                    GeneSpec::Float {
                        min,
                        max: min + span,
                        max_step: step,
                    },
                    GeneValue::Float(min + t * span),
                )
            })
        });
    let boolean = any::<bool>().prop_map(|b| (GeneSpec::Bool, GeneValue::Bool(b)));
    let choice = (1usize..5).prop_flat_map(|n| {
        (0..n).prop_map(move |i| {
            let choices: Vec<String> = (0..n).map(|k| format!("c{k}")).collect();
            let v = GeneValue::Choice(choices[i].clone());
            (GeneSpec::Choice { choices }, v)
        })
    });
    (
        prop_oneof![int, float, boolean, choice],
        0.0f64..=1.0,
        proptest::bool::weighted(0.2),
    )
        .prop_map(|((spec, value), risk_weight, frozen)| {
            (
                GeneDef {
                    spec,
                    risk_weight,
                    description: None,
                    frozen,
                },
                value,
            )
        })
}

fn dna() -> impl Strategy<Value = (GeneSchema, Genes)> {
    proptest::collection::vec(gene(), 1..8).prop_map(|genes| {
        let mut schema = GeneSchema::new();
        let mut values = Genes::new();
        for (i, (def, value)) in genes.into_iter().enumerate() {
            let name = GeneName::parse(format!("g{i}")).expect("valid name");
            schema.insert(name.clone(), def);
            values.insert(name, value);
        }
        (schema, values)
    })
}

/// Any value a proposer might send, valid or not.
fn any_value() -> impl Strategy<Value = GeneValue> {
    prop_oneof![
        (-2000i64..2000).prop_map(GeneValue::Int),
        (-300.0f64..300.0).prop_map(GeneValue::Float),
        any::<bool>().prop_map(GeneValue::Bool),
        (0usize..6).prop_map(|k| GeneValue::Choice(format!("c{k}"))),
    ]
}

fn within_schema(schema: &GeneSchema, genes: &Genes) -> bool {
    schema.iter().all(|(name, def)| {
        genes
            .get(name)
            .is_some_and(|v| def.spec.kind() == v.kind() && def.spec.check_bounds(v).is_ok())
    }) && genes.len() == schema.len()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Whatever is proposed, an accepted mutation changes exactly the named genes to exactly the
    /// proposed values and leaves every gene inside its schema; refused ones name a reason.
    #[test]
    fn accepted_proposals_are_applied_exactly_and_stay_in_the_schema(
        (schema, genes) in dna(),
        picks in proptest::collection::vec((0usize..10, any_value()), 1..4),
    ) {
        let names: Vec<GeneName> = schema.keys().cloned().collect();
        let changes: Vec<GeneChange> = picks
            .into_iter()
            .map(|(i, value)| GeneChange { gene: names[i % names.len()].clone(), value })
            .collect();
        let mutation = Mutation {
            id: "m".into(),
            changes: changes.clone(),
            description: String::new(),
            predicted_impact: 0.0,
            plan_step: None,
        };
        match apply_mutation(&schema, &genes, &mutation) {
            Ok(next) => {
                prop_assert!(within_schema(&schema, &next));
                for (name, value) in &next {
                    let expected = changes
                        .iter()
                        .find(|c| &c.gene == name)
                        .map_or_else(|| genes[name].clone(), |c| schema[name].spec.coerce(&c.value));
                    prop_assert_eq!(value, &expected);
                }
                for c in &changes {
                    prop_assert!(!schema[&c.gene].frozen);
                    if let (Some(step), Some(a), Some(b)) =
                        (schema[&c.gene].spec.max_step(), genes[&c.gene].as_f64(), next[&c.gene].as_f64())
                    {
                        prop_assert!((a - b).abs() <= step * (1.0 + 1e-9));
                    }
                }
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    /// Valid proposals built from the schema are always accepted.
    #[test]
    fn valid_proposals_are_accepted(
        (schema, genes) in dna(),
        t in 0.0f64..=1.0,
    ) {
        for (name, def) in schema.iter().filter(|(_, d)| !d.frozen) {
            let current = &genes[name];
            let value = match (&def.spec, current) {
                (GeneSpec::Int { min, max, max_step }, GeneValue::Int(v)) => {
                    let step = max_step.unwrap_or(max - min).max(1);
                    let lo = (*v - step).max(*min);
                    let hi = (*v + step).min(*max);
                    let target = lo + ((hi - lo) as f64 * t).round() as i64;
                    if target == *v { continue; }
                    GeneValue::Int(target)
                }
                (GeneSpec::Float { min, max, max_step }, GeneValue::Float(v)) => {
                    let step = max_step.unwrap_or(max - min);
                    let lo = (v - step).max(*min);
                    let hi = (v + step).min(*max);
                    let target = lo + (hi - lo) * t;
                    if (target - v).abs() < f64::EPSILON { continue; }
                    GeneValue::Float(target)
                }
                (GeneSpec::Bool, GeneValue::Bool(b)) => GeneValue::Bool(!b),
                (GeneSpec::Choice { choices }, GeneValue::Choice(c)) => {
                    match choices.iter().find(|x| *x != c) {
                        Some(other) => GeneValue::Choice(other.clone()),
                        None => continue,
                    }
                }
                _ => continue,
            };
            let mutation = Mutation {
                id: "m".into(),
                changes: vec![GeneChange { gene: name.clone(), value: value.clone() }],
                description: String::new(),
                predicted_impact: 0.0,
                plan_step: None,
            };
            let next = apply_mutation(&schema, &genes, &mutation);
            prop_assert!(next.is_ok(), "{:?} refused: {:?}", mutation, next);
            let next = next.expect("accepted");
            prop_assert_eq!(&next[name], &value);
            prop_assert!(within_schema(&schema, &next));
        }
    }

    /// The checksum survives the trip through a message's JSON gene map.
    #[test]
    fn checksum_survives_json((schema, genes) in dna()) {
        let json = serde_json::to_value(&genes).expect("json");
        let back = genes_from_json(&schema, &json).expect("reads back");
        prop_assert_eq!(checksum(&back), checksum(&genes));
    }
}

#[test]
fn frozen_gene_refusal_is_typed() {
    let name = GeneName::parse("region").expect("name");
    let mut schema = GeneSchema::new();
    schema.insert(
        name.clone(),
        GeneDef {
            spec: GeneSpec::Choice {
                choices: vec!["a".into(), "b".into()],
            },
            risk_weight: 0.5,
            description: None,
            frozen: true,
        },
    );
    let mut genes = Genes::new();
    genes.insert(name.clone(), GeneValue::Choice("a".into()));
    let m = Mutation {
        id: "m".into(),
        changes: vec![GeneChange {
            gene: name,
            value: GeneValue::Choice("b".into()),
        }],
        description: String::new(),
        predicted_impact: 0.0,
        plan_step: None,
    };
    assert!(matches!(
        apply_mutation(&schema, &genes, &m),
        Err(MutationError::Frozen(_))
    ));
}

/// Every message shape survives its JSON trip: a body that cannot be read back would be
/// dead-lettered by the next stage.
#[test]
fn every_message_body_round_trips_through_json() {
    use shared::domain::{
        Alert, AlertLevel, Body, BudgetPeriod, BudgetScope, ConflictKind, CycleReason, Envelope,
        PlanStepRef, Severity, StepOutcome, SystemConflict, SystemId,
    };
    let step = PlanStepRef {
        plan_id: "plan_1".into(),
        step: 2,
    };
    let mutation = Mutation {
        id: "m".into(),
        changes: vec![GeneChange {
            gene: GeneName::parse("x").expect("name"),
            value: GeneValue::Float(2.5),
        }],
        description: "d".into(),
        predicted_impact: 1.0,
        plan_step: Some(step.clone()),
    };
    let at = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
        .expect("time")
        .with_timezone(&chrono::Utc);
    let bodies = vec![
        Body::CycleRequested {
            reason: CycleReason::Scheduled,
        },
        Body::CycleRequested {
            reason: CycleReason::HeadMoved,
        },
        Body::CycleRequested {
            reason: CycleReason::PlanEmpty,
        },
        Body::CycleRequested {
            reason: CycleReason::RetryLater,
        },
        Body::CycleRequested {
            reason: CycleReason::Step {
                step: step.clone(),
                outcome: StepOutcome::Kept { actual_impact: 1.5 },
            },
        },
        Body::CycleRequested {
            reason: CycleReason::Step {
                step: step.clone(),
                outcome: StepOutcome::RolledBack,
            },
        },
        Body::CycleRequested {
            reason: CycleReason::Step {
                step,
                outcome: StepOutcome::Rejected { why: "risk".into() },
            },
        },
        Body::AnalysisReady {
            analysis_id: "a".into(),
        },
        Body::MutationProposed {
            mutation: mutation.clone(),
            deferrals: 1,
        },
        Body::MutationApproved {
            decision_id: "d".into(),
            mutation,
        },
        Body::RollbackRequested {
            to_generation: Some(3),
            requested_by: "op".into(),
            reason: "r".into(),
        },
        Body::EvaluationDue { generation: 4 },
        Body::FitnessReported {
            generation: 4,
            checksum: "c".into(),
            score: Some(1.0),
            metrics: [(shared::domain::MetricName::parse("p99").expect("name"), 2.0)].into(),
            error: None,
            cohort: Some(shared::domain::Cohort::Control),
        },
        Body::FitnessReported {
            generation: 4,
            checksum: "c".into(),
            score: None,
            metrics: std::collections::BTreeMap::default(),
            error: Some("exit 3".into()),
            cohort: None,
        },
        Body::ConflictDetected {
            conflict: SystemConflict {
                kind: ConflictKind::RollbackStreak,
                description: "d".into(),
                affected_components: vec![],
                severity: Severity::High,
                current_impact: "i".into(),
                available_resources: vec![],
                active_processes: 0,
                recent_changes: vec![],
            },
        },
        Body::DnaUpdated {
            generation: 5,
            genes: serde_json::json!({"x": 1}),
            checksum: "c".into(),
            canary: Some(shared::domain::CanaryRollout {
                share: 0.1,
                rule: shared::domain::canary::COHORT_RULE.into(),
                control_generation: 4,
                control_checksum: "p".into(),
                control_genes: serde_json::json!({"x": 0}),
            }),
        },
        Body::DnaRolledBack {
            generation: 6,
            restored_generation: 4,
            genes: serde_json::json!({}),
            checksum: "c".into(),
            measure: true,
        },
        Body::BudgetThresholdCrossed {
            scope: BudgetScope::Global,
            period: BudgetPeriod::Day,
            percent: 80,
        },
        Body::BudgetSweep {},
        Body::ApprovalGiven {
            decision_id: "d".into(),
            approve: false,
            approver: "op".into(),
            note: Some("n".into()),
        },
        Body::ApprovalExpired {
            decision_id: "d".into(),
        },
        Body::ResumeRequested {
            requested_by: "op".into(),
            note: Some("n".into()),
        },
        Body::ResumeRequested {
            requested_by: "op".into(),
            note: None,
        },
        Body::AlertRaised {
            alert: Alert {
                id: "a".into(),
                level: AlertLevel::Critical,
                kind: "k".into(),
                message: "m".into(),
                system_id: None,
                at,
            },
        },
    ];
    for body in bodies {
        let env = Envelope {
            id: "msg".into(),
            causation_id: "c".into(),
            system_id: SystemId::parse("svc").expect("id"),
            base_generation: 3,
            sent_at: at,
            traceparent: None,
            body,
        };
        let text = serde_json::to_string(&env).expect("serializes");
        let back: Envelope = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{} does not read back: {e}\n{text}", env.body.type_name()));
        assert_eq!(back, env);
    }
}

/// DynamoDB's item size limit and SNS's message size limit, in bytes.
const DYNAMODB_ITEM_BYTES: usize = 400 * 1024;
const SNS_MESSAGE_BYTES: usize = 256 * 1024;

/// The largest DNA file the limits admit: every gene a choice gene at every limit, with the
/// characters that cost the most bytes once stored as JSON (`"` doubles when escaped, a
/// four-byte character is four bytes in UTF-8).
fn maximal_dna_file() -> String {
    let choice = |i: usize| format!("{i:02}{}", "\"".repeat(MAX_CHOICE_BYTES - 2));
    let choices: Vec<String> = (0..MAX_CHOICES).map(choice).collect();
    let genes: serde_json::Map<String, Value> = (0..MAX_GENES)
        .map(|i| {
            let name = format!("{:_<64}", format!("g{i}"));
            let gene = serde_json::json!({
                "type": "choice",
                "value": choices[0],
                "choices": choices,
                "risk_weight": 0.300_000_000_000_000_04,
                "description": "\u{1d11e}".repeat(MAX_DESCRIPTION_CHARS),
            });
            (name, gene)
        })
        .collect();
    serde_json::json!({"system_id": "s".repeat(64), "genes": genes}).to_string()
}

#[test]
fn a_dna_at_every_limit_fits_a_dynamodb_item_and_an_sns_message_with_room_to_spare() {
    let (system_id, schema, genes) = DnaFile::parse(&maximal_dna_file()).expect("at the limits");
    assert_eq!(schema.len(), MAX_GENES);
    let now = chrono::Utc::now();

    // The registry item holds the whole schema.
    let system = SystemRecord {
        system_id: system_id.clone(),
        schema: schema.clone(),
        settings: SystemSettings::default(),
        created_at: now,
        next_cycle_at: now,
        evaluation_deadline: Some(now),
        cost_mode: BudgetMode::Normal,
        approval_expires_at: Some(now),
        // The day's and the month's budget alerts at most.
        budget_alerts: vec!["COST#2026-12-04".into(), "COST#2026-12".into()],
        version: u64::MAX,
    };
    let registry = serde_json::to_vec(&system).expect("json").len();

    // A generation item holds every value and the mutation that changed them all, with the
    // longest description an answer keeps (2,000 characters).
    let other = |name: &GeneName| {
        let GeneSpec::Choice { choices } = &schema[name].spec else {
            unreachable!("every gene is a choice gene")
        };
        GeneValue::Choice(choices[MAX_CHOICES - 1].clone())
    };
    let mutation = Mutation {
        id: "m".repeat(64),
        changes: genes
            .keys()
            .map(|gene| GeneChange {
                gene: gene.clone(),
                value: other(gene),
            })
            .collect(),
        description: "\u{1d11e}".repeat(2_000),
        predicted_impact: f64::MIN_POSITIVE,
        plan_step: None,
    };
    let next = apply_mutation(&schema, &genes, &mutation).expect("valid mutation");
    let generation = Generation::new(
        system_id.clone(),
        9_999_999_999,
        Some(9_999_999_998),
        next.clone(),
        Origin::Mutation {
            decision_id: "d".repeat(64),
            mutation,
        },
        now,
    );
    let generation_item = serde_json::to_vec(&generation).expect("json").len();

    // The message every subscriber receives.
    let updated = Envelope::caused_by(
        &"c".repeat(64),
        None,
        "snapshot",
        0,
        system_id,
        9_999_999_999,
        now,
        Body::DnaUpdated {
            generation: 9_999_999_999,
            genes: serde_json::to_value(&next).expect("json"),
            checksum: generation.checksum.clone(),
            canary: None,
        },
    );
    let message = serde_json::to_vec(&updated).expect("json").len();

    assert!(
        registry < DYNAMODB_ITEM_BYTES * 6 / 10,
        "registry item: {registry} bytes"
    );
    assert!(
        generation_item < DYNAMODB_ITEM_BYTES / 4,
        "generation item: {generation_item} bytes"
    );
    assert!(
        message < SNS_MESSAGE_BYTES / 8,
        "DnaUpdated: {message} bytes"
    );
}
