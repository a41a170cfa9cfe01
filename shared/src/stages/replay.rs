//! What-if replay: asks the recorded analyses, plans and decisions again, each against the DNA
//! and history that stood when it was recorded, under another engine, catalog, budget or
//! approval gate, and compares (docs/architecture.md, "What-if replay").
//!
//! The replay reads the recorded store and writes nothing to it: the stages' writes are
//! dropped, and the money it spends is counted in a ledger and control state of its own
//! (`Deps::ledger`, `Deps::control`), never the live ones. Its clock walks the recorded
//! timestamps, so a day's budget is the day the record was made.

mod report;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

pub use report::{
    Agreement, CallPair, DecisionPair, ModeChange, ReplayReport, Side, Skipped, SpendRow,
};
use report::{Charge, SpendBook};

use super::decide::{Standing, decide_on};
use super::{Deps, StageError, StageOutput, call_context, complexity_of, record_call};
use crate::clock::SimClock;
use crate::domain::{
    AnalysisRecord, Body, DecidedBy, DecisionRecord, Envelope, Head, HeadStatus, HistoryEntry,
    Recommendation, Role, SystemId, derive_id,
};
use crate::llm::{AnalyzeRequest, DnaView, StrategizeRequest};
use crate::store::{BudgetState, EvolutionStore, LlmCallRecord, SystemRecord, Transaction, Write};

/// The window of records to replay.
#[derive(Debug, Clone, Default)]
pub struct Window {
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// The systems to replay; every system in the store when empty.
    pub systems: Vec<SystemId>,
}

impl Window {
    fn covers(&self, at: DateTime<Utc>) -> bool {
        self.since.is_none_or(|s| at >= s) && self.until.is_none_or(|u| at < u)
    }
}

/// The replay's own budget state: where its mode changes are committed (a store of its own,
/// never the recorded one).
pub type ScratchControl = std::sync::Arc<dyn EvolutionStore>;

/// Replays every recorded analysis, plan and decision of `window`. `deps.store` is the recorded
/// store (read only); `deps.control` and `deps.ledger` are the replay's own, and `scratch` the
/// store behind `deps.control`; `clock` is the clock behind `deps.clock` and
/// `deps.money_clock`.
pub async fn replay(
    deps: &Deps,
    scratch: &ScratchControl,
    clock: &SimClock,
    window: &Window,
    engine: &str,
) -> Result<ReplayReport, StageError> {
    let mut report = ReplayReport {
        since: window.since,
        until: window.until,
        engine: engine.to_owned(),
        ..ReplayReport::default()
    };
    let mut book = SpendBook::new();
    let systems = if window.systems.is_empty() {
        deps.store
            .list_systems()
            .await?
            .into_iter()
            .map(|s| s.system_id)
            .collect()
    } else {
        window.systems.clone()
    };
    let mut items = Vec::new();
    let mut records = BTreeMap::new();
    for id in &systems {
        let system = deps
            .store
            .get_system(id)
            .await?
            .ok_or_else(|| StageError::UnknownSystem(id.clone()))?;
        let recorded = Recorded::load(deps, &system, window).await?;
        items.extend(recorded.items(&mut report));
        records.insert(id.clone(), recorded);
    }
    items.sort_by_key(|item| (item.at(), item.order()));
    for item in items {
        let at = item.at();
        clock.advance_to(at);
        let mode = follow_budget(deps, scratch, &mut report, at).await?;
        let recorded = &records[item.system_id()];
        let (kind, id) = item.name();
        let replayed = match item {
            Item::Decision { asked, .. } => {
                recorded
                    .replay_decision(deps, &mut report, &mut book, &asked, mode)
                    .await
            }
            Item::Call { call, .. } => {
                recorded
                    .replay_call(deps, &mut report, &mut book, &call)
                    .await
            }
        };
        // A record that cannot be asked again (its generation purged, say) is reported; an
        // outage of the store ends the replay.
        match replayed {
            Err(e) if !e.is_retryable() => report.skipped.push(Skipped {
                kind,
                id,
                at,
                reason: e.to_string(),
                recorded_nano_usd: 0,
            }),
            other => other?,
        }
    }
    report.finish(book);
    Ok(report)
}

