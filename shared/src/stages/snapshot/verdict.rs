//! What a closing window's verdict rests on (docs/architecture.md, "Judging a generation"):
//! the guardrails first, whatever the score; then, for a window of two or more samples, a rank
//! test against the parent's samples; the mean rule for single-sample windows and parents with
//! no samples to compare.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};

use super::{event, reply};
use crate::domain::judging::{self, Breach, Finding, Significance};
use crate::domain::{
    Body, CanaryVerdict, CanaryWindow, Cohort, Evaluation, EvaluationOutcome, EventType,
    FitnessSample, Generation, Head, MetricName, Origin, SystemId,
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
    /// The fitness the candidate was held to: its parent's, or its control's over the window.
    pub baseline: Option<f64>,
    pub canary: Option<CanaryVerdict>,
}

/// Close with a verdict, measure as long again, or promote a canary to every instance.
pub(super) enum Judgement {
    Close(Judged),
    Extend(Significance),
    Promote(Judged),
}

/// The window's samples, as the close reads them.
pub(super) struct Window<'a> {
    pub eval: &'a Evaluation,
    pub current: &'a Generation,
    pub samples: &'a [FitnessSample],
    pub summary: FitnessSummary,
    pub metrics: &'a BTreeMap<MetricName, f64>,
    /// A control report being recorded with this close, not in the store yet.
    pub pending_control: Option<&'a FitnessSample>,
}

/// Judges a window: against the parent's samples, or a canary against its concurrent control,
/// or a promoted canary's bake against the guardrails.
pub(super) async fn judge_window(
    deps: &Deps,
    system: &SystemRecord,
    window: &Window<'_>,
) -> Result<Judgement, StageError> {
    let eval = window.eval;
    match &eval.canary {
        Some(canary) if canary.beside_control() => {
            let mut control =
                control_samples(deps, &system.system_id, canary, eval.started_at).await?;
            if let Some(pending) = window.pending_control {
                if control.iter().all(|s| s.id != pending.id) {
                    control.push(pending.clone());
                }
            }
            let scores: Vec<f64> = control.iter().filter_map(|s| s.score).collect();
            #[allow(clippy::cast_precision_loss)]
            let baseline =
                (!scores.is_empty()).then(|| scores.iter().sum::<f64>() / scores.len() as f64);
            let judged = compare(deps, system, window, &control, baseline);
            let canary_verdict = |promoted| CanaryVerdict {
                share: canary.rollout.share,
                canary_samples: window.summary.valid,
                control_samples: u32::try_from(control.len()).unwrap_or(u32::MAX),
                control_fitness: baseline,
                promoted,
            };
            Ok(match judged {
                Judgement::Close(mut j) if j.outcome == EvaluationOutcome::Keep => {
                    j.canary = Some(canary_verdict(true));
                    Judgement::Promote(j)
                }
                Judgement::Close(mut j) => {
                    // No control to compare with: a canary is never judged against the past.
                    if baseline.is_none() {
                        j.outcome = EvaluationOutcome::Inconclusive;
                    }
                    j.canary = Some(canary_verdict(false));
                    Judgement::Close(j)
                }
                other => other,
            })
        }
        Some(canary) => Ok(Judgement::Close(
            judge_bake(deps, system, window, canary).await?,
        )),
        None => {
            let rails = &system.settings.constraints.guardrails;
            let wanted = eval.parent.is_some()
                && eval.baseline_fitness.is_some()
                && (by_significance(window) || rails.iter().any(judging::Guardrail::is_relative));
            let parent = match eval.parent {
                Some(p) if wanted => parent_reports(deps, &system.system_id, p).await?,
                _ => Vec::new(),
            };
            Ok(compare(
                deps,
                system,
                window,
                &parent,
                eval.baseline_fitness,
            ))
        }
    }
}

fn by_significance(window: &Window<'_>) -> bool {
    window.eval.samples_required >= 2 && window.summary.valid >= 2
}

