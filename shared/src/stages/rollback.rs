//! The Fitness Monitor (what the samples of a window say) and the Rollback Manager (what to do
//! when the window closes).

use std::collections::BTreeMap;

use crate::domain::{EvaluationOutcome, FitnessSample, MetricName};

/// The samples of one evaluation window, summarised.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FitnessSummary {
    /// Reports for this generation and checksum, failed ones included.
    pub reports: u32,
    pub valid: u32,
    pub mean: Option<f64>,
}

/// Summarises the reports that belong to `generation` with `checksum`; others are ignored.
pub fn summarize(samples: &[FitnessSample], generation: u64, checksum: &str) -> FitnessSummary {
    let mut reports = 0;
    let mut valid = 0;
    let mut sum = 0.0;
    for s in samples
        .iter()
        .filter(|s| s.generation == generation && s.checksum == checksum)
    {
        reports += 1;
        if s.is_valid_for(generation, checksum) {
            valid += 1;
            sum += s.score.unwrap_or_default();
        }
    }
    FitnessSummary {
        reports,
        valid,
        mean: (valid > 0).then(|| sum / f64::from(valid)),
    }
}

/// The mean of each metric over the window's valid reports: what the running system measured of
/// this generation besides its score, for the history, the prompts and the events.
pub fn mean_metrics(
    samples: &[FitnessSample],
    generation: u64,
    checksum: &str,
) -> BTreeMap<MetricName, f64> {
    let mut sums: BTreeMap<MetricName, (f64, u32)> = BTreeMap::new();
    for s in samples
        .iter()
        .filter(|s| s.is_valid_for(generation, checksum))
    {
        for (name, value) in &s.metrics {
            let entry = sums.entry(name.clone()).or_insert((0.0, 0));
            entry.0 += value;
            entry.1 += 1;
        }
    }
    sums.into_iter()
        .map(|(name, (sum, n))| (name, sum / f64::from(n)))
        .collect()
}

/// Keep, roll back, or inconclusive (which rolls back by default).
///
/// A baseline (no parent fitness) is kept whenever it was measured at all. A candidate needs
/// `required` valid samples and a mean no worse than its parent's by more than `tolerance`.
pub fn verdict(
    summary: FitnessSummary,
    required: u32,
    baseline: Option<f64>,
    tolerance: f64,
) -> EvaluationOutcome {
    match (baseline, summary.mean) {
        (_, None) => EvaluationOutcome::Inconclusive,
        (None, Some(_)) => EvaluationOutcome::Keep,
        (Some(_), Some(_)) if summary.valid < required => EvaluationOutcome::Inconclusive,
        (Some(parent), Some(mean)) if mean >= parent - tolerance => EvaluationOutcome::Keep,
        (Some(_), Some(_)) => EvaluationOutcome::Rollback,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(valid: u32, mean: Option<f64>) -> FitnessSummary {
        FitnessSummary {
            reports: valid,
            valid,
            mean,
        }
    }

    #[test]
    fn verdicts() {
        use EvaluationOutcome::{Inconclusive, Keep, Rollback};
        // (valid samples, mean, required, baseline, tolerance) and the verdict they call for.
        let cases = [
            ((1, Some(5.0)), 1, Some(4.0), 0.0, Keep),
            ((1, Some(4.0)), 1, Some(4.0), 0.0, Keep),
            ((1, Some(3.9)), 1, Some(4.0), 0.0, Rollback),
            ((1, Some(3.9)), 1, Some(4.0), 0.5, Keep),
            ((1, Some(9.0)), 2, Some(4.0), 0.0, Inconclusive),
            ((0, None), 1, Some(4.0), 0.0, Inconclusive),
            ((1, Some(1.0)), 3, None, 0.0, Keep),
            ((0, None), 1, None, 0.0, Inconclusive),
        ];
        for ((valid, mean), required, baseline, tolerance, expected) in cases {
            assert_eq!(
                verdict(s(valid, mean), required, baseline, tolerance),
                expected,
                "{valid} valid, mean {mean:?}, {required} required, baseline {baseline:?}"
            );
        }
    }
}
