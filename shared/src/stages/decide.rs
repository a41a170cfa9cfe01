//! decide: scores each proposed mutation's risk locally, approves low risk by policy, asks the
//! Decision Engine about the rest, and writes every decision to the audit trail once. Above the
//! risk ceiling nothing may approve. Also resolves conflicts with one action from a fixed set.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::{
    Deps, StageError, StageOutput, StageResult, call_context, cap, dna_view, load_system,
    record_call, reply, snapshot::stale_unless_stable,
};
use crate::cost::nano_to_usd;
use crate::domain::risk;
use crate::domain::{
    Alert, AlertLevel, Body, Complexity, CostAnalysis, CycleReason, DecidedBy, DecisionRecord,
    DecisionResult, Envelope, EventType, EvolutionEvent, Head, HeadStatus, HistoryEntry, Mutation,
    Outgoing, PendingApproval, Recommendation, ResolutionAction, ResolutionStrategy, Role,
    StepOutcome, SystemConflict, apply_mutation, derive_id,
};
use crate::llm::{DecideRequest, DnaView, LlmAnswer, ResolveRequest};
use crate::store::{SystemRecord, Write};

mod operator;
pub use operator::{Verdict, handle_resume, handle_verdict};

/// Model id recorded for decisions made by policy or validation, without any engine.
pub const POLICY_MODEL_ID: &str = "policy";
/// Model id recorded for the resolution of a pending approval.
pub const OPERATOR_MODEL_ID: &str = "operator";

pub async fn handle_proposal(
    deps: &Deps,
    env: &Envelope,
    mutation: &Mutation,
    deferrals: u32,
) -> StageResult {
    let (system, head) = load_system(deps, &env.system_id).await?;
    if let Some(stale) = stale_unless_stable(env, &head, "proposal") {
        return Ok(stale);
    }
    let (dna, history) = dna_view(deps, &system, &head).await?;
    let standing = Standing {
        system,
        head,
        dna,
        history,
    };
    decide_on(deps, env, mutation, deferrals, standing).await
}

/// What a proposal is decided against: the system's registry entry, the head, the DNA and the
/// closed history.
#[derive(Debug, Clone)]
pub(crate) struct Standing {
    pub system: SystemRecord,
    pub head: Head,
    pub dna: DnaView,
    pub history: Vec<HistoryEntry>,
}

/// Decides a proposal against `standing`: the system as it stands now, or, for a what-if replay,
/// as it stood when the recorded decision was made (docs/architecture.md, "What-if replay").
pub(crate) async fn decide_on(
    deps: &Deps,
    env: &Envelope,
    mutation: &Mutation,
    deferrals: u32,
    standing: Standing,
) -> StageResult {
    let Standing {
        system,
        head,
        dna,
        history,
    } = standing;
    let now = deps.clock.now();
    let proposal = Proposal {
        deps,
        env,
        mutation,
        deferrals,
        decision_id: derive_id("dec", &[&env.id]),
        head,
        now,
    };
    // Untrusted proposal: validate against the gene schema first.
    if let Err(e) = apply_mutation(&dna.schema, &dna.genes, mutation) {
        return Ok(proposal.reject_invalid(&e));
    }
    let mut out = StageOutput::default();
    let assessment = risk::assess(&dna.schema, &dna.genes, mutation, &history);
    let local_risk = assessment.overall_risk;
    let mut record = if local_risk <= deps.config.auto_approve_risk {
        proposal.approve_by_policy(assessment)
    } else {
        proposal
            .ask_engine(&mut out, dna, history, local_risk)
            .await?
    };
    let gate_risk = proposal.gate(&mut record, local_risk);
    out.summary = format!(
        "{} {} (risk {local_risk:.3}, {})",
        record.decision.as_str(),
        mutation.id,
        record.model_used
    );
    proposal.act_on(&mut out, &record, gate_risk, &system);
    out.writes.push(Write::PutDecision { decision: record });
    Ok(out)
}

/// One proposal being decided: what every step of the decision reads.
struct Proposal<'a> {
    deps: &'a Deps,
    env: &'a Envelope,
    mutation: &'a Mutation,
    deferrals: u32,
    decision_id: String,
    head: Head,
    now: DateTime<Utc>,
}

