//! The Risk Analyzer: a local, explainable risk score for a proposed mutation.
//!
//! Low scores are approved by policy without an LLM; high ones go to the decision engine; above
//! the ceiling nothing may approve. The score only needs to rank mutations sensibly and be stable.

use crate::domain::{
    EvaluationOutcome, GeneSchema, GeneSpec, Genes, HistoryEntry, Mutation, RiskAssessment,
};

/// How many recent evaluations the operational risk looks at.
const RECENT: usize = 10;

/// Scores a (schema-valid) mutation against the current genes and the recent history.
///
/// - technical: each change's risk is its gene's `risk_weight` scaled by the step's size relative
///   to `max_step` (flips of bools and choices count as full steps); independent changes
///   combine like probabilities: `1 - Π(1 - r_i)`.
/// - operational: the recent rollback rate, raised when the mutation touches a gene whose recent
///   change was rolled back.
/// - business: the highest `risk_weight` among the genes touched.
/// - overall: `1 - (1 - technical)(1 - operational / 2)`, never below half the business risk.
pub fn assess(
    schema: &GeneSchema,
    genes: &Genes,
    mutation: &Mutation,
    history: &[HistoryEntry],
) -> RiskAssessment {
    let mut safe = 1.0;
    let mut business: f64 = 0.0;
    for change in &mutation.changes {
        let Some(def) = schema.get(&change.gene) else {
            continue;
        };
        let magnitude = match (&def.spec, genes.get(&change.gene)) {
            (GeneSpec::Int { .. } | GeneSpec::Float { .. }, Some(current)) => {
                let from = current.as_f64().unwrap_or(0.0);
                let to = change.value.as_f64().unwrap_or(from);
                let scale = def.spec.max_step().or_else(|| {
                    def.spec
                        .range()
                        .map(|(lo, hi)| (hi - lo).abs().max(f64::EPSILON))
                });
                scale.map_or(1.0, |s| ((to - from).abs() / s).min(1.0))
            }
            _ => 1.0,
        };
        let r = def.risk_weight * (0.3 + 0.7 * magnitude);
        safe *= 1.0 - r.clamp(0.0, 1.0);
        business = business.max(def.risk_weight);
    }
    let technical = 1.0 - safe;
    let recent: Vec<&HistoryEntry> = history.iter().rev().take(RECENT).collect();
    let failures = recent
        .iter()
        .filter(|h| h.outcome != EvaluationOutcome::Keep)
        .count();
    let mut operational = if recent.is_empty() {
        0.0
    } else {
        failures as f64 / recent.len() as f64
    };
    let touches_failed_gene = recent.iter().take(3).any(|h| {
        h.outcome != EvaluationOutcome::Keep
            && h.changes
                .iter()
                .any(|c| mutation.changes.iter().any(|m| m.gene == c.gene))
    });
    if touches_failed_gene {
        operational = (operational + 0.2).min(1.0);
    }
    let overall = (1.0 - (1.0 - technical) * (1.0 - operational / 2.0)).max(business / 2.0);
    RiskAssessment {
        overall_risk: overall.clamp(0.0, 1.0),
        technical_risk: technical.clamp(0.0, 1.0),
        business_risk: business.clamp(0.0, 1.0),
        operational_risk: operational.clamp(0.0, 1.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{GeneChange, GeneDef, GeneName, GeneValue};

    fn setup(weight: f64) -> (GeneSchema, Genes) {
        let name = GeneName::parse("x").expect("name");
        let mut schema = GeneSchema::new();
        schema.insert(
            name.clone(),
            GeneDef {
                spec: GeneSpec::Int {
                    min: 0,
                    max: 100,
                    max_step: Some(10),
                },
                risk_weight: weight,
                description: None,
                frozen: false,
            },
        );
        let mut genes = Genes::new();
        genes.insert(name, GeneValue::Int(50));
        (schema, genes)
    }

    fn step(to: i64) -> Mutation {
        Mutation {
            id: "m".into(),
            changes: vec![GeneChange {
                gene: GeneName::parse("x").expect("name"),
                value: GeneValue::Int(to),
            }],
            description: String::new(),
            predicted_impact: 0.0,
            plan_step: None,
        }
    }

    #[test]
    fn bigger_steps_and_heavier_genes_are_riskier() {
        let (schema, genes) = setup(0.5);
        let small = assess(&schema, &genes, &step(51), &[]).overall_risk;
        let large = assess(&schema, &genes, &step(60), &[]).overall_risk;
        assert!(small < large, "{small} < {large}");
        let (heavy_schema, genes) = setup(0.9);
        let heavy = assess(&heavy_schema, &genes, &step(60), &[]).overall_risk;
        assert!(large < heavy, "{large} < {heavy}");
        for r in [small, large, heavy] {
            assert!((0.0..=1.0).contains(&r));
        }
    }
}
