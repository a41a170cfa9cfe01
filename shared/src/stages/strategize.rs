//! strategize: turns an analysis into a plan. The Mutation Strategist's answer is untrusted: every
//! step is validated against the genes (assuming the steps before it were kept), invalid steps are
//! dropped with their reason, and the plan is capped at `max_plan_steps`. The first step is
//! proposed at once; the plan cursor adopts the plan when that step's outcome comes back.

use std::collections::HashMap;

use super::{
    Deps, StageError, StageOutput, StageResult, analyze::plan_event, call_context, complexity_of,
    dna_view, load_system, record_call, reply,
};
use crate::domain::{
    Body, CycleReason, Envelope, GeneSchema, Genes, HeadStatus, Mutation, MutationStrategy, Plan,
    PlanStep, PlanStepRef, Role, StrategicMutation, apply_mutation, derive_id,
};
use crate::llm::StrategizeRequest;
use crate::store::Write;

pub async fn handle(deps: &Deps, env: &Envelope, analysis_id: &str) -> StageResult {
    let (system, head) = load_system(deps, &env.system_id).await?;
    if head.status != HeadStatus::Stable || head.generation != env.base_generation {
        return Ok(StageOutput::noop(format!(
            "head moved to generation {} ({}) since the analysis",
            head.generation,
            head.status.as_str()
        )));
    }
    let analysis = deps
        .store
        .get_analysis(&env.system_id, analysis_id)
        .await?
        .ok_or_else(|| StageError::Inconsistent(format!("analysis {analysis_id} not found")))?;
    let now = deps.clock.now();
    let (dna, history) = dna_view(deps, &system, &head).await?;
    let complexity = complexity_of(dna.genes.len(), &history);
    let ctx = call_context(deps, env, Role::Strategize, complexity, false).await?;
    let genes = dna.genes.clone();
    let answer = deps
        .llm
        .strategize(&StrategizeRequest {
            ctx,
            dna,
            history,
            analysis: analysis.analysis,
            max_steps: deps.config.max_plan_steps,
        })
        .await?;

    let plan_id = derive_id("plan", &[&env.id]);
    let (steps, dropped, truncated) = validate_strategy(
        &system.schema,
        &genes,
        &answer.value,
        deps.config.max_plan_steps as usize,
    );
    let plan = Plan {
        plan_id: plan_id.clone(),
        system_id: env.system_id.clone(),
        analysis_id: analysis_id.to_owned(),
        base_generation: head.generation,
        steps,
        dropped,
        truncated,
        success_criteria: answer.value.success_criteria.clone(),
        model_used: answer.model_id.clone(),
        created_at: now,
        cache_hit: answer.cache_hit,
    };
    let mut out = StageOutput {
        summary: format!(
            "plan {plan_id}: {} steps ({} dropped)",
            plan.steps.len(),
            plan.dropped.len()
        ),
        ..StageOutput::default()
    };
    record_call(&mut out, env, Role::Strategize, &answer, now);
    out.writes.push(Write::PutEvent {
        event: plan_event(&plan),
    });
    match plan.steps.first() {
        Some(first) => out.messages.push(reply(
            env,
            "strategize",
            0,
            head.generation,
            now,
            Body::MutationProposed {
                mutation: Mutation {
                    id: derive_id("mut", &[&plan_id, "0", "false"]),
                    changes: first.changes.clone(),
                    description: first.rationale.clone(),
                    predicted_impact: first.predicted_impact,
                    plan_step: Some(PlanStepRef {
                        plan_id: plan_id.clone(),
                        step: 0,
                    }),
                },
                deferrals: 0,
            },
        )),
        None => out.messages.push(
            reply(
                env,
                "strategize",
                0,
                head.generation,
                now,
                Body::CycleRequested {
                    reason: CycleReason::PlanEmpty,
                },
            )
            .delayed(deps.config.empty_plan_retry_seconds),
        ),
    }
    out.writes.push(Write::PutPlan { plan });
    Ok(out)
}

/// Orders, caps and validates a strategy. Returns the steps, the dropped steps with reasons, and
/// whether the cap cut the plan.
pub fn validate_strategy(
    schema: &GeneSchema,
    genes: &Genes,
    strategy: &MutationStrategy,
    max_steps: usize,
) -> (Vec<PlanStep>, Vec<(String, String)>, bool) {
    let mut ordered: Vec<&StrategicMutation> = Vec::new();
    for id in &strategy.execution_order {
        if let Some(m) = strategy.primary_mutations.iter().find(|m| &m.id == id) {
            if !ordered.iter().any(|o| o.id == m.id) {
                ordered.push(m);
            }
        }
    }
    for m in &strategy.primary_mutations {
        if !ordered.iter().any(|o| o.id == m.id) {
            ordered.push(m);
        }
    }
    let truncated = ordered.len() > max_steps;
    ordered.truncate(max_steps);
    let contingencies: HashMap<&str, &StrategicMutation> = strategy
        .contingency_mutations
        .iter()
        .filter_map(|c| c.contingency_for.as_deref().map(|p| (p, c)))
        .collect();

    let mut steps = Vec::new();
    let mut dropped = Vec::new();
    let mut current = genes.clone();
    for primary in ordered {
        let as_mutation = |m: &StrategicMutation| Mutation {
            id: m.id.clone(),
            changes: m.changes.clone(),
            description: m.rationale.clone(),
            predicted_impact: m.predicted_impact,
            plan_step: None,
        };
        let next = match apply_mutation(schema, &current, &as_mutation(primary)) {
            Ok(next) => next,
            Err(e) => {
                dropped.push((primary.id.clone(), e.to_string()));
                continue;
            }
        };
        let contingency =
            contingencies.get(primary.id.as_str()).and_then(|c| {
                match apply_mutation(schema, &current, &as_mutation(c)) {
                    Ok(_) => Some(Box::new(to_step(c, None))),
                    Err(e) => {
                        dropped.push((c.id.clone(), e.to_string()));
                        None
                    }
                }
            });
        steps.push(to_step(primary, contingency));
        current = next;
    }
    (steps, dropped, truncated)
}

fn to_step(m: &StrategicMutation, contingency: Option<Box<PlanStep>>) -> PlanStep {
    PlanStep {
        id: m.id.clone(),
        changes: m.changes.clone(),
        rationale: super::cap(&m.rationale, 500),
        predicted_impact: if m.predicted_impact.is_finite() {
            m.predicted_impact
        } else {
            0.0
        },
        contingency,
    }
}
