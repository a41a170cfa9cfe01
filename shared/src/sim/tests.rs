use super::*;
use crate::domain::{GeneKind, GeneName};

fn name(s: &str) -> GeneName {
    GeneName::parse(s).expect("valid gene name")
}

fn with(genes: &Genes, changes: &[(&str, GeneValue)]) -> Genes {
    let mut next = genes.clone();
    for (gene, value) in changes {
        next.insert(name(gene), value.clone());
    }
    next
}

#[test]
fn every_system_round_trips_through_a_dna_file() {
    for landscape in [Landscape::Demo].into_iter().chain(Landscape::BENCHMARKS) {
        let system = landscape.system();
        let (id, schema, genes) = DnaFile::parse(&system.dna_json()).expect("valid DNA file");
        assert_eq!((id, schema, genes), system.dna(), "{landscape}");
        assert!(system.measure(system.start()).is_ok(), "{landscape}");
    }
}

#[test]
fn the_demo_has_mixed_interacting_genes_and_a_frozen_one() {
    let system = demo_system();
    let schema = system.schema();
    assert!(schema.len() >= 6);
    let kinds: Vec<GeneKind> = schema.values().map(|d| d.spec.kind()).collect();
    for kind in [
        GeneKind::Int,
        GeneKind::Float,
        GeneKind::Bool,
        GeneKind::Choice,
    ] {
        assert!(kinds.contains(&kind), "{kind}");
    }
    assert_eq!(schema.values().filter(|d| d.frozen).count(), 1);
    assert!(
        schema
            .values()
            .filter(|d| d.spec.kind() == GeneKind::Int)
            .all(|d| d.spec.max_step().is_some())
    );

    let start = system.measure(system.start()).expect("start runs");
    assert!(start.score > 0.0);
    for metric in [
        "p99_ms",
        "error_rate",
        "throughput_rps",
        "memory_mb",
        "cache_hit_ratio",
    ] {
        assert!(
            start.metrics.contains_key(metric),
            "{metric} in {:?}",
            start.metrics
        );
    }

    // Near the best settings, and far better than the start.
    let good = with(
        system.start(),
        &[
            ("worker_threads", GeneValue::Int(16)),
            ("batch_size", GeneValue::Int(45)),
            ("cache_size_mb", GeneValue::Int(1984)),
            ("timeout_s", GeneValue::Float(0.5)),
            ("compression", GeneValue::Choice("zstd".into())),
            ("prefetch", GeneValue::Bool(true)),
        ],
    );
    let best = system.measure(&good).expect("runs").score;
    assert!(best > 10.0 * start.score, "{best} vs {}", start.score);
    // One more thread of buffers and it runs out of memory: the cliff is next to the optimum.
    let over = with(&good, &[("worker_threads", GeneValue::Int(17))]);
    match system.measure(&over) {
        Err(EvalError::Workload(why)) => assert!(why.contains("out of memory"), "{why}"),
        other => panic!("expected an out-of-memory failure, got {other:?}"),
    }
    // Threads and batch size interact: how many threads fit depends on the batch size.
    let many = [("worker_threads", GeneValue::Int(24))];
    assert!(system.measure(&with(&good, &many)).is_err());
    let smaller = with(&good, &[("batch_size", GeneValue::Int(20))]);
    assert!(system.measure(&with(&smaller, &many)).is_ok());
}

#[test]
fn benchmark_landscapes_have_their_documented_shapes() {
    let rosenbrock = rosenbrock4();
    let ones = with(
        rosenbrock.start(),
        &[
            ("x1", GeneValue::Float(1.0)),
            ("x2", GeneValue::Float(1.0)),
            ("x3", GeneValue::Float(1.0)),
            ("x4", GeneValue::Float(1.0)),
        ],
    );
    assert!(rosenbrock.measure(&ones).expect("runs").score.abs() < 1e-12);
    assert!(rosenbrock.measure(rosenbrock.start()).expect("runs").score < -1000.0);

    let cliff = cliff();
    let edge = with(
        cliff.start(),
        &[("x", GeneValue::Float(72.5)), ("y", GeneValue::Float(47.5))],
    );
    let top = cliff.measure(&edge).expect("on the edge").score;
    assert!((top - 186.25).abs() < 1e-9, "{top}");
    let past = with(&edge, &[("y", GeneValue::Float(47.6))]);
    assert!(matches!(cliff.measure(&past), Err(EvalError::Workload(_))));

    let interacting = interacting();
    let best = with(
        interacting.start(),
        &[
            ("a", GeneValue::Float(7.0)),
            ("b", GeneValue::Float(3.0)),
            ("c", GeneValue::Int(12)),
            ("boost", GeneValue::Bool(true)),
        ],
    );
    assert!((interacting.measure(&best).expect("runs").score - 103.0).abs() < 1e-9);
    // The best b moves with a.
    let b_for = |a: f64, b: f64| {
        interacting
            .measure(&with(
                &best,
                &[("a", GeneValue::Float(a)), ("b", GeneValue::Float(b))],
            ))
            .expect("runs")
            .score
    };
    assert!(b_for(2.0, 8.0) > b_for(2.0, 3.0));
    assert!(b_for(7.0, 3.0) > b_for(7.0, 8.0));
}