/// Commits the mode the replay's budgets call for at `at`, as cost-guard would, and returns it.
async fn follow_budget(
    deps: &Deps,
    scratch: &ScratchControl,
    report: &mut ReplayReport,
    at: DateTime<Utc>,
) -> Result<crate::domain::BudgetMode, StageError> {
    let current = deps.control.budget_state().await?;
    let (required, reason) = super::cost_guard::required_mode(deps, at).await?;
    if required != current.mode {
        scratch
            .commit(Transaction {
                writes: vec![Write::SetBudgetMode {
                    expected: current.mode,
                    state: BudgetState {
                        mode: required,
                        changed_at: Some(at),
                        reason: reason.clone(),
                    },
                }],
                completion: None,
            })
            .await?;
        report.mode_changes.push(ModeChange {
            at,
            from: current.mode,
            to: required,
            reason,
        });
    }
    Ok(required)
}

/// One recorded thing to ask again, of one system.
enum Item {
    Decision {
        system_id: SystemId,
        asked: Box<Asked>,
    },
    /// An analysis or a plan.
    Call {
        system_id: SystemId,
        call: Box<LlmCallRecord>,
    },
}

impl Item {
    fn at(&self) -> DateTime<Utc> {
        match self {
            Self::Decision { asked, .. } => asked.record.timestamp,
            Self::Call { call, .. } => call.at,
        }
    }

    /// At one instant, analyses before plans before decisions, the order a cycle makes them.
    fn order(&self) -> u8 {
        match self {
            Self::Call { call, .. } if call.role == Role::Analyze => 0,
            Self::Call { .. } => 1,
            Self::Decision { .. } => 2,
        }
    }

    fn system_id(&self) -> &SystemId {
        match self {
            Self::Decision { system_id, .. } | Self::Call { system_id, .. } => system_id,
        }
    }

    /// Its kind and id, for the list of skipped records.
    fn name(&self) -> (String, String) {
        match self {
            Self::Decision { asked, .. } => ("decision".into(), asked.record.decision_id.clone()),
            Self::Call { call, .. } => (call.role.as_str().into(), call.call_id.clone()),
        }
    }
}

/// A recorded decision with what it was asked: the mutation, against which generation, after how
/// many deferrals of the same proposal.
struct Asked {
    record: DecisionRecord,
    mutation: crate::domain::Mutation,
    base_generation: u64,
    deferrals: u32,
}

/// One system's records: its registry entry, its closed history and its recorded calls.
struct Recorded {
    system: SystemRecord,
    head: Head,
    history: Vec<HistoryEntry>,
    /// The window's decisions, each with how often its proposal had been deferred before.
    decisions: Vec<(DecisionRecord, u32)>,
    calls: Vec<LlmCallRecord>,
    /// The engine call behind each decision, by decision id.
    call_of_decision: BTreeMap<String, LlmCallRecord>,
}

