//! Judging a generation beyond its score (docs/architecture.md, "Judging a generation"):
//! guardrails, objectives and the significance test, through the real stages and the local
//! runner on the in-memory store.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use shared::domain::judging::Finding;
use shared::domain::{
    Cohort, Constraints, EvaluationOutcome, EventType, FitnessScore, Genes, Guardrail,
    HistoryEntry, MetricName, Objective,
};
use shared::evaluator::{EvalError, Evaluator};
use shared::local::{RunOptions, Silent};
use shared::store::{EvolutionStore, SystemSettings};

use super::helpers::*;

/// Reports a score and metrics computed from the genes, plus a noise term drawn in turn from
/// `noise` (the running system's measurement noise).
struct Metered {
    score: fn(&Genes) -> f64,
    metrics: fn(&Genes) -> Vec<(&'static str, f64)>,
    noise: Vec<f64>,
    /// Added per evaluation made: the service's load drifting while it is measured.
    drift: f64,
    /// From this evaluation on, every metric doubles (a surge the service meets later).
    surge_from: Option<usize>,
    next: AtomicUsize,
}

impl std::fmt::Debug for Metered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metered")
    }
}

#[async_trait]
impl Evaluator for Metered {
    async fn evaluate(&self, genes: &Genes) -> Result<FitnessScore, EvalError> {
        let i = self.next.fetch_add(1, Ordering::SeqCst);
        let noise = if self.noise.is_empty() {
            0.0
        } else {
            self.noise[i % self.noise.len()]
        };
        Ok(FitnessScore {
            score: (self.score)(genes) + noise + self.drift * i as f64,
            metrics: (self.metrics)(genes)
                .into_iter()
                .map(|(k, v)| {
                    let surge = if self.surge_from.is_some_and(|from| i >= from) {
                        2.0
                    } else {
                        1.0
                    };
                    (MetricName::parse(k).expect("name"), v * surge)
                })
                .collect::<BTreeMap<_, _>>(),
        })
    }
}

