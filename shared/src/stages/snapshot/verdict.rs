//! What a closing window's verdict rests on (docs/architecture.md, "Judging a generation"):
//! the guardrails first, whatever the score; then, for a window of two or more samples, a rank
//! test against the parent's samples; the mean rule for single-sample windows and parents with
//! no samples to compare.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};

use super::{event, reply};
use crate::domain::judging::{self, Breach, Finding, Significance};
use crate::domain::{
    Body, Evaluation, EvaluationOutcome, EventType, FitnessSample, Generation, Head, MetricName,
    Origin, SystemId,
};
use crate::stages::judge::judge;
use crate::stages::rollback::{self, FitnessSummary};
use crate::stages::{Deps, StageError, StageOutput, load_generation};
use crate::store::{SystemRecord, Write};

/// How many restorations back a parent's samples are looked for: a rollback commits the
/// parent's genes as a generation of its own, which is not measured again.
const RESTORED_HOPS: usize = 8;

/// What a window's close found.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Judged {
    pub outcome: EvaluationOutcome,
    pub breaches: Vec<Breach>,
    pub significance: Option<Significance>,
}

/// Close with a verdict, or measure as long again.
pub(super) enum Judgement {
    Close(Judged),
    Extend(Significance),
}

/// The window's samples, as the close reads them.
pub(super) struct Window<'a> {
    pub eval: &'a Evaluation,
    pub current: &'a Generation,
    pub samples: &'a [FitnessSample],
    pub summary: FitnessSummary,
    pub metrics: &'a BTreeMap<MetricName, f64>,
}

/// Judges a window: a breached guardrail rolls back; with two or more samples the rank test
/// decides (an inconclusive first window is extended once, a second keeps the parent); else
/// the mean rule.
pub(super) async fn judge_window(
    deps: &Deps,
    system: &SystemRecord,
    window: &Window<'_>,
) -> Result<Judgement, StageError> {
    let eval = window.eval;
    let settings = &system.settings;
    let rails = &settings.constraints.guardrails;
    let comparable = eval.parent.is_some() && eval.baseline_fitness.is_some();
    let by_significance = eval.samples_required >= 2 && window.summary.valid >= 2;
    let parent = match eval.parent {
        Some(p) if comparable && (by_significance || rails.iter().any(|g| g.is_relative())) => {
            parent_reports(deps, &system.system_id, p).await?
        }
        _ => Vec::new(),
    };
    let parent_metrics = parent
        .first()
        .map(|s| rollback::mean_metrics(&parent, s.generation, &s.checksum));
    let breaches = judging::breaches(rails, window.metrics, parent_metrics.as_ref());
    let significance = if by_significance && !parent.is_empty() {
        let scores = |samples: &[FitnessSample], g: &Generation| -> Vec<f64> {
            samples
                .iter()
                .filter(|s| s.is_valid_for(g.generation, &g.checksum))
                .filter_map(|s| s.score)
                .collect()
        };
        let parent_scores: Vec<f64> = parent.iter().filter_map(|s| s.score).collect();
        judge(
            &scores(window.samples, window.current),
            &parent_scores,
            f64::from(settings.confidence_percent) / 100.0,
            eval.extended,
        )
    } else {
        None
    };
    let outcome = match significance.map(|s| s.finding) {
        // A baseline that breaks a guardrail has nothing before it to restore: it is kept
        // (and the breach recorded and alerted).
        _ if !breaches.is_empty() && comparable => EvaluationOutcome::Rollback,
        Some(Finding::Extend) => {
            return Ok(Judgement::Extend(significance.expect("a finding")));
        }
        Some(Finding::Better) => EvaluationOutcome::Keep,
        // Still inconclusive after the extension: the parent is kept.
        Some(Finding::Worse | Finding::Inconclusive) => EvaluationOutcome::Rollback,
        None => rollback::verdict(
            window.summary,
            eval.samples_required,
            eval.baseline_fitness,
            deps.config.keep_tolerance,
        ),
    };
    Ok(Judgement::Close(Judged {
        outcome,
        breaches,
        significance,
    }))
}

/// The parent's valid reports: its own, or for a generation that restored another's genes,
/// those of the generation it restored.
async fn parent_reports(
    deps: &Deps,
    system_id: &SystemId,
    parent: u64,
) -> Result<Vec<FitnessSample>, StageError> {
    let mut at = parent;
    for _ in 0..RESTORED_HOPS {
        let generation = load_generation(deps, system_id, at).await?;
        let valid: Vec<FitnessSample> = deps
            .store
            .list_fitness(system_id, at)
            .await?
            .into_iter()
            .filter(|s| s.is_valid_for(at, &generation.checksum))
            .collect();
        if !valid.is_empty() {
            return Ok(valid);
        }
        match generation.origin {
            Origin::Rollback { restored, .. } if restored < at => at = restored,
            _ => break,
        }
    }
    Ok(Vec::new())
}

/// Extends an inconclusive window once: as long again, for as many samples again. The head's
/// move is conditioned on the sample count it read, like a report's count, so a report counted
/// meanwhile makes this close read again; the generation is announced again so the running
/// system measures the extra samples.
#[allow(clippy::too_many_arguments)]
pub(super) fn extend(
    env: &crate::domain::Envelope,
    mut system: SystemRecord,
    head: &Head,
    eval: &Evaluation,
    current: &Generation,
    significance: Significance,
    now: DateTime<Utc>,
    out: &mut StageOutput,
) {
    let deadline = now + Duration::seconds(i64::from(system.settings.evaluation_window_seconds));
    let samples_required = eval.samples_required.saturating_mul(2);
    let mut extended = head.clone();
    extended.updated_at = now;
    extended.evaluation = Some(Evaluation {
        deadline,
        samples_required,
        samples_seen: eval.samples_seen + 1,
        extended: true,
        ..eval.clone()
    });
    out.writes.push(Write::CountSample {
        expected_generation: head.generation,
        expected_samples: eval.samples_seen,
        head: extended,
    });
    let detail = format!(
        "inconclusive at p = {:.3} (effect size {:.2}, {} against {} samples, confidence {:.2}): \
         measuring until {deadline} for {samples_required} samples",
        significance.p_value,
        significance.effect_size,
        significance.candidate_samples,
        significance.parent_samples,
        significance.confidence,
    );
    out.summary = format!("generation {}'s window extended: {detail}", eval.generation);
    out.writes.push(Write::PutEvent {
        event: event(
            env,
            1,
            now,
            EventType::EvaluationExtended,
            eval.generation,
            None,
            None,
            Some(detail),
        ),
    });
    out.messages.push(reply(
        env,
        "snapshot",
        1,
        eval.generation,
        now,
        Body::DnaUpdated {
            generation: current.generation,
            genes: serde_json::to_value(&current.genes).unwrap_or_default(),
            checksum: current.checksum.clone(),
        },
    ));
    system.evaluation_deadline = Some(deadline);
    out.writes.push(Write::PutSystem { system });
}