/// The verdict against `reference` (the parent's samples, or the control's) with `baseline`
/// its fitness: a breached guardrail rolls back; with two or more samples the rank test
/// decides (an inconclusive first window is extended once, a second keeps the parent); else
/// the mean rule.
fn compare(
    deps: &Deps,
    system: &SystemRecord,
    window: &Window<'_>,
    reference: &[FitnessSample],
    baseline: Option<f64>,
) -> Judgement {
    let eval = window.eval;
    let settings = &system.settings;
    let comparable = eval.parent.is_some() && baseline.is_some();
    let reference_metrics = reference
        .first()
        .map(|s| rollback::mean_metrics(reference, s.generation, &s.checksum));
    let breaches = judging::breaches(
        &settings.constraints.guardrails,
        window.metrics,
        reference_metrics.as_ref(),
    );
    let significance = if by_significance(window) && !reference.is_empty() {
        let candidate: Vec<f64> = window
            .samples
            .iter()
            .filter(|s| s.is_valid_for(window.current.generation, &window.current.checksum))
            .filter_map(|s| s.score)
            .collect();
        let reference: Vec<f64> = reference.iter().filter_map(|s| s.score).collect();
        judge(
            &candidate,
            &reference,
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
            return Judgement::Extend(significance.expect("a finding"));
        }
        Some(Finding::Better) => EvaluationOutcome::Keep,
        // Still inconclusive after the extension: the parent is kept.
        Some(Finding::Worse | Finding::Inconclusive) => EvaluationOutcome::Rollback,
        None => rollback::verdict(
            window.summary,
            eval.samples_required,
            baseline,
            deps.config.keep_tolerance,
        ),
    };
    Judgement::Close(Judged {
        outcome,
        breaches,
        significance,
        baseline,
        canary: None,
    })
}

/// The end of a promoted canary's bake: the reports heard since the promotion, from every
/// instance, are held to the guardrails (relative ones against the control's metrics); the
/// comparison that promoted it is what the history keeps.
async fn judge_bake(
    deps: &Deps,
    system: &SystemRecord,
    window: &Window<'_>,
    canary: &CanaryWindow,
) -> Result<Judged, StageError> {
    let eval = window.eval;
    let since = canary.promoted_at.unwrap_or(eval.started_at);
    let baked: Vec<FitnessSample> = window
        .samples
        .iter()
        .filter(|s| s.received_at >= since && s.cohort.is_none())
        .cloned()
        .collect();
    let metrics = rollback::mean_metrics(&baked, eval.generation, &window.current.checksum);
    let control = control_samples(deps, &system.system_id, canary, eval.started_at).await?;
    let control_metrics = control
        .first()
        .map(|s| rollback::mean_metrics(&control, s.generation, &s.checksum));
    let breaches = judging::breaches(
        &system.settings.constraints.guardrails,
        &metrics,
        control_metrics.as_ref(),
    );
    let mut verdict = canary.verdict;
    if let Some(v) = verdict.as_mut() {
        v.promoted = breaches.is_empty();
    }
    Ok(Judged {
        outcome: if breaches.is_empty() {
            EvaluationOutcome::Keep
        } else {
            EvaluationOutcome::Rollback
        },
        breaches,
        significance: canary.significance,
        baseline: verdict.and_then(|v| v.control_fitness),
        canary: verdict,
    })
}

/// A canary's valid control reports since `since`: the parent generation's, from the control
/// cohort, with the parent's checksum.
pub(super) async fn control_samples(
    deps: &Deps,
    system_id: &SystemId,
    canary: &CanaryWindow,
    since: DateTime<Utc>,
) -> Result<Vec<FitnessSample>, StageError> {
    let rollout = &canary.rollout;
    Ok(deps
        .store
        .list_fitness(system_id, rollout.control_generation)
        .await?
        .into_iter()
        .filter(|s| {
            s.cohort == Some(Cohort::Control)
                && s.received_at >= since
                && s.is_valid_for(rollout.control_generation, &rollout.control_checksum)
        })
        .collect())
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
    system: SystemRecord,
    head: &Head,
    eval: &Evaluation,
    current: &Generation,
    significance: Significance,
    now: DateTime<Utc>,
    out: &mut StageOutput,
) {
    let deadline = now + Duration::seconds(i64::from(system.settings.evaluation_window_seconds));
    let samples_required = eval.samples_required.saturating_mul(2);
    let extended = Evaluation {
        deadline,
        samples_required,
        extended: true,
        ..eval.clone()
    };
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
    let reopened = Reopened {
        window: extended,
        event: EventType::EvaluationExtended,
        detail,
    };
    reopen(env, system, head, eval, current, reopened, now, out);
}