fn metered(
    score: fn(&Genes) -> f64,
    metrics: fn(&Genes) -> Vec<(&'static str, f64)>,
    noise: Vec<f64>,
) -> Metered {
    Metered {
        score,
        metrics,
        noise,
        drift: 0.0,
        surge_from: None,
        next: AtomicUsize::new(0),
    }
}

fn settings(samples: u32, constraints: Constraints) -> SystemSettings {
    SystemSettings {
        samples_required: samples,
        constraints: Box::new(constraints),
        ..SystemSettings::default()
    }
}

async fn evolve(h: &Harness, evaluator: &dyn Evaluator, generations: u32) -> Vec<HistoryEntry> {
    let opts = RunOptions {
        generations,
        ..RunOptions::default()
    };
    h.home
        .runner(evaluator)
        .run(&system_id(), &opts, &Silent)
        .await
        .expect("run");
    let mut history = h
        .store
        .list_history(&system_id(), 50)
        .await
        .expect("history");
    history.sort_by_key(|e| e.generation);
    history
}

/// A mutation that raises the score but breaks a latency guardrail is rolled back, with the
/// guardrail named in the history, the event and an alert.
#[tokio::test]
async fn a_guardrail_breach_rolls_back_a_higher_scoring_mutation() {
    let rails = Constraints {
        guardrails: vec![Guardrail::parse("p99_latency_ms <= 250").expect("rail")],
        ..Constraints::default()
    };
    let h = harness_with(
        Scripted::with(vec![strategy(vec![step("a", "x", 60)])]),
        permissive(),
        settings(1, rails),
    )
    .await;
    // Score rises with x; so does latency, past 250 ms at x = 60.
    let evaluator = metered(
        |g| int(g, "x") as f64,
        |g| vec![("p99_latency_ms", 200.0 + 10.0 * (int(g, "x") - 50) as f64)],
        Vec::new(),
    );
    let history = evolve(&h, &evaluator, 1).await;
    let candidate = &history[1];
    assert_eq!(candidate.fitness, Some(60.0));
    assert_eq!(candidate.baseline_fitness, Some(50.0));
    assert_eq!(candidate.outcome, EvaluationOutcome::Rollback);
    assert_eq!(candidate.breaches.len(), 1);
    assert_eq!(candidate.breaches[0].guardrail, "p99_latency_ms <= 250");
    assert!((candidate.breaches[0].value - 300.0).abs() < 1e-9);

    let events = h
        .store
        .list_events(&system_id(), None, 50)
        .await
        .expect("events");
    let breached = events
        .iter()
        .find(|e| e.event_type == EventType::GuardrailBreached)
        .expect("a guardrail event");
    assert!(
        breached
            .detail
            .as_deref()
            .is_some_and(|d| d.contains("p99_latency_ms <= 250")),
        "{breached:?}"
    );
    let alerts = h.store.list_alerts(None, 50).await.expect("alerts");
    assert!(
        alerts.iter().any(|a| a.kind == "guardrail_breached"
            && a.message.contains("p99_latency_ms <= 250 breached: 300")),
        "{alerts:?}"
    );
    // The head is back on the parent's genes.
    let head = h
        .store
        .get_head(&system_id())
        .await
        .expect("head")
        .expect("a head");
    let restored = h
        .store
        .get_generation(&system_id(), head.generation)
        .await
        .expect("read")
        .expect("generation");
    assert_eq!(int(&restored.genes, "x"), 50);
}

/// With objectives the fitness is computed from the metrics (a reported score is ignored),
/// and the verdicts are those of the hand computation.
#[tokio::test]
async fn objectives_give_the_verdicts_of_the_hand_computation() {
    let objectives: Vec<Objective> = serde_json::from_str(
        r#"[{"metric": "throughput", "direction": "maximize", "weight": 2, "target": 500},
            {"metric": "p99_latency_ms", "direction": "minimize", "weight": 0.5}]"#,
    )
    .expect("objectives");
    let h = harness_with(
        Scripted::with(vec![strategy(vec![step("a", "x", 60), step("b", "x", 70)])]),
        permissive(),
        settings(
            1,
            Constraints {
                objectives,
                ..Constraints::default()
            },
        ),
    )
    .await;
    let evaluator = metered(
        |_| 1_000_000.0,
        |g| {
            let x = int(g, "x") as f64;
            vec![
                ("throughput", 8.0 * x),
                ("p99_latency_ms", 100.0 + 10.0 * (x - 50.0)),
            ]
        },
        Vec::new(),
    );
    let history = evolve(&h, &evaluator, 2).await;
    // By hand, 2 * min(throughput, 500) - 0.5 * p99:
    //   x = 50: 2 * 400 - 0.5 * 100 = 750 (the baseline);
    //   x = 60: 2 * 480 - 0.5 * 200 = 860, kept;
    //   x = 70: 2 * 500 - 0.5 * 300 = 850, rolled back (without the target it would be 970).
    let fitness: Vec<Option<f64>> = history.iter().map(|e| e.fitness).collect();
    let outcomes: Vec<EvaluationOutcome> = history.iter().map(|e| e.outcome).collect();
    assert_eq!(fitness, [Some(750.0), Some(860.0), Some(850.0)]);
    assert_eq!(
        outcomes,
        [
            EvaluationOutcome::Keep,
            EvaluationOutcome::Keep,
            EvaluationOutcome::Rollback
        ]
    );
}

/// Noise either way around a constant level: the same draws for the parent and a candidate
/// that changes nothing the fitness depends on.
const NOISE: [f64; 8] = [0.9, -1.3, 0.4, -0.2, 1.1, -0.7, 0.3, -1.0];

