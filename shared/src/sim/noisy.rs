//! A noisy service, and the two ways of judging a mutation on it compared (docs/architecture.md,
//! "Judging a generation").
//!
//! A real service's reports drift with the load over the day and have heavy tails: most reports
//! scatter a few percent around the truth, and now and then a latency spike (a GC pause, a cold
//! cache, a noisy neighbour) drops one far below it. [`compare_rules`] runs many seeded
//! mutations of known true effect through the current rule (keep when the window's mean is at
//! least the parent's) and through the significance judge, at the same `--samples`, and counts
//! the wrong verdicts of each.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::stages::judge::{Finding, judge};

/// Seconds in the day the load cycles over.
const DAY_S: f64 = 86_400.0;

/// How a noisy service's reports scatter around the truth.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NoisyService {
    /// Relative swing of the reports with the load over the day (0.05: +-5%).
    pub drift: f64,
    /// Standard deviation of the log of the everyday scatter (0.05: about 5%).
    pub scatter: f64,
    /// Probability that a report falls in a spike.
    pub spike_probability: f64,
    /// A report in a spike is the truth divided by this.
    pub spike_factor: f64,
}

impl Default for NoisyService {
    fn default() -> Self {
        Self {
            drift: 0.05,
            scatter: 0.05,
            spike_probability: 0.1,
            spike_factor: 3.0,
        }
    }
}

impl NoisyService {
    /// One report of a generation whose true fitness is `truth`, `at_s` seconds into the day.
    pub fn report(&self, truth: f64, at_s: f64, rng: &mut impl Rng) -> f64 {
        self.sample(truth, at_s, rng).0
    }

    /// [`report`](Self::report), and whether the report fell in a spike (when latency is
    /// `spike_factor` times its usual).
    pub fn sample(&self, truth: f64, at_s: f64, rng: &mut impl Rng) -> (f64, bool) {
        let load = 1.0 - self.drift * (std::f64::consts::TAU * at_s / DAY_S).sin();
        let mut value = truth * load * (self.scatter * standard_normal(rng)).exp();
        let spiked = rng.random::<f64>() < self.spike_probability;
        if spiked {
            value /= self.spike_factor;
        }
        (value, spiked)
    }
}

/// One draw of N(0, 1) (Box-Muller).
fn standard_normal(rng: &mut impl Rng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// How a comparison is run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Trials {
    pub service: NoisyService,
    /// Mutations judged, each with a seed of its own.
    pub mutations: u64,
    /// Reports per window (`--samples`).
    pub samples: usize,
    pub confidence: f64,
    /// True effects are drawn uniformly from +-this (relative to the parent's fitness).
    pub max_effect: f64,
    /// An effect at least this large (relative) matters: a mutation this much better must be
    /// kept, one this much worse rolled back; smaller ones may go either way.
    pub meaningful: f64,
    /// Seconds between two reports.
    pub report_every_s: f64,
}

impl Default for Trials {
    fn default() -> Self {
        Self {
            service: NoisyService::default(),
            mutations: 2_000,
            samples: 5,
            confidence: crate::stages::judge::DEFAULT_CONFIDENCE,
            max_effect: 0.12,
            meaningful: 0.03,
            report_every_s: 300.0,
        }
    }
}

/// The wrong verdicts of one rule.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rates {
    /// Kept, though meaningfully worse than the parent.
    pub wrong_keeps: u64,
    /// Rolled back, though meaningfully better.
    pub wrong_rollbacks: u64,
    /// Reports measured per mutation, on average.
    pub mean_samples: f64,
}

/// The current rule and the significance judge on the same mutations and reports.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Comparison {
    /// Mutations meaningfully worse, and meaningfully better, than their parent.
    pub worse: u64,
    pub better: u64,
    pub mean_rule: Rates,
    pub significance: Rates,
    /// The judge against a control measured at the same times as the candidate (a canary),
    /// instead of against the parent's earlier window. Its reports count the candidate's only:
    /// the control runs on instances that serve anyway, like the parent's earlier window.
    pub canary: Rates,
}

impl Comparison {
    pub fn rate(count: u64, of: u64) -> f64 {
        if of == 0 {
            0.0
        } else {
            count as f64 / of as f64
        }
    }
}

