//! The summary of a local run, read back from the store.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::RunError;
use crate::domain::{HeadStatus, Origin, Recommendation, Role, SystemId};
use crate::stages::Deps;

/// Decisions counted by recommendation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionCounts {
    pub approve: u64,
    pub reject: u64,
    pub defer: u64,
    pub pending: u64,
}

/// LLM role calls by role.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleCounts {
    pub analyze: u64,
    pub strategize: u64,
    pub decide: u64,
    pub resolve: u64,
}

/// The summary of one invocation, printed as the `--json` line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    pub system_id: SystemId,
    /// Mutation generations whose evaluation closed during this invocation.
    pub generations: u32,
    /// The stable fitness at the start (the baseline, when it was measured by this invocation).
    pub initial_fitness: Option<f64>,
    pub final_fitness: Option<f64>,
    pub best_fitness: Option<f64>,
    pub mutations_applied: u32,
    pub rollbacks: u32,
    pub decisions: DecisionCounts,
    pub llm_calls: u64,
    pub llm_calls_by_role: RoleCounts,
    pub bedrock_requests: u64,
    pub cost_nano_usd: u64,
    /// Why the run stopped before its generations, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
    /// The decision held for approval when the run stopped at it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub awaiting_approval: Option<String>,
    /// Messages given up on, with reasons.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dead_letters: Vec<String>,
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn report(
    deps: &Deps,
    system_id: &SystemId,
    started_at: DateTime<Utc>,
    start_generation: u64,
    start_fitness: Option<f64>,
    done: u32,
    stopped: Option<String>,
    dead_letters: Vec<String>,
) -> Result<RunReport, RunError> {
    let store = &deps.store;
    let head = store
        .get_head(system_id)
        .await?
        .ok_or_else(|| RunError::UnknownSystem(system_id.clone()))?;
    let generations = store
        .list_generations(system_id, Some(start_generation), usize::MAX)
        .await?;
    let mutations_applied = generations
        .iter()
        .filter(|g| matches!(g.origin, Origin::Mutation { .. }))
        .count() as u32;
    let rollbacks = generations
        .iter()
        .filter(|g| matches!(g.origin, Origin::Rollback { .. }))
        .count() as u32;
    let history = store.list_history(system_id, usize::MAX).await?;
    let closed: Vec<_> = history
        .iter()
        .filter(|h| h.closed_at >= started_at)
        .collect();
    let initial_fitness = start_fitness.or_else(|| {
        closed
            .iter()
            .find(|h| h.changes.is_empty())
            .and_then(|h| h.fitness)
    });
    let best_fitness = closed
        .iter()
        .filter(|h| h.outcome == crate::domain::EvaluationOutcome::Keep)
        .filter_map(|h| h.fitness)
        .chain(initial_fitness)
        .fold(None, |best: Option<f64>, f| {
            Some(best.map_or(f, |b| b.max(f)))
        });
    let mut decisions = DecisionCounts::default();
    let records = store
        .list_decisions(system_id, Some(started_at), usize::MAX)
        .await?;
    for d in &records {
        match d.decision {
            Recommendation::Approve => decisions.approve += 1,
            Recommendation::Reject => decisions.reject += 1,
            Recommendation::Defer => decisions.defer += 1,
            // Counted only while unresolved: its resolution counts as approve or reject.
            Recommendation::PendingApproval => {
                if !records
                    .iter()
                    .any(|r| r.resolves.as_deref() == Some(d.decision_id.as_str()))
                {
                    decisions.pending += 1;
                }
            }
        }
    }
    let awaiting_approval = if stopped.is_some() && head.status == HeadStatus::AwaitingApproval {
        head.approval.as_ref().map(|a| a.decision_id.clone())
    } else {
        None
    };
    let calls = store
        .list_llm_calls(Some(system_id), Some(started_at))
        .await?;
    let mut by_role = RoleCounts::default();
    for c in &calls {
        match c.role {
            Role::Analyze => by_role.analyze += 1,
            Role::Strategize => by_role.strategize += 1,
            Role::Decide => by_role.decide += 1,
            Role::Resolve => by_role.resolve += 1,
        }
    }
    Ok(RunReport {
        system_id: system_id.clone(),
        generations: done,
        initial_fitness,
        final_fitness: head.stable_fitness,
        best_fitness,
        mutations_applied,
        rollbacks,
        decisions,
        llm_calls: calls.len() as u64,
        llm_calls_by_role: by_role,
        bedrock_requests: calls.iter().map(|c| u64::from(c.bedrock_requests)).sum(),
        cost_nano_usd: calls.iter().map(|c| c.cost_nano_usd).sum(),
        stopped,
        awaiting_approval,
        dead_letters,
    })
}