/// With four samples a window is judged by the rank test against the parent's samples: a
/// clear gain is kept with its p-value and effect size recorded; a change that does nothing
/// is measured once more (the window extended, the generation announced again) and then the
/// parent is kept, where the mean rule would keep whichever draw happened to be higher.
#[tokio::test]
async fn significance_keeps_a_clear_gain_and_extends_then_refuses_a_change_that_does_nothing() {
    let h = harness_with(
        Scripted::with(vec![strategy(vec![step("a", "x", 60), step("b", "y", 60)])]),
        permissive(),
        settings(4, Constraints::default()),
    )
    .await;
    let evaluator = metered(|g| int(g, "x") as f64, |_| Vec::new(), NOISE.to_vec());
    let history = evolve(&h, &evaluator, 2).await;
    assert_eq!(history.len(), 3, "{history:?}");

    let gain = &history[1];
    assert_eq!(gain.outcome, EvaluationOutcome::Keep);
    let s = gain.significance.expect("judged by significance");
    assert_eq!(s.finding, Finding::Better);
    assert_eq!((s.candidate_samples, s.parent_samples), (4, 4));
    // All four candidate reports above all four of the parent's: the exact one-sided p of
    // 4 against 4 is 1 / C(8, 4) = 1/70, and Cliff's delta is 1.
    assert!((s.p_value - 1.0 / 70.0).abs() < 1e-9, "{s:?}");
    assert!((s.effect_size - 1.0).abs() < 1e-9, "{s:?}");

    let nothing = &history[2];
    let s = nothing.significance.expect("judged by significance");
    assert_eq!(s.finding, Finding::Inconclusive, "{nothing:?}");
    assert_eq!(nothing.outcome, EvaluationOutcome::Rollback);
    assert_eq!(s.candidate_samples, 8, "the window was extended for 4 more");
    assert!(s.p_value > 0.2, "{s:?}");
    let events = h
        .store
        .list_events(&system_id(), None, 50)
        .await
        .expect("events");
    let types: Vec<EventType> = events.iter().map(|e| e.event_type).collect();
    assert!(types.contains(&EventType::EvaluationExtended), "{types:?}");
    assert!(
        types.contains(&EventType::EvaluationInconclusive),
        "{types:?}"
    );
    // The head holds the parent's genes again.
    let head = h
        .store
        .get_head(&system_id())
        .await
        .expect("head")
        .expect("a head");
    let current = h
        .store
        .get_generation(&system_id(), head.generation)
        .await
        .expect("read")
        .expect("generation");
    assert_eq!(
        (int(&current.genes, "x"), int(&current.genes, "y")),
        (60, 50)
    );
}

/// A canary judged against its concurrent control, under a load that drifts while it is
/// measured. The running system measures canary and control in turn, three samples each.
async fn canary_under_drift(to: i64, drift: f64) -> (Harness, Vec<HistoryEntry>) {
    let h = harness_with(
        Scripted::with(vec![strategy(vec![step("a", "x", to)])]),
        permissive(),
        settings(
            3,
            Constraints {
                canary_share: Some(0.1),
                canary_bake_seconds: Some(300),
                ..Constraints::default()
            },
        ),
    )
    .await;
    let mut evaluator = metered(|g| int(g, "x") as f64, |_| Vec::new(), Vec::new());
    evaluator.drift = drift;
    let history = evolve(&h, &evaluator, 1).await;
    (h, history)
}

/// Falling load (scores drift down 3 per measurement): the parent measured 50, 47, 44 before
/// the change; the canary (x = 60) measures 51, 45, 39 beside its control's 38, 32, 26. Against
/// the past the better mutation looks worse (mean 45 < 47) and the before/after rule would roll
/// it back; against its concurrent control it is better on every pair, promoted to every
/// instance, baked, and kept.
#[tokio::test]
async fn a_canary_beats_its_concurrent_control_under_a_drift_that_fools_the_before_after_rule() {
    let (h, history) = canary_under_drift(60, -3.0).await;
    let parent = history[0].fitness.expect("baseline");
    let kept = &history[1];
    assert!((parent - 47.0).abs() < 1e-9, "{history:?}");
    let canary = kept.canary.expect("judged as a canary");
    assert_eq!((canary.canary_samples, canary.control_samples), (3, 3));
    assert!(canary.promoted);
    assert_eq!(canary.control_fitness, Some(32.0));
    assert_eq!(
        kept.baseline_fitness,
        Some(32.0),
        "held to its control, not the past"
    );
    assert_eq!(kept.outcome, EvaluationOutcome::Keep);
    let s = kept.significance.expect("a rank test");
    assert!((s.p_value - 0.05).abs() < 1e-9, "{s:?}");
    // The before/after rule on the canary's own samples would have rolled it back.
    let canary_mean = (51.0 + 45.0 + 39.0) / 3.0;
    assert!(canary_mean < parent);

    let events = h
        .store
        .list_events(&system_id(), None, 50)
        .await
        .expect("events");
    let types: Vec<EventType> = events.iter().map(|e| e.event_type).collect();
    let promoted = types
        .iter()
        .position(|t| *t == EventType::CanaryPromoted)
        .expect("promoted");
    let kept_at = types
        .iter()
        .position(|t| *t == EventType::MutationKept && promoted > 0)
        .expect("kept after the bake");
    assert!(kept_at != promoted);
    // The control's reports are the parent generation's, marked as such.
    let control = h
        .store
        .list_fitness(&system_id(), 0)
        .await
        .expect("samples");
    assert_eq!(
        control
            .iter()
            .filter(|s| s.cohort == Some(Cohort::Control))
            .count(),
        3
    );
    // After the bake every instance reports the candidate, outside any cohort.
    let baked = h
        .store
        .list_fitness(&system_id(), 1)
        .await
        .expect("samples");
    assert_eq!(
        baked
            .iter()
            .filter(|s| s.cohort == Some(Cohort::Canary))
            .count(),
        3
    );
    assert_eq!(baked.iter().filter(|s| s.cohort.is_none()).count(), 3);
    let head = h
        .store
        .get_head(&system_id())
        .await
        .expect("head")
        .expect("a head");
    assert_eq!((head.generation, head.stable_generation), (1, 1));
}