/// Judges `trials.mutations` seeded mutations by both rules.
pub fn compare_rules(trials: &Trials) -> Comparison {
    let mut out = Comparison::default();
    let (mut mean_samples, mut judge_samples, mut canary_samples) = (0usize, 0usize, 0usize);
    let service = trials.service;
    let k = trials.samples;
    for seed in 0..trials.mutations {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let effect = rng.random_range(-trials.max_effect..=trials.max_effect);
        let parent_truth = 100.0;
        let truth = parent_truth * (1.0 + effect);
        let start = rng.random_range(0.0..DAY_S);
        let at = |i: usize| start + i as f64 * trials.report_every_s;
        let parent: Vec<f64> = (0..k)
            .map(|i| service.report(parent_truth, at(i), &mut rng))
            .collect();
        // The candidate's window follows the parent's.
        let mut candidate: Vec<f64> = (k..2 * k)
            .map(|i| service.report(truth, at(i), &mut rng))
            .collect();
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let kept_by_mean = mean(&candidate) >= mean(&parent);
        mean_samples += k;
        let first = judge(&candidate, &parent, trials.confidence, false).map(|s| s.finding);
        let finding = if first == Some(Finding::Extend) {
            candidate.extend((2 * k..3 * k).map(|i| service.report(truth, at(i), &mut rng)));
            judge(&candidate, &parent, trials.confidence, true).map(|s| s.finding)
        } else {
            first
        };
        judge_samples += candidate.len();
        let kept_by_judge = finding == Some(Finding::Better);
        // The canary: the same candidate reports against a control measured beside them, from
        // a stream of its own so the other two rules see exactly the reports they always did.
        let mut control_rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_c0de_0000_0000);
        let mut control: Vec<f64> = (k..2 * k)
            .map(|i| service.report(parent_truth, at(i), &mut control_rng))
            .collect();
        let first = judge(&candidate[..k], &control, trials.confidence, false).map(|s| s.finding);
        let canary_finding = if first == Some(Finding::Extend) {
            control.extend(
                (2 * k..3 * k).map(|i| service.report(parent_truth, at(i), &mut control_rng)),
            );
            let extended = if candidate.len() < 2 * k {
                let mut more = candidate.clone();
                more.extend((2 * k..3 * k).map(|i| service.report(truth, at(i), &mut control_rng)));
                more
            } else {
                candidate.clone()
            };
            canary_samples += extended.len();
            judge(&extended, &control, trials.confidence, true).map(|s| s.finding)
        } else {
            canary_samples += k;
            first
        };
        let kept_by_canary = canary_finding == Some(Finding::Better);
        if effect <= -trials.meaningful {
            out.worse += 1;
            out.mean_rule.wrong_keeps += u64::from(kept_by_mean);
            out.significance.wrong_keeps += u64::from(kept_by_judge);
            out.canary.wrong_keeps += u64::from(kept_by_canary);
        } else if effect >= trials.meaningful {
            out.better += 1;
            out.mean_rule.wrong_rollbacks += u64::from(!kept_by_mean);
            out.significance.wrong_rollbacks += u64::from(!kept_by_judge);
            out.canary.wrong_rollbacks += u64::from(!kept_by_canary);
        }
    }
    let n = trials.mutations.max(1) as f64;
    out.mean_rule.mean_samples = mean_samples as f64 / n;
    out.significance.mean_samples = judge_samples as f64 / n;
    out.canary.mean_samples = canary_samples as f64 / n;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_drift_with_the_load_and_have_a_heavy_tail() {
        let service = NoisyService::default();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let busy = DAY_S / 4.0; // sin = 1: the load lowers every report
        let quiet = 3.0 * DAY_S / 4.0;
        let median = |at: f64, rng: &mut ChaCha8Rng| {
            let mut v: Vec<f64> = (0..2_001).map(|_| service.report(100.0, at, rng)).collect();
            v.sort_by(f64::total_cmp);
            v[1_000]
        };
        let (low, high) = (median(busy, &mut rng), median(quiet, &mut rng));
        // Spikes pull the median a little below the load's 95 and 105.
        assert!(
            (93.0..96.0).contains(&low) && (102.0..105.0).contains(&high),
            "{low} {high}"
        );
        let spikes = (0..10_000)
            .filter(|_| service.report(100.0, 0.0, &mut rng) < 50.0)
            .count();
        assert!(
            (800..1_200).contains(&spikes),
            "{spikes} reports in a spike of 10000"
        );
    }

    /// On the noisy service, at equal `--samples`, the significance judge keeps fewer
    /// meaningfully worse mutations and rolls back fewer meaningfully better ones than the mean
    /// rule, over 2000 seeded mutations (`make bench` prints the rates).
    #[test]
    fn significance_makes_fewer_wrong_keeps_and_wrong_rollbacks_than_the_mean_rule() {
        let result = compare_rules(&Trials::default());
        assert!(result.worse > 500 && result.better > 500, "{result:?}");
        let (old, new) = (result.mean_rule, result.significance);
        assert!(new.wrong_keeps < old.wrong_keeps, "{result:?}");
        assert!(new.wrong_rollbacks < old.wrong_rollbacks, "{result:?}");
        // Against a control measured at the same time the load's drift cancels out: fewer
        // wrong verdicts again than against the parent's earlier window.
        let canary = result.canary;
        assert!(canary.wrong_keeps <= new.wrong_keeps, "{result:?}");
        assert!(canary.wrong_rollbacks < new.wrong_rollbacks, "{result:?}");
    }

    #[test]
    fn without_noise_both_rules_are_always_right() {
        let result = compare_rules(&Trials {
            service: NoisyService {
                drift: 0.0,
                scatter: 0.0,
                spike_probability: 0.0,
                spike_factor: 1.0,
            },
            mutations: 200,
            ..Trials::default()
        });
        assert_eq!(
            result.mean_rule.wrong_keeps + result.mean_rule.wrong_rollbacks,
            0
        );
        assert_eq!(
            result.significance.wrong_keeps + result.significance.wrong_rollbacks,
            0,
            "{result:?}"
        );
    }
}