impl Proposal<'_> {
    /// The record as policy would write it: a rejection, at no cost. Each way of deciding
    /// overrides what it knows.
    fn base_record(&self) -> DecisionRecord {
        DecisionRecord {
            trace_id: None,
            message_id: None,
            decision_id: self.decision_id.clone(),
            timestamp: self.now,
            mutation_id: self.mutation.id.clone(),
            model_used: POLICY_MODEL_ID.into(),
            decision: Recommendation::Reject,
            confidence: 1.0,
            risk_assessment: crate::domain::RiskAssessment {
                overall_risk: 0.0,
                technical_risk: 0.0,
                business_risk: 0.0,
                operational_risk: 0.0,
            },
            reasoning: String::new(),
            mitigation_strategies: vec![],
            estimated_outcomes: BTreeMap::new(),
            cost_analysis: no_cost(),
            system_id: Some(self.env.system_id.clone()),
            base_generation: Some(self.head.generation),
            mutation: Some(self.mutation.clone()),
            decided_by: Some(DecidedBy::Policy),
            local_risk: None,
            approver: None,
            resolves: None,
            cache_hit: false,
        }
    }

    fn reject_invalid(&self, error: &impl std::fmt::Display) -> StageOutput {
        let record = DecisionRecord {
            reasoning: format!("invalid mutation: {error}"),
            decided_by: Some(DecidedBy::Validation),
            ..self.base_record()
        };
        let mut out = StageOutput {
            summary: format!("rejected invalid mutation: {error}"),
            ..StageOutput::default()
        };
        self.push_outcome(&mut out, &record);
        out.writes.push(Write::PutDecision { decision: record });
        out
    }

    fn approve_by_policy(&self, assessment: crate::domain::RiskAssessment) -> DecisionRecord {
        let local_risk = assessment.overall_risk;
        DecisionRecord {
            decision: Recommendation::Approve,
            risk_assessment: assessment,
            reasoning: format!(
                "local risk {local_risk:.3} is at or below the auto-approve threshold {}",
                self.deps.config.auto_approve_risk
            ),
            mitigation_strategies: vec![
                "snapshot before applying".into(),
                "automatic rollback if fitness regresses".into(),
            ],
            local_risk: Some(local_risk),
            ..self.base_record()
        }
    }

    /// Asks the Decision Engine, with the plan's later steps that would need it too.
    async fn ask_engine(
        &self,
        out: &mut StageOutput,
        dna: DnaView,
        history: Vec<HistoryEntry>,
        local_risk: f64,
    ) -> Result<DecisionRecord, StageError> {
        let deps = self.deps;
        let critical = local_risk > deps.config.risk_ceiling;
        let complexity = if critical {
            Complexity::High
        } else {
            Complexity::Medium
        };
        let ctx = call_context(deps, self.env, Role::Decide, complexity, critical).await?;
        let batch = pending_steps(deps, &dna, &history, self.mutation).await?;
        let answer = deps
            .llm
            .decide(&DecideRequest {
                ctx,
                dna,
                history,
                mutation: self.mutation.clone(),
                local_risk,
                risk_ceiling: deps.config.risk_ceiling,
                deferrals: self.deferrals,
                batch,
            })
            .await?;
        record_call(out, self.env, Role::Decide, &answer, self.now);
        Ok(self.engine_record(answer, local_risk))
    }

    /// The engine's answer as a record, capped, and overruled where policy forbids it.
    fn engine_record(&self, answer: LlmAnswer<DecisionResult>, local_risk: f64) -> DecisionRecord {
        let result = answer.value;
        let (decision, reasoning) = self.overrule(
            result.recommendation,
            cap(&result.reasoning, 2_000),
            local_risk,
        );
        DecisionRecord {
            cache_hit: answer.cache_hit,
            model_used: answer.model_id,
            decision,
            confidence: result.confidence,
            risk_assessment: result.risk_assessment,
            reasoning,
            mitigation_strategies: result
                .mitigation_strategies
                .iter()
                .take(10)
                .map(|m| cap(m, 300))
                .collect(),
            estimated_outcomes: result
                .estimated_impact
                .iter()
                .take(10)
                .map(|(k, v)| (cap(k, 64), format!("{v}")))
                .collect(),
            cost_analysis: CostAnalysis {
                tokens_used: answer.usage.total(),
                cost_usd: nano_to_usd(answer.cost_nano_usd),
                processing_time_ms: answer.latency_ms,
                cost_nano_usd: Some(answer.cost_nano_usd),
            },
            decided_by: Some(DecidedBy::Engine),
            local_risk: Some(local_risk),
            ..self.base_record()
        }
    }

    /// Policy over the engine: no approval above the risk ceiling, no deferral past the limit.
    fn overrule(
        &self,
        mut decision: Recommendation,
        mut reasoning: String,
        local_risk: f64,
    ) -> (Recommendation, String) {
        let config = &self.deps.config;
        if decision == Recommendation::Approve && local_risk > config.risk_ceiling {
            // Defence in depth: the LLM layer already refuses such answers.
            decision = Recommendation::Reject;
            reasoning = format!(
                "approval overridden: local risk {local_risk:.3} is above the ceiling {}; {reasoning}",
                config.risk_ceiling
            );
        }
        if decision == Recommendation::Defer && self.deferrals >= config.max_deferrals {
            decision = Recommendation::Reject;
            reasoning = format!("deferred {} times already; {reasoning}", self.deferrals);
        }
        (decision, reasoning)
    }

    /// The approval gate: a human confirms the riskiest approvals (the larger of the local score
    /// and the engine's own assessment decides). Returns that risk.
    fn gate(&self, record: &mut DecisionRecord, local_risk: f64) -> f64 {
        let gate_risk = record.risk_assessment.overall_risk.max(local_risk);
        if let Some(threshold) = self.deps.config.approval_threshold {
            if record.decision == Recommendation::Approve && gate_risk > threshold {
                record.decision = Recommendation::PendingApproval;
                record.reasoning = cap(
                    &format!(
                        "held for approval: risk {gate_risk:.3} is above the approval threshold \
                         {threshold}; {}",
                        record.reasoning
                    ),
                    2_000,
                );
            }
        }
        gate_risk
    }

    /// The messages and writes the decision calls for, besides its record.
    fn act_on(
        &self,
        out: &mut StageOutput,
        record: &DecisionRecord,
        gate_risk: f64,
        system: &SystemRecord,
    ) {
        match record.decision {
            Recommendation::Approve => out.messages.push(self.reply(Body::MutationApproved {
                decision_id: self.decision_id.clone(),
                mutation: self.mutation.clone(),
            })),
            Recommendation::Defer => out.messages.push(
                self.reply(Body::MutationProposed {
                    mutation: self.mutation.clone(),
                    deferrals: self.deferrals + 1,
                })
                .delayed(self.deps.config.defer_delay_seconds),
            ),
            Recommendation::Reject => self.push_outcome(out, record),
            Recommendation::PendingApproval => self.hold_for_approval(out, gate_risk, system),
        }
    }

    /// Parks the head in `AwaitingApproval` and asks the operators for a verdict before the
    /// approval's deadline.
    fn hold_for_approval(&self, out: &mut StageOutput, gate_risk: f64, system: &SystemRecord) {
        let (env, now, decision_id) = (self.env, self.now, &self.decision_id);
        let expires_at =
            now + chrono::Duration::seconds(i64::from(self.deps.config.approval_ttl_seconds));
        out.writes.push(Write::UpdateHead {
            expected_generation: self.head.generation,
            expected_status: HeadStatus::Stable,
            head: Head {
                status: HeadStatus::AwaitingApproval,
                approval: Some(Box::new(PendingApproval {
                    decision_id: decision_id.clone(),
                    mutation: self.mutation.clone(),
                    risk: gate_risk,
                    requested_at: now,
                    expires_at,
                })),
                updated_at: now,
                ..self.head.clone()
            },
        });
        let alert = Alert {
            id: derive_id("alr", &[&env.id]),
            level: AlertLevel::Warning,
            kind: "approval".into(),
            message: format!(
                "decision {decision_id} on {} awaits approval: {} (risk {gate_risk:.3}); \
                 `evolve approve {decision_id}` or `evolve reject {decision_id}` before {}",
                env.system_id,
                describe(self.mutation),
                expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
            system_id: Some(env.system_id.clone()),
            at: now,
        };
        out.raise(env, "decide", 1, self.head.generation, now, alert);
        // The tick finds the deadline on the registry entry, without reading heads.
        out.writes.push(Write::PutSystem {
            system: SystemRecord {
                approval_expires_at: Some(expires_at),
                ..system.clone()
            },
        });
    }

    fn push_outcome(&self, out: &mut StageOutput, record: &DecisionRecord) {
        push_outcome(
            out,
            self.env,
            self.mutation,
            record,
            self.head.generation,
            self.now,
        );
    }

    fn reply(&self, body: Body) -> Outgoing {
        reply(self.env, "decide", 0, self.head.generation, self.now, body)
    }
}

