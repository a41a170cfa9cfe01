//! Evaluators the integration tests measure generations with.

use shared::domain::{FitnessScore, GeneValue, Genes};
use shared::evaluator::{EvalError, Evaluator};

/// Fitness is the first gene's value, so a mutation that raises it is kept and generations
/// accumulate.
#[derive(Debug)]
pub struct Rising;

#[async_trait::async_trait]
impl Evaluator for Rising {
    async fn evaluate(&self, genes: &Genes) -> Result<FitnessScore, EvalError> {
        let x = genes
            .values()
            .next()
            .and_then(GeneValue::as_f64)
            .unwrap_or_default();
        Ok(FitnessScore {
            score: x,
            metrics: std::collections::BTreeMap::default(),
        })
    }
}
