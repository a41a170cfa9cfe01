//! The Model Router: which catalog models to try for a call, best first.
//!
//! [`route`] is a pure function of the task, the catalog, the performance snapshot, the budget
//! mode and the routing policy: no clock, no I/O, no randomness (seed Property 3). Anything that
//! changes over time (open circuit breakers, the budget mode) is read by the caller and passed in,
//! so the same inputs always give the same [`Route`], and a route can be replayed from a log.
//!
//! # Scoring
//!
//! Every capable model gets the seed's four factors, each in `0..=1`:
//!
//! - `fit`: complexity against strengths. High complexity and a `reasoning` or
//!   `complex_decisions` strength, or low complexity and a `speed` or `simple_tasks` strength:
//!   1. Medium complexity and either kind: 0.5. Otherwise 0.
//! - `history`: the tracker's success rate of the model in this role (0.5 without a record).
//! - `latency`: 1 when the model's typical latency is within `max_latency_ms`, or when the task
//!   sets no latency requirement; else 0.
//! - `thrift`: cost efficiency, `(max - price) / (max - min)` of the blended prices across the
//!   candidates (1 for all when they cost the same), computed in integers.
//!
//! With `a = accuracy_requirements` and `s = cost_sensitivity` (clamped to `0..=1`, 0.5 when not
//! finite):
//!
//! ```text
//! score = (0.5 + a) * (0.4 * fit + 0.3 * history) + 0.2 * latency + (0.5 + s) * 0.1 * thrift
//! ```
//!
//! At the neutral `a = s = 0.5` these are exactly the seed's weights (0.4, 0.3, 0.2, 0.1). A task
//! that needs accuracy scales the quality terms up to 1.5x; a cost-sensitive one scales the cost
//! term up to 1.5x; each can also halve its terms. The score is quantised to millionths before
//! ranking so that ties, and the tie-break by model id, do not depend on float noise.
//!
//! # Ranking
//!
//! Models with schema-constrained output (native JSON schema or forced tool use) always rank
//! above text-only models: a text answer fails to parse more often, and each failure costs a
//! retry. Within that, by budget mode:
//!
//! - Normal: highest score first.
//! - Economy: non-critical tasks cheapest blended price first (score breaks ties); critical tasks
//!   keep the Normal ranking, because a wrong high-risk decision costs more than the tokens.
//! - Paused: no Bedrock call (`use_bedrock = false`), unless the task is critical and the policy
//!   allows critical calls while paused; then the Normal ranking.
//!
//! The last tie-break is the model id, so the order is total.

use std::cmp::Reverse;
use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::domain::{BudgetMode, Complexity, Role, TaskContext};
use crate::llm::catalog::{ModelCatalog, ModelEntry, Price, StructuredOutput};
use crate::llm::performance::PerformanceSnapshot;

/// Room left in the context window beyond the task's estimate, for the prompt scaffolding and
/// the answer's first tokens.
pub const CONTEXT_HEADROOM_TOKENS: u64 = 1_024;

const WEIGHT_FIT: f64 = 0.4;
const WEIGHT_HISTORY: f64 = 0.3;
const WEIGHT_LATENCY: f64 = 0.2;
const WEIGHT_THRIFT: f64 = 0.1;

/// Scores are compared in millionths.
const SCORE_SCALE: f64 = 1_000_000.0;
const THRIFT_SCALE: u128 = 1_000_000;

/// What the caller knows beyond the task: configuration and breaker state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutingPolicy {
    /// Whether critical tasks may still call Bedrock while the budget is paused.
    pub allow_critical_when_paused: bool,
    /// Models whose circuit breaker is open, as read by the caller from control state.
    pub open_circuits: BTreeSet<String>,
    /// Only models of this geography (`global`, `us`, `eu`, `regional`) when set: data residency
    /// is a configuration decision, never a routing trade-off.
    pub preferred_geography: Option<String>,
}

/// The router's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// Model ids to try, best first; the healing layer walks this list. Empty when
    /// `use_bedrock` is false.
    pub ranked: Vec<String>,
    /// False when the local engine must answer (budget paused, or no capable model).
    pub use_bedrock: bool,
    pub reason: String,
}

impl Route {
    fn local(reason: impl Into<String>) -> Self {
        Self {
            ranked: Vec::new(),
            use_bedrock: false,
            reason: reason.into(),
        }
    }
}

/// The price the router compares models by: input and output per million tokens blended 3:1,
/// rounded half up (our prompts carry history and schemas, so input dominates).
pub fn blended_price(price: &Price) -> u64 {
    let blend = (3 * u128::from(price.input) + u128::from(price.output) + 2) / 4;
    u64::try_from(blend).unwrap_or(u64::MAX)
}

/// Whether every role can get a typed answer from this model. Every role answers with one JSON
/// document, which all three kinds can deliver (text through JSON extraction); the ranking
/// prefers the constrained kinds. The match is exhaustive so that a new kind needs a decision.
pub fn supports_role(entry: &ModelEntry, _role: Role) -> bool {
    match entry.structured_output {
        StructuredOutput::JsonSchema | StructuredOutput::ToolUse | StructuredOutput::Text => true,
    }
}

