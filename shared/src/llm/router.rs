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
use crate::store::performance::PerformanceSnapshot;

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
mod tests;
