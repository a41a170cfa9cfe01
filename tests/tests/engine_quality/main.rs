//! Engine quality: on each benchmark landscape, at equal evaluation counts, the local engine
//! driven through the real local pipeline must gain at least 1.2x the mean fitness that the safe
//! random search gains.
//!
//! `cargo test -p tests --test engine_quality -- --nocapture` prints the figures.

use shared::sim::{Landscape, compare_on};

/// Seeds of the comparison: each seeds the engine, the baseline and the start's jitter.
const SEEDS: [u64; 24] = [
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 101, 202, 303, 404,
];
/// Measurements each search may spend after measuring the starting point.
const EVALUATIONS: usize = 30;
const REQUIRED_RATIO: f64 = 1.2;

#[test]
fn the_engine_beats_random_search_on_every_landscape() {
    let mut shortfalls = Vec::new();
    for landscape in Landscape::BENCHMARKS {
        let comparison = compare_on(landscape, &SEEDS, EVALUATIONS).expect("the comparison runs");
        println!("{comparison}");
        // The engine may stop early once nothing promising is left; it never gets more.
        for run in &comparison.engine_runs {
            assert!(run.evaluations <= EVALUATIONS, "over budget on {landscape}");
        }
        let used: usize = comparison.engine_runs.iter().map(|r| r.evaluations).sum();
        println!(
            "{:<12} engine used {:.1} of {EVALUATIONS} evaluations on average",
            "",
            used as f64 / SEEDS.len() as f64
        );
        if comparison.ratio() < REQUIRED_RATIO {
            shortfalls.push(comparison.to_string());
        }
    }
    assert!(
        shortfalls.is_empty(),
        "below {REQUIRED_RATIO}x: {shortfalls:#?}"
    );
}
