//! What the report shows, read once from the store. Kept apart from rendering so the numbers can
//! be checked against the store without parsing HTML, and so the renderer never does I/O.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use shared::domain::judging::Finding;
use shared::domain::{
    AlertLevel, BudgetMode, DecisionRecord, EvaluationOutcome, EventType, EvolutionEvent,
    GeneSchema, GeneSpec, GeneValue, Generation, HistoryEntry, MetricName, Objective, Origin, Role,
    SystemId, describe_changes,
};
use shared::store::performance::PerformanceSnapshot;
use shared::store::{BudgetState, FullStore, LlmCallRecord, StoreError};

/// Characters of a decision's reasoning shown in the table; the audit trail keeps the rest.
const REASONING_EXCERPT_CHARS: usize = 240;

/// Everything the report renders.
#[derive(Debug, Clone)]
pub struct ReportData {
    pub system_id: SystemId,
    pub generated_at: DateTime<Utc>,
    /// The first and last instants the records cover (simulated time for the demo).
    pub span: (DateTime<Utc>, DateTime<Utc>),
    pub head_generation: u64,
    /// `HeadStatus::as_str()`: stable, evaluating, paused, ...
    pub head_status: &'static str,
    pub stable_fitness: Option<f64>,
    /// One per closed evaluation, ascending by generation.
    pub evaluations: Vec<EvaluationPoint>,
    /// Generation records: one per generation, mutations and rollbacks alike.
    pub generations: Vec<GenerationPoint>,
    pub genes: Vec<GeneSeries>,
    pub decisions: Vec<DecisionRow>,
    /// This system's LLM call cost by UTC day and model.
    pub spend: Vec<SpendRow>,
    pub daily_budget_nano: Option<u64>,
    /// The budget mode in force at the span's start, then each change, oldest first.
    pub budget_modes: Vec<ModeChange>,
    pub budget_now: BudgetState,
    /// What the tick did to this system's schedule for the budget mode, oldest first.
    pub cost_actions: Vec<CostAction>,
    pub predictions: Vec<PredictionPoint>,
    /// The stored performance record's prediction error, per model and role.
    pub model_errors: Vec<ModelError>,
    /// The system's guardrails as written, and its objectives.
    pub guardrails: Vec<String>,
    pub objectives: Vec<Objective>,
    /// The two objectives the Pareto front is drawn for (the first two by default).
    pub pareto_axes: Option<(Objective, Objective)>,
    /// A what-if replay's comparison to show (`evolve report --replay FILE`).
    pub replay: Option<shared::stages::replay::ReplayReport>,
    pub confidence_percent: u32,
}

/// How a closed evaluation is marked on the fitness chart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PointKind {
    /// A generation without a mutation of its own (generation 0, or re-measured after an
    /// operator rollback).
    Baseline,
    /// A mutation measured and kept.
    Kept,
    /// A mutation rolled back: measured worse, or inconclusive.
    RolledBack,
}

impl PointKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Baseline => "baseline",
            Self::Kept => "kept",
            Self::RolledBack => "rolled back",
        }
    }
}

#[derive(Debug, Clone)]
pub struct EvaluationPoint {
    pub generation: u64,
    pub fitness: Option<f64>,
    pub baseline_fitness: Option<f64>,
    pub kind: PointKind,
    pub outcome: EvaluationOutcome,
    pub changes: String,
    /// The reports the window heard, failures named (see `views::reports`).
    pub reports: String,
    pub failed: u32,
    /// What the verdict rested on: the significance test, the guardrails broken, or the
    /// mean rule.
    pub verdict: String,
    pub breaches: Vec<String>,
    pub p_value: Option<f64>,
    /// The canary's comparison with its concurrent control, when it ran as one.
    pub canary: Option<shared::domain::CanaryVerdict>,
    /// The window's mean of each reported metric, for the Pareto front.
    pub metrics: BTreeMap<MetricName, f64>,
    pub closed_at: DateTime<Utc>,
}