impl Recorded {
    async fn load(deps: &Deps, system: &SystemRecord, window: &Window) -> Result<Self, StageError> {
        let id = &system.system_id;
        let head = deps
            .store
            .get_head(id)
            .await?
            .ok_or_else(|| StageError::UnknownSystem(id.clone()))?;
        let history = deps.store.list_history(id, usize::MAX).await?;
        let calls: Vec<LlmCallRecord> = deps
            .store
            .list_llm_calls(Some(id), window.since)
            .await?
            .into_iter()
            .filter(|c| window.covers(c.at))
            .collect();
        let call_of_decision = calls
            .iter()
            .filter(|c| c.role == Role::Decide)
            .map(|c| (derive_id("dec", &[&c.envelope_id]), c.clone()))
            .collect();
        // Deferrals are counted from the first decision, before the window too.
        let mut deferred: BTreeMap<String, u32> = BTreeMap::new();
        let mut decisions = Vec::new();
        for d in deps.store.list_decisions(id, None, usize::MAX).await? {
            let before = deferred.get(&d.mutation_id).copied().unwrap_or(0);
            if d.decision == Recommendation::Defer {
                *deferred.entry(d.mutation_id.clone()).or_default() += 1;
            }
            if window.covers(d.timestamp) {
                decisions.push((d, before));
            }
        }
        Ok(Self {
            system: system.clone(),
            head,
            history,
            decisions,
            calls,
            call_of_decision,
        })
    }

    /// The records to ask again; the rest is reported as skipped, with its recorded cost.
    fn items(&self, report: &mut ReplayReport) -> Vec<Item> {
        let mut items = Vec::new();
        for (d, deferrals) in &self.decisions {
            let operator = matches!(d.decided_by, Some(DecidedBy::Operator | DecidedBy::Expiry))
                || d.resolves.is_some();
            let asked = match (operator, &d.mutation, d.base_generation) {
                (true, _, _) => Err("an operator's verdict or an expired approval, not a model's"),
                (false, None, _) => Err("the record does not hold its mutation"),
                (false, _, None) => Err("the record does not hold its base generation"),
                (false, Some(mutation), Some(base_generation)) => Ok(Asked {
                    record: d.clone(),
                    mutation: mutation.clone(),
                    base_generation,
                    deferrals: *deferrals,
                }),
            };
            match asked {
                Err(reason) => report.skipped.push(Skipped {
                    kind: "decision".into(),
                    id: d.decision_id.clone(),
                    at: d.timestamp,
                    reason: reason.into(),
                    recorded_nano_usd: recorded_cost(d),
                }),
                Ok(asked) => items.push(Item::Decision {
                    system_id: self.system.system_id.clone(),
                    asked: Box::new(asked),
                }),
            }
        }
        for call in &self.calls {
            match call.role {
                Role::Analyze | Role::Strategize => items.push(Item::Call {
                    system_id: self.system.system_id.clone(),
                    call: Box::new(call.clone()),
                }),
                Role::Decide => {}
                Role::Resolve => report.skipped.push(Skipped {
                    kind: "conflict resolution".into(),
                    id: call.call_id.clone(),
                    at: call.at,
                    reason: "conflicts are not recorded in a form that can be asked again".into(),
                    recorded_nano_usd: call.cost_nano_usd,
                }),
            }
        }
        items
    }

    /// The closed history as it stood at `at`, as the stages hand it to the models.
    fn history_at(&self, at: DateTime<Utc>, window: usize) -> Vec<HistoryEntry> {
        let closed: Vec<HistoryEntry> = self
            .history
            .iter()
            .filter(|h| h.closed_at <= at)
            .cloned()
            .collect();
        let skip = closed.len().saturating_sub(window);
        closed.into_iter().skip(skip).collect()
    }

    /// The system as it stood at `at` with generation `generation` in force.
    async fn standing(
        &self,
        deps: &Deps,
        generation: u64,
        at: DateTime<Utc>,
    ) -> Result<Standing, StageError> {
        let id = &self.system.system_id;
        let genes = super::load_generation(deps, id, generation).await?.genes;
        let history = self.history_at(at, deps.config.history_window);
        // The fitness the generation in force was kept at, else the last kept before it.
        let stable_fitness = history
            .iter()
            .rev()
            .find(|h| h.generation == generation)
            .or_else(|| {
                history
                    .iter()
                    .rev()
                    .find(|h| h.outcome == crate::domain::EvaluationOutcome::Keep)
            })
            .and_then(|h| h.fitness);
        let head = Head {
            generation,
            status: HeadStatus::Stable,
            stable_generation: generation,
            stable_fitness,
            evaluation: None,
            approval: None,
            updated_at: at,
            ..self.head.clone()
        };
        Ok(Standing {
            system: self.system.clone(),
            dna: DnaView {
                system_id: id.clone(),
                generation,
                schema: self.system.schema.clone(),
                genes,
                stable_fitness,
                constraints: (*self.system.settings.constraints).clone(),
            },
            head,
            history,
        })
    }

