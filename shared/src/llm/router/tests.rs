use std::cmp::Ordering;

use proptest::prelude::*;

use super::*;
use crate::llm::catalog::{Endpoint, Family, Geography, Invocation, Lifecycle, ServiceTier};

/// A made-up price: tests never depend on real prices.
fn price(input: u64, output: u64) -> Price {
    Price {
        endpoint: Endpoint::Regional,
        tier: ServiceTier::Standard,
        input,
        output,
        cache_read: input / 10,
        cache_write_5m: input,
        cache_write_1h: input * 2,
        source: "test".into(),
        as_of: "2025-01-01".into(),
        note: None,
    }
}

fn model(
    id: &str,
    strengths: &[&str],
    context_window: u32,
    latency: u32,
    output: StructuredOutput,
    prices: (u64, u64),
) -> ModelEntry {
    ModelEntry {
        id: id.into(),
        name: id.into(),
        family: Family::Claude,
        provider: "test".into(),
        invocation: Invocation::OnDemand,
        base_model_id: id.into(),
        regions: vec!["us-east-1".into()],
        geography: Geography::Regional,
        strengths: strengths.iter().map(|s| (*s).to_owned()).collect(),
        context_window,
        max_output_tokens: 4_096,
        typical_latency_ms: latency,
        structured_output: output,
        lifecycle: Lifecycle::Active,
        pinned: false,
        prices: vec![price(prices.0, prices.1)],
        note: None,
    }
}

/// The seed's three models with its strengths and latencies, all active, made-up prices.
fn seed_catalog() -> ModelCatalog {
    ModelCatalog {
        version: 1,
        models: vec![
            model(
                "sonnet",
                &["reasoning", "code_analysis", "complex_decisions"],
                200_000,
                2_000,
                StructuredOutput::ToolUse,
                (3_000, 15_000),
            ),
            model(
                "haiku",
                &["speed", "simple_tasks", "classification"],
                200_000,
                500,
                StructuredOutput::ToolUse,
                (250, 1_250),
            ),
            model(
                "titan",
                &["summarization", "content_generation"],
                32_000,
                1_000,
                StructuredOutput::Text,
                (500, 1_500),
            ),
        ],
    }
}

fn task(role: Role, complexity: Complexity) -> TaskContext {
    TaskContext {
        role,
        complexity,
        estimated_tokens: 2_000,
        max_latency_ms: None,
        accuracy_requirements: 0.5,
        cost_sensitivity: 0.5,
        critical: false,
    }
}

fn normal(task: &TaskContext, catalog: &ModelCatalog) -> Route {
    route(
        task,
        catalog,
        &PerformanceSnapshot::default(),
        BudgetMode::Normal,
        &RoutingPolicy::default(),
    )
}

fn embedded() -> ModelCatalog {
    ModelCatalog::embedded().expect("embedded catalog")
}

/// Orders two routes' first choices by blended price; `None` when either has none.
fn compare_first_by_price(catalog: &ModelCatalog, a: &Route, b: &Route) -> Option<Ordering> {
    let price = |r: &Route| {
        r.ranked
            .first()
            .and_then(|id| catalog.get(id))
            .and_then(ModelEntry::price)
            .map(blended_price)
    };
    Some(price(a)?.cmp(&price(b)?))
}

#[test]
fn high_complexity_analysis_prefers_a_reasoning_model() {
    let t = task(Role::Analyze, Complexity::High);
    let r = normal(&t, &seed_catalog());
    assert!(r.use_bedrock);
    assert_eq!(r.ranked, ["sonnet", "haiku", "titan"]);

    let catalog = embedded();
    let r = normal(&t, &catalog);
    let best = catalog.get(&r.ranked[0]).expect("ranked model");
    assert!(best.has_strength("reasoning"), "{}", r.reason);
}

#[test]
fn low_complexity_classification_with_tight_latency_prefers_a_fast_cheap_model() {
    let mut t = task(Role::Decide, Complexity::Low);
    t.max_latency_ms = Some(600);
    let r = normal(&t, &seed_catalog());
    assert_eq!(r.ranked[0], "haiku");

    let catalog = embedded();
    let r = normal(&t, &catalog);
    let best = catalog.get(&r.ranked[0]).expect("ranked model");
    assert!(best.has_strength("speed"));
    assert!(best.typical_latency_ms <= 600);
}

#[test]
fn text_only_models_rank_below_structured_ones() {
    // Titan is the only summariser, but it answers in free text.
    let mut t = task(Role::Analyze, Complexity::Low);
    t.estimated_tokens = 1_000;
    let r = normal(&t, &seed_catalog());
    assert_eq!(r.ranked.last().map(String::as_str), Some("titan"));
}