impl EvaluationPoint {
    /// The fitness the system runs with once this window closed: the measured one when kept,
    /// the parent's when rolled back.
    pub fn running_fitness(&self) -> Option<f64> {
        match self.kind {
            PointKind::RolledBack => self.baseline_fitness,
            PointKind::Baseline | PointKind::Kept => self.fitness.or(self.baseline_fitness),
        }
    }
}

#[derive(Debug, Clone)]
pub struct GenerationPoint {
    pub generation: u64,
    /// `initial`, `mutation` or `rollback`.
    pub origin: &'static str,
}

/// How a gene's values map onto a chart's y axis.
#[derive(Debug, Clone)]
pub enum GeneAxis {
    Numeric { min: f64, max: f64 },
    Bool,
    Choice(Vec<String>),
}

#[derive(Debug, Clone)]
pub struct GeneSeries {
    pub name: String,
    pub axis: GeneAxis,
    /// One per generation: (generation, value).
    pub points: Vec<(u64, GeneValue)>,
}

impl GeneSeries {
    /// A value's position on the y axis (`false`/`true` as 0/1, a choice as its index).
    pub fn y(&self, value: &GeneValue) -> Option<f64> {
        match (&self.axis, value) {
            (GeneAxis::Bool, GeneValue::Bool(b)) => Some(f64::from(u8::from(*b))),
            (GeneAxis::Choice(choices), GeneValue::Choice(c)) => {
                choices.iter().position(|x| x == c).map(|i| i as f64)
            }
            _ => value.as_f64(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct DecisionRow {
    pub timestamp: DateTime<Utc>,
    pub mutation: String,
    pub risk: f64,
    /// `Recommendation::as_str()`.
    pub recommendation: &'static str,
    pub confidence: f64,
    pub model: String,
    pub reasoning_excerpt: String,
    pub cost_nano: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpendRow {
    /// `yyyy-mm-dd`, UTC.
    pub day: String,
    pub model: String,
    pub calls: u64,
    pub cost_nano: u64,
}

#[derive(Debug, Clone)]
pub struct ModeChange {
    pub at: DateTime<Utc>,
    pub mode: BudgetMode,
    pub reason: String,
}

/// A budget-mode event recorded for this system (the tick's cost action on its schedule).
#[derive(Debug, Clone)]
pub struct CostAction {
    pub at: DateTime<Utc>,
    pub generation: u64,
    pub detail: String,
}

#[derive(Debug, Clone)]
pub struct PredictionPoint {
    /// The strategist model whose plan predicted the impact.
    pub model: String,
    pub predicted: f64,
    /// Measured fitness minus the parent's; `None` when the window had no valid score.
    pub actual: Option<f64>,
}

#[derive(Debug, Clone)]
pub struct ModelError {
    pub model: String,
    pub role: Role,
    pub predictions: u64,
    pub prediction_error: f64,
}

impl ReportData {
    pub fn total_cost_nano(&self) -> u64 {
        self.spend.iter().map(|s| s.cost_nano).sum()
    }

    pub fn kept(&self) -> usize {
        self.count(PointKind::Kept)
    }

    pub fn rolled_back(&self) -> usize {
        self.count(PointKind::RolledBack)
    }

    fn count(&self, kind: PointKind) -> usize {
        self.evaluations.iter().filter(|e| e.kind == kind).count()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GatherError {
    #[error("unknown system {0}")]
    UnknownSystem(SystemId),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Reads everything the report shows about one system. Works on any [`FullStore`]: the
/// embedded SQLite store and a deployed stack's DynamoDB table alike.
pub async fn gather(
    store: &dyn FullStore,
    system_id: &SystemId,
    daily_budget_nano: Option<u64>,
) -> Result<ReportData, GatherError> {
    let unknown = || GatherError::UnknownSystem(system_id.clone());
    let system = store.get_system(system_id).await?.ok_or_else(unknown)?;
    let head = store.get_head(system_id).await?.ok_or_else(unknown)?;
    let history = store.list_history(system_id, usize::MAX).await?;
    let generations = store.list_generations(system_id, None, usize::MAX).await?;
    let decisions = store.list_decisions(system_id, None, usize::MAX).await?;
    let calls = store.list_llm_calls(Some(system_id), None).await?;
    let budget_now = store.budget_state().await?;
    let alerts = store.list_alerts(None, usize::MAX).await?;
    let performance = store.performance().await?;
    let events = store.list_events(system_id, None, usize::MAX).await?;

    let start = system.created_at;
    let end = [
        Some(head.updated_at),
        history.last().map(|h| h.closed_at),
        generations.last().map(|g| g.created_at),
        decisions.last().map(|d| d.timestamp),
        calls.last().map(|c| c.at),
    ]
    .into_iter()
    .flatten()
    .fold(start, DateTime::max);
    let predictions = prediction_points(store, system_id, &history).await?;
    let constraints = &system.settings.constraints;

    Ok(ReportData {
        system_id: system_id.clone(),
        generated_at: Utc::now(),
        span: (start, end),
        head_generation: head.generation,
        head_status: head.status.as_str(),
        stable_fitness: head.stable_fitness,
        evaluations: history.iter().map(evaluation_point).collect(),
        generations: generations.iter().map(generation_point).collect(),
        genes: gene_series(&system.schema, &generations),
        decisions: decisions.iter().map(decision_row).collect(),
        spend: spend_rows(&calls),
        daily_budget_nano,
        budget_modes: budget_timeline(&alerts, &budget_now, start, end),
        budget_now,
        cost_actions: cost_actions(&events),
        predictions,
        model_errors: model_errors(&performance),
        guardrails: constraints
            .guardrails
            .iter()
            .map(ToString::to_string)
            .collect(),
        replay: None,
        pareto_axes: match constraints.objectives.as_slice() {
            [x, y, ..] => Some((x.clone(), y.clone())),
            _ => None,
        },
        objectives: constraints.objectives.clone(),
        confidence_percent: system.settings.confidence_percent,
    })
}

/// One series per gene of the schema: its value in each generation, on the gene's axis.
fn gene_series(schema: &GeneSchema, generations: &[Generation]) -> Vec<GeneSeries> {
    schema
        .iter()
        .map(|(name, def)| GeneSeries {
            name: name.to_string(),
            axis: match &def.spec {
                GeneSpec::Bool => GeneAxis::Bool,
                GeneSpec::Choice { choices } => GeneAxis::Choice(choices.clone()),
                spec => {
                    let (min, max) = spec.range().unwrap_or((0.0, 1.0));
                    GeneAxis::Numeric { min, max }
                }
            },
            points: generations
                .iter()
                .filter_map(|g| g.genes.get(name).map(|v| (g.generation, v.clone())))
                .collect(),
        })
        .collect()
}

fn generation_point(g: &Generation) -> GenerationPoint {
    GenerationPoint {
        generation: g.generation,
        origin: match g.origin {
            Origin::Initial => "initial",
            Origin::Mutation { .. } => "mutation",
            Origin::Rollback { .. } => "rollback",
        },
    }
}

/// The LLM calls summed per UTC day and model, in day then model order.
fn spend_rows(calls: &[LlmCallRecord]) -> Vec<SpendRow> {
    let mut spend: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
    for call in calls {
        let entry = spend
            .entry((
                call.at.format("%Y-%m-%d").to_string(),
                call.model_id.clone(),
            ))
            .or_default();
        entry.0 += 1;
        entry.1 += call.cost_nano_usd;
    }
    spend
        .into_iter()
        .map(|((day, model), (calls, cost_nano))| SpendRow {
            day,
            model,
            calls,
            cost_nano,
        })
        .collect()
}

fn cost_actions(events: &[EvolutionEvent]) -> Vec<CostAction> {
    events
        .iter()
        .filter(|e| {
            matches!(
                e.event_type,
                EventType::CostActionApplied | EventType::BudgetModeChanged
            )
        })
        .map(|e| CostAction {
            at: e.timestamp,
            generation: e.generation,
            detail: e.detail.clone().unwrap_or_default(),
        })
        .collect()
}

/// Each planned step's predicted impact next to the measured one, under the model that made
/// the plan; each plan is read once, however many of its steps were measured.
async fn prediction_points(
    store: &dyn FullStore,
    system_id: &SystemId,
    history: &[HistoryEntry],
) -> Result<Vec<PredictionPoint>, GatherError> {
    let mut plan_models: HashMap<String, Option<String>> = HashMap::new();
    let mut predictions = Vec::new();
    for h in history {
        let Some(step) = &h.plan_step else { continue };
        if !plan_models.contains_key(&step.plan_id) {
            let model = store
                .get_plan(system_id, &step.plan_id)
                .await?
                .map(|p| p.model_used);
            plan_models.insert(step.plan_id.clone(), model);
        }
        let model = plan_models
            .get(&step.plan_id)
            .cloned()
            .flatten()
            .unwrap_or_else(|| "unknown".to_owned());
        predictions.push(PredictionPoint {
            model,
            predicted: h.predicted_impact,
            actual: h.fitness.zip(h.baseline_fitness).map(|(f, b)| f - b),
        });
    }
    Ok(predictions)
}

fn model_errors(performance: &PerformanceSnapshot) -> Vec<ModelError> {
    performance
        .models
        .iter()
        .flat_map(|(model, roles)| {
            roles
                .iter()
                .filter(|(_, s)| s.predictions > 0)
                .map(|(role, s)| ModelError {
                    model: model.clone(),
                    role: *role,
                    predictions: s.predictions,
                    prediction_error: s.prediction_error,
                })
        })
        .collect()
}

fn evaluation_point(h: &HistoryEntry) -> EvaluationPoint {
    let kind = if h.changes.is_empty() {
        PointKind::Baseline
    } else if h.outcome == EvaluationOutcome::Keep {
        PointKind::Kept
    } else {
        PointKind::RolledBack
    };
    EvaluationPoint {
        generation: h.generation,
        fitness: h.fitness,
        baseline_fitness: h.baseline_fitness,
        kind,
        outcome: h.outcome,
        changes: describe_changes(&h.changes),
        reports: crate::commands::views::reports(h),
        failed: h.failed,
        verdict: verdict_basis(h),
        breaches: h.breaches.iter().map(ToString::to_string).collect(),
        p_value: h.significance.map(|s| s.p_value),
        canary: h.canary,
        metrics: h.metrics.clone(),
        closed_at: h.closed_at,
    }
}

/// What a closed window's verdict rested on, in a few words.
fn verdict_basis(h: &HistoryEntry) -> String {
    let basis = judged_by(h);
    match h.canary {
        Some(c) => format!(
            "canary on {:.0}% against its control ({} vs {} samples{}): {}; {basis}",
            c.share * 100.0,
            c.canary_samples,
            c.control_samples,
            c.control_fitness
                .map_or_else(String::new, |f| format!(", control fitness {f:.4}")),
            if c.promoted {
                "promoted"
            } else {
                "not promoted"
            }
        ),
        None => basis,
    }
}

fn judged_by(h: &HistoryEntry) -> String {
    if !h.breaches.is_empty() {
        let rails: Vec<&str> = h.breaches.iter().map(|b| b.guardrail.as_str()).collect();
        return format!("guardrail breached: {}", rails.join("; "));
    }
    match h.significance {
        Some(s) => format!(
            "{} at p = {:.3}, effect {:+.2} ({} vs {} samples)",
            match s.finding {
                Finding::Better => "better",
                Finding::Worse => "worse",
                Finding::Inconclusive | Finding::Extend => "inconclusive after extension",
            },
            s.p_value,
            s.effect_size,
            s.candidate_samples,
            s.parent_samples
        ),
        None if h.baseline_fitness.is_none() => "baseline".to_owned(),
        None => "mean against the parent".to_owned(),
    }
}

fn decision_row(d: &DecisionRecord) -> DecisionRow {
    DecisionRow {
        timestamp: d.timestamp,
        mutation: d
            .mutation
            .as_ref()
            .map_or_else(|| d.mutation_id.clone(), |m| describe_changes(&m.changes)),
        risk: d.risk_assessment.overall_risk,
        recommendation: d.decision.as_str(),
        confidence: d.confidence,
        model: d.model_used.clone(),
        reasoning_excerpt: excerpt(&d.reasoning, REASONING_EXCERPT_CHARS),
        // Older records carry only the seed's float; round it once for display.
        cost_nano: d.cost_analysis.cost_nano_usd.unwrap_or_else(|| {
            (d.cost_analysis.cost_usd.max(0.0) * shared::cost::NANO_PER_USD as f64).round() as u64
        }),
    }
}

/// Whitespace collapsed, at most `max` characters, an ellipsis when cut.
pub fn excerpt(text: &str, max: usize) -> String {
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if collapsed.chars().count() <= max {
        return collapsed;
    }
    let mut cut: String = collapsed.chars().take(max).collect();
    cut.push('\u{2026}');
    cut
}

/// The budget mode over `[start, end]`. Every mode change is written together with a
/// `budget_mode` alert whose level names the new mode (cost-guard: info for normal, warning for
/// economy, critical for paused), so the alerts are the mode's history; the stored budget
/// state is the last word on the current mode.
fn budget_timeline(
    alerts: &[shared::domain::Alert],
    now: &BudgetState,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Vec<ModeChange> {
    let mode_of = |level: AlertLevel| match level {
        AlertLevel::Info => BudgetMode::Normal,
        AlertLevel::Warning => BudgetMode::Economy,
        AlertLevel::Critical => BudgetMode::Paused,
    };
    let changes: Vec<_> = alerts.iter().filter(|a| a.kind == "budget_mode").collect();
    let initial = changes
        .iter()
        .rev()
        .find(|a| a.at <= start)
        .map_or(BudgetMode::Normal, |a| mode_of(a.level));
    let mut timeline = vec![ModeChange {
        at: start,
        mode: initial,
        reason: "mode when the system's records begin".to_owned(),
    }];
    for alert in changes.iter().filter(|a| a.at > start && a.at <= end) {
        timeline.push(ModeChange {
            at: alert.at,
            mode: mode_of(alert.level),
            reason: alert.message.clone(),
        });
    }
    if let Some(changed_at) = now.changed_at.filter(|at| *at > start && *at <= end) {
        if timeline.last().is_some_and(|last| last.mode != now.mode) {
            timeline.push(ModeChange {
                at: changed_at,
                mode: now.mode,
                reason: now.reason.clone(),
            });
        }
    }
    timeline
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpt_collapses_whitespace_and_cuts_on_characters() {
        assert_eq!(excerpt("a \n b", 10), "a b");
        assert_eq!(excerpt("ééééé", 3), "ééé\u{2026}");
    }

    #[test]
    fn budget_timeline_follows_mode_alerts_within_the_span() {
        let t = |m: i64| {
            DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
                .expect("time")
                .with_timezone(&Utc)
                + chrono::Duration::minutes(m)
        };
        let alert = |m, level| shared::domain::Alert {
            id: format!("a{m}"),
            level,
            kind: "budget_mode".into(),
            message: "budget mode changed".into(),
            system_id: None,
            at: t(m),
        };
        let alerts = vec![
            alert(-5, AlertLevel::Warning),
            alert(10, AlertLevel::Critical),
            alert(500, AlertLevel::Info),
        ];
        let now = BudgetState {
            mode: BudgetMode::Normal,
            changed_at: Some(t(500)),
            reason: "x".into(),
        };
        let modes: Vec<_> = budget_timeline(&alerts, &now, t(0), t(100))
            .iter()
            .map(|c| c.mode)
            .collect();
        assert_eq!(modes, [BudgetMode::Economy, BudgetMode::Paused]);
    }
}
