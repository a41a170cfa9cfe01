//! Mutations: one or more gene changes, validated against the gene schema before they are applied.

use serde::{Deserialize, Serialize};

use super::gene::{GeneKind, GeneSchema, GeneValue, Genes, Step};
use super::ids::GeneName;

/// Set one gene to a new value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct GeneChange {
    pub gene: GeneName,
    pub value: GeneValue,
}

/// Where a mutation came from, so outcomes can be fed back to the plan that proposed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanStepRef {
    pub plan_id: String,
    /// Index into the plan's ordered steps.
    pub step: u32,
}

/// A proposed change to the DNA.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mutation {
    pub id: String,
    pub changes: Vec<GeneChange>,
    #[serde(default)]
    pub description: String,
    /// The proposer's expected fitness change (positive is better).
    #[serde(default)]
    pub predicted_impact: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_step: Option<PlanStepRef>,
}

/// Why a mutation was refused. Each reason is its own variant so callers and tests can tell them
/// apart; values are never clamped into range (docs/architecture.md, "Exactly once").
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MutationError {
    #[error("the mutation changes no gene")]
    Empty,
    #[error("gene {0} is changed twice in one mutation")]
    DuplicateGene(GeneName),
    #[error("unknown gene {0}")]
    UnknownGene(String),
    #[error("gene {gene} is {expected}, the mutation gives a {got}")]
    WrongType {
        gene: GeneName,
        expected: GeneKind,
        got: GeneKind,
    },
    #[error("gene {gene}: {reason}")]
    OutOfBounds { gene: GeneName, reason: String },
    #[error("gene {gene}: step {step} is above its max_step {max_step}")]
    StepTooLarge {
        gene: GeneName,
        step: Step,
        max_step: Step,
    },
    #[error("gene {0} is frozen")]
    Frozen(GeneName),
    #[error("gene {gene} already has the value {value}")]
    NoChange { gene: GeneName, value: GeneValue },
}

/// Applies `mutation` to `genes` under `schema`, or says why it may not be applied.
///
/// The result is a new value map; the input is untouched, since generations are immutable.
pub fn apply_mutation(
    schema: &GeneSchema,
    genes: &Genes,
    mutation: &Mutation,
) -> Result<Genes, MutationError> {
    if mutation.changes.is_empty() {
        return Err(MutationError::Empty);
    }
    let mut next = genes.clone();
    let mut seen = Vec::with_capacity(mutation.changes.len());
    for change in &mutation.changes {
        if seen.contains(&&change.gene) {
            return Err(MutationError::DuplicateGene(change.gene.clone()));
        }
        seen.push(&change.gene);
        let value = check_change(schema, genes, change)?;
        next.insert(change.gene.clone(), value);
    }
    Ok(next)
}