/// What a decision made without an engine costs.
fn no_cost() -> CostAnalysis {
    CostAnalysis {
        tokens_used: 0,
        cost_usd: 0.0,
        processing_time_ms: 0,
        cost_nano_usd: Some(0),
    }
}

/// `name: old -> new, ...` for alerts.
fn describe(mutation: &Mutation) -> String {
    mutation
        .changes
        .iter()
        .map(|c| format!("{} -> {}", c.gene, c.value))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A rejected plan step goes back to the plan cursor so the plan moves on.
fn push_outcome(
    out: &mut StageOutput,
    env: &Envelope,
    mutation: &Mutation,
    record: &DecisionRecord,
    generation: u64,
    now: chrono::DateTime<chrono::Utc>,
) {
    if let Some(step) = &mutation.plan_step {
        out.messages.push(reply(
            env,
            "decide",
            0,
            generation,
            now,
            Body::CycleRequested {
                reason: CycleReason::Step {
                    step: step.clone(),
                    outcome: StepOutcome::Rejected {
                        why: cap(&record.reasoning, 200),
                    },
                },
            },
        ));
    }
}

/// Resolves a conflict: the engine picks one action from the fixed set, and only that action
/// runs.
pub async fn handle_conflict(
    deps: &Deps,
    env: &Envelope,
    conflict: &SystemConflict,
) -> StageResult {
    let (system, head) = load_system(deps, &env.system_id).await?;
    let now = deps.clock.now();
    let (dna, _) = dna_view(deps, &system, &head).await?;
    let ctx = call_context(deps, env, Role::Resolve, Complexity::High, true).await?;
    let answer = deps
        .llm
        .resolve_conflict(&ResolveRequest {
            ctx,
            dna,
            conflict: conflict.clone(),
        })
        .await?;
    let resolution = &answer.value;
    let mut out = StageOutput::default();
    record_call(&mut out, env, Role::Resolve, &answer, now);
    apply_resolution(&mut out, env, &head, conflict, resolution, now);
    let alert = Alert {
        id: derive_id("alr", &[&env.id]),
        level: if resolution.action == ResolutionAction::Escalate {
            AlertLevel::Critical
        } else {
            AlertLevel::Warning
        },
        kind: "conflict".into(),
        message: format!(
            "{:?} conflict on {}: {}; resolution {:?} by {}",
            conflict.kind,
            env.system_id,
            cap(&conflict.description, 200),
            resolution.action,
            answer.model_id
        ),
        system_id: Some(env.system_id.clone()),
        at: now,
    };
    out.writes.push(Write::PutEvent {
        event: event(
            env,
            now,
            EventType::ConflictResolved,
            head.generation,
            alert.message.clone(),
        ),
    });
    out.raise(env, "decide", 1, head.generation, now, alert);
    out.summary = format!("conflict resolved with {:?}", resolution.action);
    Ok(out)
}

/// Runs the chosen action where it applies to the head's state. Escalate, or an action that
/// does not apply, does nothing here: the alert that follows tells the operators.
fn apply_resolution(
    out: &mut StageOutput,
    env: &Envelope,
    head: &Head,
    conflict: &SystemConflict,
    resolution: &ResolutionStrategy,
    now: DateTime<Utc>,
) {
    let say = |body| reply(env, "decide", 0, head.generation, now, body);
    match resolution.action {
        ResolutionAction::Pause if head.status == HeadStatus::Stable => {
            out.writes.push(Write::UpdateHead {
                expected_generation: head.generation,
                expected_status: HeadStatus::Stable,
                head: Head {
                    status: HeadStatus::Paused,
                    updated_at: now,
                    ..head.clone()
                },
            });
        }
        ResolutionAction::Resume if head.status == HeadStatus::Paused => {
            out.writes.push(resume(head, now));
            out.messages.push(say(Body::CycleRequested {
                reason: CycleReason::HeadMoved,
            }));
        }
        ResolutionAction::RollbackToLastStable => out.messages.push(say(Body::RollbackRequested {
            to_generation: None,
            requested_by: "conflict-resolution".into(),
            reason: cap(&conflict.description, 200),
        })),
        ResolutionAction::RetryLater => out.messages.push(
            say(Body::CycleRequested {
                reason: CycleReason::RetryLater,
            })
            .delayed(resolution.retry_after_seconds),
        ),
        _ => {}
    }
}

/// Takes a paused head back to stable at its generation. The rollback streak is cleared: a
/// streak is the usual reason for a pause, and kept, the next rollback would pause it again.
fn resume(head: &Head, now: DateTime<Utc>) -> Write {
    Write::UpdateHead {
        expected_generation: head.generation,
        expected_status: HeadStatus::Paused,
        head: Head {
            status: HeadStatus::Stable,
            rollback_streak: 0,
            updated_at: now,
            ..head.clone()
        },
    }
}

/// An audit event of this stage; one per message, so its id is the message's.
fn event(
    env: &Envelope,
    at: DateTime<Utc>,
    event_type: EventType,
    generation: u64,
    detail: String,
) -> EvolutionEvent {
    EvolutionEvent {
        trace_id: None,
        message_id: None,
        id: derive_id("evt", &[&env.id]),
        timestamp: at,
        event_type,
        generation,
        fitness_delta: None,
        mutation_id: None,
        bedrock_analysis: None,
        system_context: None,
        storage_metadata: None,
        system_id: Some(env.system_id.clone()),
        detail: Some(detail),
    }
}

/// Most later steps handed to the engine for a batch decision.
const MAX_BATCH_STEPS: usize = 4;

/// The plan's steps after this proposal's that would also need an engine decision against the
/// current DNA (they validate, and their local risk is above the auto-approve threshold), with
/// the mutation ids analyze will give them. The engine may decide them with this one in a single
/// request while Bedrock throttles (`llm::bedrock`); it ignores them otherwise.
async fn pending_steps(
    deps: &Deps,
    dna: &DnaView,
    history: &[HistoryEntry],
    mutation: &Mutation,
) -> Result<Vec<crate::llm::PendingProposal>, StageError> {
    let Some(step) = &mutation.plan_step else {
        return Ok(Vec::new());
    };
    let Some(plan) = deps.store.get_plan(&dna.system_id, &step.plan_id).await? else {
        return Ok(Vec::new());
    };
    let mut pending = Vec::new();
    for (index, later) in plan.steps.iter().enumerate().skip(step.step as usize + 1) {
        let candidate = Mutation {
            id: derive_id("mut", &[&plan.plan_id, &index.to_string(), "false"]),
            changes: later.changes.clone(),
            description: later.rationale.clone(),
            predicted_impact: later.predicted_impact,
            plan_step: Some(crate::domain::PlanStepRef {
                plan_id: plan.plan_id.clone(),
                step: index as u32,
            }),
        };
        if apply_mutation(&dna.schema, &dna.genes, &candidate).is_err() {
            continue;
        }
        let local_risk = risk::assess(&dna.schema, &dna.genes, &candidate, history).overall_risk;
        if local_risk > deps.config.auto_approve_risk {
            pending.push(crate::llm::PendingProposal {
                mutation: candidate,
                local_risk,
            });
        }
        if pending.len() == MAX_BATCH_STEPS {
            break;
        }
    }
    Ok(pending)
}