/// Whether `entry` may be ranked for `task` under `policy`: usable, priced (the ledger cannot
/// reserve for an unpriced model), able to answer the role, large enough, its circuit closed,
/// and in the preferred geography when one is set.
pub fn is_capable(entry: &ModelEntry, task: &TaskContext, policy: &RoutingPolicy) -> bool {
    let needed = u64::from(task.estimated_tokens) + CONTEXT_HEADROOM_TOKENS;
    entry.is_usable()
        && entry.price().is_some()
        && supports_role(entry, task.role)
        && u64::from(entry.context_window) >= needed
        && !policy.open_circuits.contains(&entry.id)
        && policy
            .preferred_geography
            .as_deref()
            .is_none_or(|g| entry.geography.as_str() == g)
}

/// Ranks the catalog's models for one call. See the module documentation for the formula.
pub fn route(
    task: &TaskContext,
    catalog: &ModelCatalog,
    perf: &PerformanceSnapshot,
    mode: BudgetMode,
    policy: &RoutingPolicy,
) -> Route {
    if mode == BudgetMode::Paused && !(task.critical && policy.allow_critical_when_paused) {
        return Route::local(if task.critical {
            "budget paused: critical calls are not allowed while paused; the local engine answers"
        } else {
            "budget paused: the local engine answers"
        });
    }

    let mut candidates: Vec<Candidate<'_>> = catalog
        .models
        .iter()
        .filter(|entry| is_capable(entry, task, policy))
        .filter_map(|entry| {
            entry.price().map(|price| Candidate {
                entry,
                blended: blended_price(price),
                points: 0,
            })
        })
        .collect();
    if candidates.is_empty() {
        return Route::local("no capable model");
    }

    let cheapest = candidates.iter().map(|c| c.blended).min().unwrap_or(0);
    let dearest = candidates.iter().map(|c| c.blended).max().unwrap_or(0);
    for candidate in &mut candidates {
        candidate.points = score_points(candidate, task, perf, cheapest, dearest);
    }

    let by_price = mode == BudgetMode::Economy && !task.critical;
    candidates.sort_by(|a, b| {
        let order = a.output_rank().cmp(&b.output_rank());
        let order = if by_price {
            order
                .then(a.blended.cmp(&b.blended))
                .then(Reverse(a.points).cmp(&Reverse(b.points)))
        } else {
            order.then(Reverse(a.points).cmp(&Reverse(b.points)))
        };
        order.then_with(|| a.entry.id.cmp(&b.entry.id))
    });

    let best = &candidates[0];
    let ranking = if by_price {
        "economy: cheapest capable first"
    } else if mode == BudgetMode::Normal {
        "normal: highest score first"
    } else if mode == BudgetMode::Economy {
        "economy, critical task: highest score first"
    } else {
        "paused, critical task allowed: highest score first"
    };
    let reason = format!(
        "{ranking}; {} capable; best {} (score {}.{:06}, blended {} nano-USD/MTok)",
        candidates.len(),
        best.entry.id,
        best.points / 1_000_000,
        best.points % 1_000_000,
        best.blended,
    );
    Route {
        ranked: candidates.iter().map(|c| c.entry.id.clone()).collect(),
        use_bedrock: true,
        reason,
    }
}

#[derive(Debug)]
struct Candidate<'a> {
    entry: &'a ModelEntry,
    blended: u64,
    /// The score in millionths.
    points: u64,
}

impl Candidate<'_> {
    /// 0 for schema-constrained output, 1 for text: lower ranks first.
    fn output_rank(&self) -> u8 {
        match self.entry.structured_output {
            StructuredOutput::JsonSchema | StructuredOutput::ToolUse => 0,
            StructuredOutput::Text => 1,
        }
    }
}

/// A task weight in `0..=1`; the neutral 0.5 when the caller passed something meaningless.
fn unit(value: f64) -> f64 {
    if value.is_finite() {
        value.clamp(0.0, 1.0)
    } else {
        0.5
    }
}

fn fit(entry: &ModelEntry, complexity: Complexity) -> f64 {
    let deep = entry.has_strength("reasoning") || entry.has_strength("complex_decisions");
    let quick = entry.has_strength("speed") || entry.has_strength("simple_tasks");
    match complexity {
        Complexity::High if deep => 1.0,
        Complexity::Low if quick => 1.0,
        Complexity::Medium if deep || quick => 0.5,
        _ => 0.0,
    }
}

/// `(dearest - price) / (dearest - cheapest)` in `0..=1`, from integer prices.
fn thrift(blended: u64, cheapest: u64, dearest: u64) -> f64 {
    if dearest <= cheapest {
        return 1.0;
    }
    let saved = u128::from(dearest.saturating_sub(blended));
    let span = u128::from(dearest - cheapest);
    let millionths = saved * THRIFT_SCALE / span;
    millionths as f64 / THRIFT_SCALE as f64
}

fn score_points(
    candidate: &Candidate<'_>,
    task: &TaskContext,
    perf: &PerformanceSnapshot,
    cheapest: u64,
    dearest: u64,
) -> u64 {
    let entry = candidate.entry;
    let quality = 0.5 + unit(task.accuracy_requirements);
    let economy = 0.5 + unit(task.cost_sensitivity);
    let history = unit(perf.success_rate(&entry.id, task.role));
    let latency = match task.max_latency_ms {
        Some(limit) if entry.typical_latency_ms > limit => 0.0,
        _ => 1.0,
    };
    let score = quality * (WEIGHT_FIT * fit(entry, task.complexity) + WEIGHT_HISTORY * history)
        + WEIGHT_LATENCY * latency
        + economy * WEIGHT_THRIFT * thrift(candidate.blended, cheapest, dearest);
    // Every term is non-negative and the total is below 2, so this cannot truncate.
    (score * SCORE_SCALE).round().max(0.0) as u64
}

#[cfg(test)]
mod tests {
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
}