/// Rising load (scores drift up 3 per measurement): a worse mutation (x = 45) measures 54, 60,
/// 66 against the parent's past 50, 53, 56, so the before/after rule would keep it; its
/// concurrent control measures 62, 68, 74, above it on every pair, and it is rolled back.
#[tokio::test]
async fn a_worse_canary_is_rolled_back_against_its_control_where_the_past_would_keep_it() {
    let (h, history) = canary_under_drift(45, 3.0).await;
    let parent = history[0].fitness.expect("baseline");
    let refused = &history[1];
    assert!(refused.fitness.expect("measured") > parent, "{history:?}");
    assert_eq!(refused.outcome, EvaluationOutcome::Rollback);
    let canary = refused.canary.expect("judged as a canary");
    assert!(!canary.promoted);
    assert_eq!(canary.control_fitness, Some(68.0));
    assert_eq!(
        refused.significance.map(|s| s.finding),
        Some(Finding::Worse)
    );
    let head = h
        .store
        .get_head(&system_id())
        .await
        .expect("head")
        .expect("a head");
    let current = h
        .store
        .get_generation(&system_id(), head.generation)
        .await
        .expect("read")
        .expect("generation");
    assert_eq!(int(&current.genes, "x"), 50);
    let events = h
        .store
        .list_events(&system_id(), None, 50)
        .await
        .expect("events");
    assert!(
        events
            .iter()
            .all(|e| e.event_type != EventType::CanaryPromoted)
    );
    // The reason names what the canary was held to: its concurrent control, not the parent's
    // past (which it beat).
    let rolled_back = events
        .iter()
        .find(|e| e.event_type == EventType::MutationRolledBack)
        .and_then(|e| e.detail.clone())
        .expect("a rollback event with its reason");
    assert!(
        rolled_back.contains("below its concurrent control") && !rolled_back.contains("parent"),
        "{rolled_back}"
    );
}

/// A canary that beats its control is promoted, but the latency of every instance doubles
/// during the bake: the bake's guardrail check rolls it back after all.
#[tokio::test]
async fn a_promoted_canary_that_breaks_a_guardrail_while_baking_is_rolled_back() {
    let h = harness_with(
        Scripted::with(vec![strategy(vec![step("a", "x", 60)])]),
        permissive(),
        settings(
            3,
            Constraints {
                guardrails: vec![Guardrail::parse("p99_latency_ms <= 250").expect("rail")],
                canary_share: Some(0.1),
                canary_bake_seconds: Some(300),
                ..Constraints::default()
            },
        ),
    )
    .await;
    // 3 baseline reports, then 3 canary and 3 control ones; the bake's 3 come after the surge.
    let mut evaluator = metered(
        |g| int(g, "x") as f64,
        |_| vec![("p99_latency_ms", 200.0)],
        Vec::new(),
    );
    evaluator.surge_from = Some(9);
    let history = evolve(&h, &evaluator, 1).await;
    let baked = &history[1];
    assert_eq!(baked.outcome, EvaluationOutcome::Rollback, "{baked:?}");
    assert_eq!(baked.breaches.len(), 1);
    assert!((baked.breaches[0].value - 400.0).abs() < 1e-9, "{baked:?}");
    let canary = baked.canary.expect("a canary");
    assert!(!canary.promoted, "promoted, then failed the bake");
    let events = h
        .store
        .list_events(&system_id(), None, 50)
        .await
        .expect("events");
    let types: Vec<EventType> = events.iter().map(|e| e.event_type).collect();
    assert!(types.contains(&EventType::CanaryPromoted), "{types:?}");
    assert!(types.contains(&EventType::GuardrailBreached), "{types:?}");
    let head = h
        .store
        .get_head(&system_id())
        .await
        .expect("head")
        .expect("a head");
    let current = h
        .store
        .get_generation(&system_id(), head.generation)
        .await
        .expect("read")
        .expect("generation");
    assert_eq!(int(&current.genes, "x"), 50);
}