/// Promotes a canary that beat its control to every instance: the generation is announced
/// again without a canary, and the window stays open for the bake, whose end holds every
/// instance's reports to the guardrails. Conditioned on the sample count like `extend`.
#[allow(clippy::too_many_arguments)]
pub(super) fn promote(
    env: &crate::domain::Envelope,
    system: SystemRecord,
    head: &Head,
    eval: &Evaluation,
    current: &Generation,
    judged: &Judged,
    now: DateTime<Utc>,
    out: &mut StageOutput,
) {
    let Some(canary) = eval.canary.clone() else {
        return;
    };
    let deadline = now + Duration::seconds(i64::from(canary.bake_seconds));
    let share = canary.rollout.share;
    let baking = Evaluation {
        deadline,
        canary: Some(Box::new(CanaryWindow {
            promoted_at: Some(now),
            verdict: judged.canary,
            significance: judged.significance,
            ..*canary
        })),
        ..eval.clone()
    };
    let against = judged.significance.map_or_else(
        || "by the mean".to_owned(),
        |s| format!("at p = {:.3}, effect size {:.2}", s.p_value, s.effect_size),
    );
    let detail = format!(
        "the canary on {:.0}% of instances beat its concurrent control ({} against {} samples, \
         control fitness {}, {against}): promoted to every instance, baking until {deadline}",
        share * 100.0,
        judged.canary.map_or(0, |c| c.canary_samples),
        judged.canary.map_or(0, |c| c.control_samples),
        judged
            .baseline
            .map_or_else(|| "unmeasured".to_owned(), |b| format!("{b:.4}")),
    );
    out.summary = format!("generation {} promoted: {detail}", eval.generation);
    let reopened = Reopened {
        window: baking,
        event: EventType::CanaryPromoted,
        detail,
    };
    reopen(env, system, head, eval, current, reopened, now, out);
}

/// The window a close keeps open, and the event that says why.
struct Reopened {
    window: Evaluation,
    event: EventType,
    detail: String,
}

/// Keeps the window open as `reopened.window`, conditioned on the sample count read like a
/// report's count (so a report counted meanwhile makes this close read again), announces the
/// generation again (with its canary while one runs beside its control, without once promoted)
/// so the running system measures afresh, and gives the registry the new deadline.
#[allow(clippy::too_many_arguments)]
fn reopen(
    env: &crate::domain::Envelope,
    mut system: SystemRecord,
    head: &Head,
    eval: &Evaluation,
    current: &Generation,
    reopened: Reopened,
    now: DateTime<Utc>,
    out: &mut StageOutput,
) {
    let Reopened {
        mut window,
        event: event_type,
        detail,
    } = reopened;
    window.samples_seen = eval.samples_seen + 1;
    let deadline = window.deadline;
    let canary = window
        .canary
        .as_ref()
        .filter(|c| c.beside_control())
        .map(|c| c.rollout.clone());
    out.writes.push(Write::CountSample {
        expected_generation: head.generation,
        expected_samples: eval.samples_seen,
        head: Head {
            updated_at: now,
            evaluation: Some(window),
            ..head.clone()
        },
    });
    out.writes.push(Write::PutEvent {
        event: event(
            env,
            1,
            now,
            event_type,
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
            canary,
        },
    ));
    system.evaluation_deadline = Some(deadline);
    out.writes.push(Write::PutSystem { system });
}
