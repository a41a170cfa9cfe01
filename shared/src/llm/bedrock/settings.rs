//! What the adapter is configured with: the catalog, routing, per-role sampling, retry and
//! budgets, and how long answers are kept.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{Budgets, ModelCatalog, RetryPolicy, Role, RoutingPolicy};

/// The response cache's default time to live. Long enough to absorb the repeats of one burst
/// (a redelivered proposal, a deferred one coming back, systems that share a prompt), short
/// enough that an answer never outlives the situation it was given for by much: history and
/// fitness change the prompt, and then the key, anyway.
pub const DEFAULT_RESPONSE_CACHE_MINUTES: i64 = 15;

/// Sampling and size settings of one role.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoleSettings {
    pub temperature: f32,
    pub max_tokens: u32,
    /// Longest one request may take.
    pub timeout: Duration,
}

/// Everything the adapter is configured with.
#[derive(Debug, Clone)]
pub struct BedrockSettings {
    pub catalog: ModelCatalog,
    pub routing: RoutingPolicy,
    pub roles: BTreeMap<Role, RoleSettings>,
    pub retry: RetryPolicy,
    pub budgets: Budgets,
    /// Share of each budget (percent) only critical calls may spend.
    pub critical_reserve_percent: u32,
    /// Closed evaluations in a prompt before any trimming.
    pub history_limit: usize,
    /// How long a raw answer is kept for retries after a crash.
    pub checkpoint_ttl: chrono::Duration,
    /// How long a validated answer is reused for an identical request (same model, role and
    /// request); zero turns the response cache off.
    pub response_cache_ttl: chrono::Duration,
}

impl BedrockSettings {
    /// The seed's temperatures and token limits per role.
    pub fn new(catalog: ModelCatalog, budgets: Budgets) -> Self {
        let role = |temperature, max_tokens, secs| RoleSettings {
            temperature,
            max_tokens,
            timeout: Duration::from_secs(secs),
        };
        Self {
            catalog,
            routing: RoutingPolicy::default(),
            roles: [
                (Role::Analyze, role(0.3, 2_000, 30)),
                (Role::Strategize, role(0.4, 3_000, 45)),
                (Role::Decide, role(0.2, 2_000, 20)),
                (Role::Resolve, role(0.3, 2_500, 20)),
            ]
            .into(),
            retry: RetryPolicy::default(),
            budgets,
            critical_reserve_percent: 10,
            history_limit: 30,
            checkpoint_ttl: chrono::Duration::hours(24),
            response_cache_ttl: chrono::Duration::minutes(DEFAULT_RESPONSE_CACHE_MINUTES),
        }
    }

    pub(super) fn role(&self, role: Role) -> RoleSettings {
        self.roles.get(&role).copied().unwrap_or(RoleSettings {
            temperature: 0.3,
            max_tokens: 2_000,
            timeout: Duration::from_secs(30),
        })
    }
}