/// Validates one change against the current value and the schema; returns the value to store.
pub fn check_change(
    schema: &GeneSchema,
    genes: &Genes,
    change: &GeneChange,
) -> Result<GeneValue, MutationError> {
    let gene = &change.gene;
    let def = schema
        .get(gene)
        .ok_or_else(|| MutationError::UnknownGene(gene.to_string()))?;
    if def.frozen {
        return Err(MutationError::Frozen(gene.clone()));
    }
    let value = def.spec.coerce(&change.value);
    let expected = def.spec.kind();
    let got = value.kind();
    if expected != got {
        return Err(MutationError::WrongType {
            gene: gene.clone(),
            expected,
            got,
        });
    }
    def.spec
        .check_bounds(&value)
        .map_err(|reason| MutationError::OutOfBounds {
            gene: gene.clone(),
            reason,
        })?;
    let current = genes
        .get(gene)
        .ok_or_else(|| MutationError::UnknownGene(gene.to_string()))?;
    if current == &value {
        return Err(MutationError::NoChange {
            gene: gene.clone(),
            value: current.clone(),
        });
    }
    if let Some((step, max_step)) = def.spec.step_beyond_max(current, &value) {
        return Err(MutationError::StepTooLarge {
            gene: gene.clone(),
            step,
            max_step,
        });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::gene::{GeneDef, GeneSpec};

    fn name(s: &str) -> GeneName {
        GeneName::parse(s).expect("valid name")
    }

    fn schema() -> (GeneSchema, Genes) {
        let mut schema = GeneSchema::new();
        let mut genes = Genes::new();
        let mut add = |n: &str, spec: GeneSpec, frozen: bool, v: GeneValue| {
            schema.insert(
                name(n),
                GeneDef {
                    spec,
                    risk_weight: 0.5,
                    description: None,
                    frozen,
                },
            );
            genes.insert(name(n), v);
        };
        add(
            "cache",
            GeneSpec::Int {
                min: 16,
                max: 4096,
                max_step: Some(512),
            },
            false,
            GeneValue::Int(256),
        );
        add(
            "timeout",
            GeneSpec::Float {
                min: 0.1,
                max: 30.0,
                max_step: Some(2.0),
            },
            false,
            GeneValue::Float(2.5),
        );
        add("prefetch", GeneSpec::Bool, false, GeneValue::Bool(false));
        add(
            "codec",
            GeneSpec::Choice {
                choices: vec!["none".into(), "lz4".into()],
            },
            false,
            GeneValue::Choice("lz4".into()),
        );
        add(
            "region",
            GeneSpec::Choice {
                choices: vec!["eu".into()],
            },
            true,
            GeneValue::Choice("eu".into()),
        );
        (schema, genes)
    }

    fn mutation(changes: Vec<(&str, GeneValue)>) -> Mutation {
        Mutation {
            id: "mut_test".into(),
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
        }
    }

    #[test]
    fn each_rejection_reason_is_its_own_error() {
        type Expectation = fn(&MutationError) -> bool;
        let (schema, genes) = schema();
        let cases: Vec<(Mutation, Expectation)> = vec![
            (mutation(vec![]), |e| matches!(e, MutationError::Empty)),
            (mutation(vec![("nope", GeneValue::Int(1))]), |e| {
                matches!(e, MutationError::UnknownGene(_))
            }),
            (mutation(vec![("cache", GeneValue::Bool(true))]), |e| {
                matches!(e, MutationError::WrongType { .. })
            }),
            (mutation(vec![("cache", GeneValue::Int(8))]), |e| {
                matches!(e, MutationError::OutOfBounds { .. })
            }),
            (
                mutation(vec![("codec", GeneValue::Choice("zstd".into()))]),
                |e| matches!(e, MutationError::OutOfBounds { .. }),
            ),
            (mutation(vec![("cache", GeneValue::Int(1024))]), |e| {
                matches!(e, MutationError::StepTooLarge { .. })
            }),
            (mutation(vec![("timeout", GeneValue::Float(4.6))]), |e| {
                matches!(e, MutationError::StepTooLarge { .. })
            }),
            (
                mutation(vec![("region", GeneValue::Choice("eu".into()))]),
                |e| matches!(e, MutationError::Frozen(_)),
            ),
            (mutation(vec![("prefetch", GeneValue::Bool(false))]), |e| {
                matches!(e, MutationError::NoChange { .. })
            }),
            (
                mutation(vec![
                    ("prefetch", GeneValue::Bool(true)),
                    ("prefetch", GeneValue::Bool(true)),
                ]),
                |e| matches!(e, MutationError::DuplicateGene(_)),
            ),
        ];
        for (m, is_expected) in cases {
            let err = apply_mutation(&schema, &genes, &m).expect_err("must be refused");
            assert!(is_expected(&err), "unexpected error {err:?} for {m:?}");
        }
    }

    #[test]
    fn valid_mutation_is_applied_exactly_and_leaves_the_input_alone() {
        let (schema, genes) = schema();
        let m = mutation(vec![
            ("cache", GeneValue::Int(768)),
            ("timeout", GeneValue::Float(0.5)),
            ("prefetch", GeneValue::Bool(true)),
        ]);
        let next = apply_mutation(&schema, &genes, &m).expect("valid");
        assert_eq!(next[&name("cache")], GeneValue::Int(768));
        assert_eq!(next[&name("timeout")], GeneValue::Float(0.5));
        assert_eq!(next[&name("prefetch")], GeneValue::Bool(true));
        assert_eq!(next[&name("codec")], genes[&name("codec")]);
        assert_eq!(genes[&name("cache")], GeneValue::Int(256));
    }

    fn int_gene(min: i64, max: i64, max_step: i64, value: i64) -> (GeneSchema, Genes) {
        let def = GeneDef {
            spec: GeneSpec::Int {
                min,
                max,
                max_step: Some(max_step),
            },
            risk_weight: 0.5,
            description: None,
            frozen: false,
        };
        (
            GeneSchema::from([(name("n"), def)]),
            Genes::from([(name("n"), GeneValue::Int(value))]),
        )
    }

    fn step(min: i64, max: i64, max_step: i64, from: i64, to: i64) -> Result<(), MutationError> {
        let (schema, genes) = int_gene(min, max, max_step, from);
        let change = GeneChange {
            gene: name("n"),
            value: GeneValue::Int(to),
        };
        check_change(&schema, &genes, &change).map(|_| ())
    }

    #[test]
    fn int_steps_are_measured_exactly() {
        const TWO_53: i64 = 1 << 53;
        let cases = [
            // A relative tolerance lets a step of 10^15 + 500 pass a max_step of 10^15.
            (
                0,
                i64::MAX,
                1_000_000_000_000_000,
                0,
                1_000_000_000_000_500,
                false,
            ),
            (
                0,
                i64::MAX,
                1_000_000_000_000_000,
                0,
                1_000_000_000_000_000,
                true,
            ),
            // Above 2^53 a float rounds 2^53 + 1 down and 2^53 + 3 up: a step of 2 reads as 4.
            (0, i64::MAX, 2, TWO_53 + 1, TWO_53 + 3, true),
            (0, i64::MAX, 2, TWO_53 + 1, TWO_53 + 4, false),
            // At the extremes a float cannot tell i64::MAX + 1 from i64::MAX, nor overflow.
            (i64::MIN, i64::MAX, i64::MAX, -1, i64::MAX, false),
            (i64::MIN, i64::MAX, i64::MAX, 0, i64::MAX, true),
            (i64::MIN, i64::MAX, i64::MAX, i64::MIN, i64::MAX, false),
            (i64::MIN, i64::MAX, i64::MAX, i64::MIN + 1, 0, true),
            (i64::MIN, i64::MAX, i64::MAX, i64::MIN, 0, false),
        ];
        for (min, max, max_step, from, to, allowed) in cases {
            let result = step(min, max, max_step, from, to);
            if allowed {
                assert_eq!(result, Ok(()), "{from} -> {to} within {max_step}");
            } else {
                assert!(
                    matches!(result, Err(MutationError::StepTooLarge { .. })),
                    "{from} -> {to} beyond {max_step}: {result:?}"
                );
            }
        }
    }

    #[test]
    fn an_int_step_error_prints_exact_integers() {
        let err = step(0, i64::MAX, 2, (1 << 53) + 1, (1 << 53) + 4).expect_err("too far");
        assert_eq!(err.to_string(), "gene n: step 3 is above its max_step 2");
    }
}