#[test]
fn economy_ranks_by_price_for_routine_tasks_and_by_score_for_critical_ones() {
    let catalog = seed_catalog();
    let mut t = task(Role::Decide, Complexity::High);
    let perf = PerformanceSnapshot::default();
    let policy = RoutingPolicy::default();
    let economy = route(&t, &catalog, &perf, BudgetMode::Economy, &policy);
    assert_eq!(economy.ranked[0], "haiku");
    t.critical = true;
    let critical = route(&t, &catalog, &perf, BudgetMode::Economy, &policy);
    assert_eq!(critical.ranked[0], "sonnet");
    assert_eq!(critical.ranked, normal(&t, &catalog).ranked);
}

#[test]
fn paused_budget_keeps_calls_local_unless_critical_calls_are_allowed() {
    let catalog = seed_catalog();
    let perf = PerformanceSnapshot::default();
    let mut t = task(Role::Resolve, Complexity::High);
    let mut policy = RoutingPolicy::default();
    let r = route(&t, &catalog, &perf, BudgetMode::Paused, &policy);
    assert!(!r.use_bedrock && r.ranked.is_empty());
    t.critical = true;
    let r = route(&t, &catalog, &perf, BudgetMode::Paused, &policy);
    assert!(!r.use_bedrock);
    policy.allow_critical_when_paused = true;
    let r = route(&t, &catalog, &perf, BudgetMode::Paused, &policy);
    assert!(r.use_bedrock);
    assert_eq!(r.ranked, normal(&t, &catalog).ranked);
}

#[test]
fn open_circuits_small_windows_and_other_geographies_are_excluded() {
    let catalog = seed_catalog();
    let perf = PerformanceSnapshot::default();
    let mut t = task(Role::Analyze, Complexity::High);
    let policy = RoutingPolicy {
        open_circuits: BTreeSet::from(["sonnet".to_owned()]),
        ..RoutingPolicy::default()
    };
    let r = route(&t, &catalog, &perf, BudgetMode::Normal, &policy);
    assert_eq!(r.ranked, ["haiku", "titan"]);

    t.estimated_tokens = 100_000;
    assert_eq!(normal(&t, &catalog).ranked, ["sonnet", "haiku"]);

    let us_only = RoutingPolicy {
        preferred_geography: Some("us".into()),
        ..RoutingPolicy::default()
    };
    let r = route(&t, &catalog, &perf, BudgetMode::Normal, &us_only);
    assert_eq!(r, Route::local("no capable model"));

    let r = route(&t, &embedded(), &perf, BudgetMode::Normal, &us_only);
    assert!(r.ranked.iter().all(|id| id.starts_with("us.")));
}

#[test]
fn history_moves_a_model_up() {
    let catalog = seed_catalog();
    let t = task(Role::Decide, Complexity::Medium);
    let mut perf = PerformanceSnapshot::default();
    for _ in 0..5 {
        perf.record_call("haiku", Role::Decide, false, 500, true);
        perf.record_call("sonnet", Role::Decide, true, 2_000, false);
    }
    let r = route(
        &t,
        &catalog,
        &perf,
        BudgetMode::Normal,
        &RoutingPolicy::default(),
    );
    assert_eq!(r.ranked[0], "sonnet");
}

#[test]
fn cost_sensitivity_and_accuracy_shift_the_balance() {
    // Two models that differ only in price and strengths.
    let catalog = ModelCatalog {
        version: 1,
        models: vec![
            model(
                "deep",
                &["reasoning"],
                200_000,
                1_000,
                StructuredOutput::ToolUse,
                (10_000, 10_000),
            ),
            model(
                "cheap",
                &[],
                200_000,
                1_000,
                StructuredOutput::ToolUse,
                (1_000, 1_000),
            ),
        ],
    };
    let mut t = task(Role::Analyze, Complexity::Medium);
    t.accuracy_requirements = 1.0;
    t.cost_sensitivity = 0.0;
    assert_eq!(normal(&t, &catalog).ranked[0], "deep");
    t.accuracy_requirements = 0.0;
    t.cost_sensitivity = 1.0;
    assert_eq!(normal(&t, &catalog).ranked[0], "cheap");
    // Meaningless weights are treated as neutral, never as a panic.
    t.accuracy_requirements = f64::NAN;
    t.cost_sensitivity = f64::INFINITY;
    assert!(normal(&t, &catalog).use_bedrock);
}

#[test]
fn equal_models_are_ordered_by_id() {
    let same = |id: &str| {
        model(
            id,
            &["speed"],
            200_000,
            100,
            StructuredOutput::ToolUse,
            (5, 5),
        )
    };
    let catalog = ModelCatalog {
        version: 1,
        models: vec![same("b"), same("c"), same("a")],
    };
    let r = normal(&task(Role::Decide, Complexity::Low), &catalog);
    assert_eq!(r.ranked, ["a", "b", "c"]);
}

// ---- properties over the embedded catalog ----

fn arb_role() -> impl Strategy<Value = Role> {
    prop::sample::select(Role::ALL.to_vec())
}