    async fn replay_decision(
        &self,
        deps: &Deps,
        report: &mut ReplayReport,
        book: &mut SpendBook,
        asked: &Asked,
        budget_mode: crate::domain::BudgetMode,
    ) -> Result<(), StageError> {
        let Asked {
            record,
            mutation,
            base_generation: base,
            deferrals,
        } = asked;
        let (base, deferrals) = (*base, *deferrals);
        let at = record.timestamp;
        let standing = self.standing(deps, base, at).await?;
        let env = replay_envelope(
            &record.decision_id,
            &self.system.system_id,
            base,
            at,
            Body::MutationProposed {
                mutation: mutation.clone(),
                deferrals,
            },
        );
        let out = decide_on(deps, &env, mutation, deferrals, standing).await?;
        let Some(replayed) = decision_of(&out) else {
            return Err(StageError::Inconsistent(format!(
                "the replay of {} made no decision",
                record.decision_id
            )));
        };
        let recorded_call = self.call_of_decision.get(&record.decision_id);
        if let Some(call) = recorded_call {
            report.charge(book, charge(call, true));
        }
        if let Some(call) = call_of(&out) {
            report.charge(book, charge(call, false));
        }
        report.decisions.push(DecisionPair {
            decision_id: record.decision_id.clone(),
            system_id: self.system.system_id.clone(),
            mutation_id: record.mutation_id.clone(),
            at,
            recorded: side(record, recorded_call.map(|c| c.cost_nano_usd)),
            replayed: side(replayed, call_of(&out).map(|c| c.cost_nano_usd)),
            budget_mode,
        });
        Ok(())
    }

    /// Asks a recorded analysis or plan again.
    async fn replay_call(
        &self,
        deps: &Deps,
        report: &mut ReplayReport,
        book: &mut SpendBook,
        call: &LlmCallRecord,
    ) -> Result<(), StageError> {
        let id = &self.system.system_id;
        let (analysis_id, plan) = if call.role == Role::Analyze {
            (derive_id("ana", &[&call.envelope_id]), None)
        } else {
            let plan_id = derive_id("plan", &[&call.envelope_id]);
            let Some(plan) = deps.store.get_plan(id, &plan_id).await? else {
                skip_call(report, call, "its plan is not in the store");
                return Ok(());
            };
            (plan.analysis_id.clone(), Some(plan))
        };
        let Some(analysis) = deps.store.get_analysis(id, &analysis_id).await? else {
            skip_call(report, call, "its analysis is not in the store");
            return Ok(());
        };
        let generation = plan
            .as_ref()
            .map_or(analysis.generation, |p| p.base_generation);
        let standing = self.standing(deps, generation, call.at).await?;
        let env = replay_envelope(
            &call.call_id,
            id,
            generation,
            call.at,
            Body::AnalysisReady {
                analysis_id: analysis_id.clone(),
            },
        );
        let complexity = complexity_of(standing.dna.genes.len(), &standing.history);
        let ctx = call_context(deps, &env, call.role, complexity, false).await?;
        let mut out = StageOutput::default();
        let now = deps.clock.now();
        let (recorded_gist, replayed_gist) = if let Some(plan) = &plan {
            let answer = deps
                .llm
                .strategize(&StrategizeRequest {
                    ctx,
                    dna: standing.dna,
                    history: standing.history,
                    analysis: analysis.analysis.clone(),
                    max_steps: deps.config.max_plan_steps,
                })
                .await?;
            record_call(&mut out, &env, call.role, &answer, now);
            let genes = |changes: Vec<Vec<String>>| {
                format!("{} steps: {}", changes.len(), changes.concat().join(", "))
            };
            (
                genes(plan.steps.iter().map(|s| gene_names(&s.changes)).collect()),
                genes(
                    answer
                        .value
                        .primary_mutations
                        .iter()
                        .map(|m| gene_names(&m.changes))
                        .collect(),
                ),
            )
        } else {
            let answer = deps
                .llm
                .analyze(&AnalyzeRequest {
                    ctx,
                    dna: standing.dna,
                    history: standing.history,
                })
                .await?;
            record_call(&mut out, &env, call.role, &answer, now);
            (
                focus(&analysis),
                answer.value.recommended_focus_areas.join(", "),
            )
        };
        let replayed = call_of(&out).ok_or_else(|| {
            StageError::Inconsistent(format!("the replay of {} recorded no call", call.call_id))
        })?;
        report.charge(book, charge(call, true));
        report.charge(book, charge(replayed, false));
        report.calls.push(CallPair {
            role: call.role,
            system_id: id.clone(),
            at: call.at,
            recorded_model: call.model_id.clone(),
            recorded_nano_usd: call.cost_nano_usd,
            replayed_model: replayed.model_id.clone(),
            replayed_nano_usd: replayed.cost_nano_usd,
            replayed_fallback: replayed.fallback.clone(),
            recorded_gist,
            replayed_gist,
        });
        Ok(())
    }
}

