//! The comparison baseline: a safe random local search.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::SimSystem;
use super::compare::RunResult;
use crate::domain::{GeneSchema, GeneSpec, GeneValue, Genes};

/// Safe random search: each iteration moves every non-frozen numeric gene by a uniform amount
/// within its max_step (clamped into bounds; a range/8 without one), flips each bool and redraws
/// each choice with a small probability, evaluates the candidate once and keeps it only when it
/// is strictly better. Failed evaluations are never kept. Deterministic given its seed.
#[derive(Debug, Clone)]
pub struct SafeRandomSearch {
    rng: ChaCha8Rng,
    /// Chance per iteration of changing each bool or choice gene.
    pub discrete_probability: f64,
}

impl SafeRandomSearch {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
            discrete_probability: 0.1,
        }
    }

    /// One candidate around `genes`.
    pub fn propose(&mut self, schema: &GeneSchema, genes: &Genes) -> Genes {
        let mut next = genes.clone();
        for (name, def) in schema {
            if def.frozen {
                continue;
            }
            let Some(current) = genes.get(name) else {
                continue;
            };
            let value = match (&def.spec, current) {
                (GeneSpec::Int { min, max, max_step }, GeneValue::Int(x)) => {
                    let reach = max_step.unwrap_or(((max - min) / 8).max(1));
                    if reach <= 0 {
                        continue;
                    }
                    let delta = self.rng.random_range(-reach..=reach);
                    GeneValue::Int(x.saturating_add(delta).clamp(*min, *max))
                }
                (GeneSpec::Float { min, max, max_step }, GeneValue::Float(x)) => {
                    let reach = max_step.unwrap_or((max - min) / 8.0);
                    if reach.is_nan() || reach <= 0.0 {
                        continue;
                    }
                    let delta = self.rng.random_range(-reach..=reach);
                    GeneValue::Float((x + delta).clamp(*min, *max))
                }
                (GeneSpec::Bool, GeneValue::Bool(b)) => {
                    if self.rng.random::<f64>() < self.discrete_probability {
                        GeneValue::Bool(!b)
                    } else {
                        continue;
                    }
                }
                (GeneSpec::Choice { choices }, GeneValue::Choice(_)) => {
                    if choices.len() > 1 && self.rng.random::<f64>() < self.discrete_probability {
                        let pick = self.rng.random_range(0..choices.len());
                        GeneValue::Choice(choices[pick].clone())
                    } else {
                        continue;
                    }
                }
                _ => continue,
            };
            next.insert(name.clone(), value);
        }
        next
    }

    /// Measures the start, then spends `evaluations` more measurements searching.
    pub fn run(&mut self, system: &SimSystem, evaluations: usize) -> RunResult {
        let schema = system.schema().clone();
        let mut genes = system.start().clone();
        let initial = system.measure(&genes).map(|s| s.score).ok();
        let mut best = initial;
        let mut failures = 0;
        for _ in 0..evaluations {
            let candidate = self.propose(&schema, &genes);
            match system.measure(&candidate) {
                Ok(score) => {
                    if best.is_none_or(|b| score.score > b) {
                        best = Some(score.score);
                        genes = candidate;
                    }
                }
                Err(_) => failures += 1,
            }
        }
        RunResult {
            initial: initial.unwrap_or(f64::NAN),
            best: best.unwrap_or(f64::NAN),
            evaluations,
            failures,
            genes,
            history: Vec::new(),
            stopped: None,
        }
    }
}
