//! `make bench`: wrong keeps and wrong rollbacks of the mean rule (keep when the window's mean
//! is at least the parent's), of the significance judge (Mann-Whitney U, one extension) against
//! the parent's earlier window, and of the same judge against a concurrent control (a canary),
//! side by side on the noisy service, for several `--samples` and confidences, and the time a
//! verdict takes. Reports count the candidate's only.

use std::time::Instant;

use shared::sim::noisy::{Comparison, Trials, compare_rules};
use shared::stages::judge::judge;

fn main() {
    println!(
        "judge: 2000 seeded mutations per row, true effect uniform in +-12%, meaningful at 3%; \
         reports drift +-5% over the day, scatter 5%, 10% of reports in a spike (1/3 of the truth)"
    );
    println!(
        "{:>7} {:>10} | {:>16} {:>16} {:>7} | {:>16} {:>16} {:>7} | {:>18} {:>16} {:>7}",
        "samples",
        "confidence",
        "mean: wrong keep",
        "wrong rollback",
        "reports",
        "judge: wrong keep",
        "wrong rollback",
        "reports",
        "canary: wrong keep",
        "wrong rollback",
        "reports"
    );
    for samples in [3, 5, 8] {
        for confidence in [0.8, 0.9, 0.95] {
            let result = compare_rules(&Trials {
                samples,
                confidence,
                ..Trials::default()
            });
            let keep = |n| Comparison::rate(n, result.worse) * 100.0;
            let back = |n| Comparison::rate(n, result.better) * 100.0;
            let (old, new, canary) = (result.mean_rule, result.significance, result.canary);
            println!(
                "{samples:>7} {confidence:>10} | {:>15.1}% {:>15.1}% {:>7.1} | {:>16.1}% {:>15.1}% {:>7.1} | {:>17.1}% {:>15.1}% {:>7.1}",
                keep(old.wrong_keeps),
                back(old.wrong_rollbacks),
                old.mean_samples,
                keep(new.wrong_keeps),
                back(new.wrong_rollbacks),
                new.mean_samples,
                keep(canary.wrong_keeps),
                back(canary.wrong_rollbacks),
                canary.mean_samples,
            );
        }
    }
    let candidate: Vec<f64> = (0..10).map(|i| 100.0 + f64::from(i)).collect();
    let parent: Vec<f64> = (0..10).map(|i| 98.0 + f64::from(i)).collect();
    let runs = 200;
    let started = Instant::now();
    for _ in 0..runs {
        std::hint::black_box(judge(&candidate, &parent, 0.8, false));
    }
    println!(
        "judge: one verdict on 10 against 10 reports (exact distribution) takes {:.2} ms",
        started.elapsed().as_secs_f64() * 1e3 / f64::from(runs)
    );
}