/// The envelope a replayed call runs under: its id is the replay's own, so nothing it keys
/// (checkpoints, the response cache) meets the live run's.
fn replay_envelope(
    recorded_id: &str,
    system_id: &SystemId,
    base_generation: u64,
    at: DateTime<Utc>,
    body: Body,
) -> Envelope {
    Envelope {
        id: derive_id("replay", &[recorded_id]),
        causation_id: recorded_id.to_owned(),
        system_id: system_id.clone(),
        base_generation,
        sent_at: at,
        body,
        // A replay is no cycle of the system: its calls join no recorded trace.
        traceparent: None,
    }
}

fn decision_of(out: &StageOutput) -> Option<&DecisionRecord> {
    out.writes.iter().find_map(|w| match w {
        Write::PutDecision { decision } => Some(decision),
        _ => None,
    })
}

fn call_of(out: &StageOutput) -> Option<&LlmCallRecord> {
    out.writes.iter().find_map(|w| match w {
        Write::PutLlmCall { call } => Some(call),
        _ => None,
    })
}

fn charge(call: &LlmCallRecord, recorded: bool) -> Charge<'_> {
    Charge {
        at: call.at,
        model: &call.model_id,
        nano: call.cost_nano_usd,
        recorded,
    }
}

fn side(d: &DecisionRecord, call_cost: Option<u64>) -> Side {
    Side {
        decision: d.decision,
        decided_by: d.decided_by,
        model: d.model_used.clone(),
        reasoning: d.reasoning.clone(),
        cost_nano_usd: call_cost.unwrap_or_else(|| recorded_cost(d)),
    }
}

fn recorded_cost(d: &DecisionRecord) -> u64 {
    d.cost_analysis.cost_nano_usd.unwrap_or(0)
}

fn skip_call(report: &mut ReplayReport, call: &LlmCallRecord, reason: &str) {
    report.skipped.push(Skipped {
        kind: call.role.as_str().to_owned(),
        id: call.call_id.clone(),
        at: call.at,
        reason: reason.to_owned(),
        recorded_nano_usd: call.cost_nano_usd,
    });
}

fn gene_names(changes: &[crate::domain::GeneChange]) -> Vec<String> {
    changes.iter().map(|c| c.gene.to_string()).collect()
}

fn focus(analysis: &AnalysisRecord) -> String {
    analysis.analysis.recommended_focus_areas.join(", ")
}