#[test]
fn noise_is_seeded() {
    let a = rosenbrock4().with_noise(9, 0.05);
    let b = rosenbrock4().with_noise(9, 0.05);
    let quiet = rosenbrock4();
    let start = quiet.start().clone();
    let xs: Vec<f64> = (0..5)
        .map(|_| a.measure(&start).expect("runs").score)
        .collect();
    let ys: Vec<f64> = (0..5)
        .map(|_| b.measure(&start).expect("runs").score)
        .collect();
    assert_eq!(xs, ys);
    assert!(xs.windows(2).any(|w| (w[0] - w[1]).abs() > 0.0));
    let exact = quiet.measure(&start).expect("runs").score;
    assert_eq!(
        exact.to_bits(),
        quiet.measure(&start).expect("runs").score.to_bits()
    );
}

#[tokio::test]
async fn systems_serve_the_evaluator_port() {
    let system = demo_system();
    let evaluator: &dyn Evaluator = &system;
    let score = evaluator.evaluate(system.start()).await.expect("runs");
    assert_eq!(score, system.measure(system.start()).expect("runs"));
}

#[test]
fn the_random_baseline_is_deterministic_and_safe() {
    let system = demo_system();
    let first = SafeRandomSearch::new(5).run(&system, 30);
    let second = SafeRandomSearch::new(5).run(&system, 30);
    assert_eq!(first, second);
    assert!(first.best >= first.initial);
    assert!(
        system.measure(&first.genes).is_ok(),
        "a failed point was kept"
    );
    assert_eq!(
        first.genes[&name("region")],
        system.start()[&name("region")]
    );

    let mut search = SafeRandomSearch::new(11);
    let schema = system.schema().clone();
    let start = system.start().clone();
    for _ in 0..200 {
        let candidate = search.propose(&schema, &start);
        for (gene, def) in &schema {
            let (Some(step), Some(from), Some(to)) = (
                def.spec.max_step(),
                start[gene].as_f64(),
                candidate[gene].as_f64(),
            ) else {
                continue;
            };
            assert!((to - from).abs() <= step + 1e-9, "{gene}: {from} -> {to}");
            assert!(def.spec.check_bounds(&candidate[gene]).is_ok());
        }
    }
}

#[tokio::test]
async fn the_pipeline_run_is_deterministic_and_spends_the_budget_exactly() {
    let system = interacting().with_jittered_start(3);
    let a = run_pipeline(&system, 3, 30).await.expect("runs");
    let b = run_pipeline(&system, 3, 30).await.expect("runs");
    assert_eq!(a, b);
    assert_eq!(a.evaluations, 30);
    assert_eq!(a.stopped, None);
    assert!(a.best > a.initial);
    // The baseline, then one closed evaluation per measurement.
    assert_eq!(a.history.len(), 31);
}

#[tokio::test]
async fn at_the_cliff_the_engine_stops_rather_than_keep_falling_off() {
    let system = cliff().with_jittered_start(3);
    let run = run_pipeline(&system, 3, 30).await.expect("runs");
    assert!(run.failures > 0, "the cliff was never met");
    assert!(run.evaluations <= 30);
    assert!(
        system.measure(&run.genes).is_ok(),
        "a failed point was kept"
    );
    // Within 10% of the best value on the edge, from about 30.
    assert!(run.best > 0.9 * 186.25, "{}", run.best);
}

#[tokio::test]
async fn the_demo_improves_several_fold_under_the_engine() {
    let system = demo_system();
    let run = run_pipeline(&system, 1, 30).await.expect("runs");
    assert!(
        run.best > 5.0 * run.initial,
        "{} -> {}",
        run.initial,
        run.best
    );
    assert!(system.measure(&run.genes).is_ok());
}

#[test]
fn comparisons_report_mean_gains_and_their_ratio() {
    let comparison = compare_on(Landscape::Cliff, &[1, 2], 10).expect("runs");
    assert_eq!(comparison.seeds, 2);
    assert_eq!(comparison.engine_runs.len(), 2);
    let mean = comparison
        .engine_runs
        .iter()
        .map(RunResult::gain)
        .sum::<f64>()
        / 2.0;
    assert!((comparison.engine_gain - mean).abs() < 1e-9);
    assert!(comparison.engine_runs.iter().all(|r| r.evaluations == 10));
    assert!(comparison.ratio().is_finite() && comparison.ratio() > 0.0);
    assert!(comparison.to_string().contains("cliff"));
}

#[test]
fn jitter_stays_small_and_in_bounds() {
    let base = rosenbrock4();
    let moved = rosenbrock4().with_jittered_start(4);
    for (gene, def) in base.schema() {
        let from = base.start()[gene].as_f64().expect("float");
        let to = moved.start()[gene].as_f64().expect("float");
        let step = def.spec.max_step().expect("max_step");
        assert!((to - from).abs() <= step / 2.0 + 1e-12);
        assert!(def.spec.check_bounds(&moved.start()[gene]).is_ok());
    }
}