fn arb_task() -> impl Strategy<Value = TaskContext> {
    (
        arb_role(),
        prop::sample::select(vec![Complexity::Low, Complexity::Medium, Complexity::High]),
        prop_oneof![0_u32..50_000, 0_u32..400_000],
        prop::option::of(100_u32..5_000),
        prop_oneof![0.0_f64..=1.0, Just(f64::NAN), -1.0_f64..2.0],
        prop_oneof![0.0_f64..=1.0, Just(f64::NAN), -1.0_f64..2.0],
        any::<bool>(),
    )
        .prop_map(
            |(role, complexity, estimated_tokens, max_latency_ms, accuracy, cost, critical)| {
                TaskContext {
                    role,
                    complexity,
                    estimated_tokens,
                    max_latency_ms,
                    accuracy_requirements: accuracy,
                    cost_sensitivity: cost,
                    critical,
                }
            },
        )
}

fn arb_mode() -> impl Strategy<Value = BudgetMode> {
    prop::sample::select(vec![
        BudgetMode::Normal,
        BudgetMode::Economy,
        BudgetMode::Paused,
    ])
}

/// The embedded catalog with some legacy models pinned, plus a perf snapshot and policy
/// drawn over its ids.
fn arb_world() -> impl Strategy<Value = (ModelCatalog, PerformanceSnapshot, RoutingPolicy)> {
    let catalog = embedded();
    let n = catalog.models.len();
    (
        prop::collection::vec(any::<bool>(), n),
        prop::collection::vec(any::<bool>(), n),
        prop::collection::vec(
            (0..n, arb_role(), any::<bool>(), 0_u64..5_000, any::<bool>()),
            0..40,
        ),
        any::<bool>(),
        prop::option::of(prop::sample::select(vec!["global", "us", "eu", "regional"])),
    )
        .prop_map(move |(pins, open, calls, allow, geography)| {
            let mut catalog = catalog.clone();
            for (model, pin) in catalog.models.iter_mut().zip(pins) {
                model.pinned = pin;
            }
            let mut perf = PerformanceSnapshot::default();
            for (i, role, ok, latency, parse_failed) in calls {
                perf.record_call(&catalog.models[i].id, role, ok, latency, parse_failed);
            }
            let open_circuits = catalog
                .models
                .iter()
                .zip(open)
                .filter(|(_, o)| *o)
                .map(|(m, _)| m.id.clone())
                .collect();
            let policy = RoutingPolicy {
                allow_critical_when_paused: allow,
                open_circuits,
                preferred_geography: geography.map(str::to_owned),
            };
            (catalog, perf, policy)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1_000))]

    #[test]
    fn routing_is_deterministic(
        task in arb_task(), (catalog, perf, policy) in arb_world(), mode in arb_mode()
    ) {
        let first = route(&task, &catalog, &perf, mode, &policy);
        let second = route(&task, &catalog, &perf, mode, &policy);
        prop_assert_eq!(&first, &second);
        let cloned = route(&task.clone(), &catalog.clone(), &perf.clone(), mode, &policy.clone());
        prop_assert_eq!(&first, &cloned);
    }

    #[test]
    fn economy_never_starts_dearer_than_normal(
        task in arb_task(), (catalog, perf, policy) in arb_world()
    ) {
        let normal = route(&task, &catalog, &perf, BudgetMode::Normal, &policy);
        let economy = route(&task, &catalog, &perf, BudgetMode::Economy, &policy);
        prop_assert_eq!(normal.use_bedrock, economy.use_bedrock);
        if let Some(order) = compare_first_by_price(&catalog, &economy, &normal) {
            prop_assert_ne!(order, Ordering::Greater, "{} vs {}", economy.reason, normal.reason);
        } else {
            prop_assert!(normal.ranked.is_empty() && economy.ranked.is_empty());
        }
    }

    #[test]
    fn paused_never_calls_bedrock_for_routine_tasks(
        task in arb_task(), (catalog, perf, policy) in arb_world()
    ) {
        let r = route(&task, &catalog, &perf, BudgetMode::Paused, &policy);
        if !(task.critical && policy.allow_critical_when_paused) {
            prop_assert!(!r.use_bedrock);
            prop_assert!(r.ranked.is_empty());
        }
    }

    #[test]
    fn ranked_models_are_exactly_the_capable_ones(
        task in arb_task(), (catalog, perf, policy) in arb_world(), mode in arb_mode()
    ) {
        let r = route(&task, &catalog, &perf, mode, &policy);
        prop_assert_eq!(r.use_bedrock, !r.ranked.is_empty());
        for id in &r.ranked {
            prop_assert!(!policy.open_circuits.contains(id), "open circuit {}", id);
            let entry = catalog.get(id).expect("ranked id is in the catalog");
            prop_assert!(entry.is_usable());
            prop_assert!(is_capable(entry, &task, &policy));
        }
        let unique: BTreeSet<&String> = r.ranked.iter().collect();
        prop_assert_eq!(unique.len(), r.ranked.len());
        if r.use_bedrock {
            let capable = catalog.models.iter().filter(|m| is_capable(m, &task, &policy)).count();
            prop_assert_eq!(r.ranked.len(), capable);
        }
    }
}
