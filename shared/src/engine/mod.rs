//! The local engine: a deterministic stand-in for every LLM role.
//!
//! It answers whenever Bedrock is unavailable, throttled, too expensive under the budget mode or
//! not configured, so the pipeline never stops for want of a model (seed Property 6). Answers
//! are free and immediate, and depend only on the engine's seed and the request: a redelivered
//! request gets the same answer, which keeps the stages idempotent. It never approves a mutation
//! above the risk ceiling.

mod replay;
mod strategy;

use std::collections::BTreeMap;

use async_trait::async_trait;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

use crate::domain::{
    ConflictKind, DecisionResult, EvolutionAnalysis, GeneChange, Recommendation, ResolutionAction,
    ResolutionStrategy, RiskAssessment, Role, Severity, apply_mutation, describe_changes,
};
use crate::llm::{
    AnalyzeRequest, DecideRequest, LanguageModel, LlmAnswer, LlmError, ResolveRequest,
    StrategizeRequest,
};

use replay::{Replay, replay};
use strategy::round_for_text;

/// The model id every local answer carries, in ledgers, audit records and events.
pub const LOCAL_MODEL_ID: &str = "local:heuristic-v1";

/// How long a `RetryLater` resolution waits for a rollback streak to cool down.
const RETRY_AFTER_SECONDS: u32 = 600;

/// The deterministic heuristic engine for the four roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalEngine {
    seed: u64,
}

impl LocalEngine {
    pub fn new(seed: u64) -> Self {
        Self { seed }
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The random stream of one request: a hash of the seed, the envelope and the role, so a
    /// redelivered envelope replays exactly the same choices.
    fn rng(self, envelope_id: &str, role: Role) -> ChaCha8Rng {
        let mut hasher = Sha256::new();
        hasher.update(self.seed.to_be_bytes());
        hasher.update((envelope_id.len() as u64).to_be_bytes());
        hasher.update(envelope_id.as_bytes());
        hasher.update(role.as_str().as_bytes());
        ChaCha8Rng::from_seed(hasher.finalize().into())
    }

    /// The analyze role, without the port's envelope.
    pub fn analysis(&self, req: &AnalyzeRequest) -> EvolutionAnalysis {
        let dna = &req.dna;
        let replay = replay(&dna.schema, &dna.genes, &req.history);
        let trend = trend(&replay.kept_fitness);
        let fitness = dna
            .stable_fitness
            .map_or_else(|| "not measured yet".to_owned(), round_for_text);

        let mut strengths = Vec::new();
        let mut weaknesses = Vec::new();
        let mut opportunities = Vec::new();
        for (gene, stats) in &replay.stats {
            if stats.improved > 0 {
                strengths.push(format!(
                    "{gene}: {} kept improvement(s), total +{}",
                    stats.improved,
                    round_for_text(stats.gain)
                ));
            }
            if stats.worse + stats.failed > 0 {
                weaknesses.push(format!(
                    "{gene}: {} change(s) rolled back, {} failed the workload",
                    stats.worse, stats.failed
                ));
            }
            let frozen = dna.schema.get(gene).is_some_and(|d| d.frozen);
            if stats.touched() == 0 && !frozen {
                opportunities.push(format!("{gene} has not been explored yet"));
            }
        }
        for (gene, track) in &replay.tracks {
            if track.confirmed {
                opportunities.push(format!(
                    "{gene} keeps improving {}: continue with a step of {}",
                    if track.dir > 0.0 {
                        "upward"
                    } else {
                        "downward"
                    },
                    round_for_text(track.step)
                ));
            }
        }
        let mut threats: Vec<String> = replay
            .consistent_failures(&dna.genes)
            .iter()
            .map(|f| format!("the workload failed at {}", f.describe()))
            .collect();
        let rate = replay.rollback_rate();
        if replay.evaluated > 0 && rate >= 0.5 {
            threats.push(format!(
                "{:.0}% of recent changes were rolled back: the search is near an optimum or \
                 a boundary",
                rate * 100.0
            ));
        }
        if strengths.is_empty() {
            strengths.push("no kept improvement in the window yet".to_owned());
        }

        let evidence = f64::from(replay.evaluated);
        let confidence = (0.3 + 0.6 * (1.0 - (-evidence / 12.0).exp())).clamp(0.0, 1.0);
        EvolutionAnalysis {
            current_state_assessment: format!(
                "generation {}, fitness {fitness}, trend {trend}; {} evaluated change(s) in the \
                 window, {:.0}% rolled back",
                dna.generation,
                replay.evaluated,
                rate * 100.0
            ),
            strengths,
            weaknesses,
            opportunities,
            threats,
            recommended_focus_areas: focus_areas(req, &replay),
            confidence_score: confidence,
            reasoning: format!(
                "Replayed {} history entries: each gene's last kept or rolled-back move gives \
                 its next direction and step size; genes that improved recently come first, \
                 then untouched genes, then genes that missed.",
                req.history.len()
            ),
        }
    }

    /// The strategize role, without the port's envelope.
    pub fn strategy(&self, req: &StrategizeRequest) -> crate::domain::MutationStrategy {
        let mut rng = self.rng(&req.ctx.envelope_id, Role::Strategize);
        strategy::strategy(req, &mut rng)
    }

    /// The decide role, without the port's envelope.
    pub fn decision(&self, req: &DecideRequest) -> DecisionResult {
        let risk = if req.local_risk.is_finite() {
            req.local_risk.clamp(0.0, 1.0)
        } else {
            1.0
        };
        let assessment = |operational: f64| RiskAssessment {
            overall_risk: risk,
            technical_risk: clamp01(risk * 0.9 + 0.1 * step_fraction(req)),
            business_risk: clamp01(risk * 0.8),
            operational_risk: clamp01(operational),
        };
        let replay = replay(&req.dna.schema, &req.dna.genes, &req.history);
        let operational = clamp01(0.5 * risk + 0.5 * replay.rollback_rate());
        let changes = describe_changes(&req.mutation.changes);
        let reject = |reasoning: String, drawbacks: Vec<String>| DecisionResult {
            recommendation: Recommendation::Reject,
            confidence: 0.9,
            risk_assessment: assessment(operational),
            benefits: Vec::new(),
            drawbacks,
            mitigation_strategies: Vec::new(),
            reasoning,
            estimated_impact: BTreeMap::new(),
        };

        // Both must be numbers, and the risk within the ceiling: anything else is a refusal.
        let within_ceiling = req.local_risk.is_finite()
            && req.risk_ceiling.is_finite()
            && req.local_risk <= req.risk_ceiling;
        if !within_ceiling {
            return reject(
                format!(
                    "risk {} is above the ceiling {}: only a human may take this change",
                    req.local_risk, req.risk_ceiling
                ),
                vec!["above the risk ceiling".to_owned()],
            );
        }
        let next = match apply_mutation(&req.dna.schema, &req.dna.genes, &req.mutation) {
            Ok(next) => next,
            Err(e) => {
                return reject(
                    format!("the mutation does not fit the gene schema: {e}"),
                    vec![e.to_string()],
                );
            }
        };
        if let Some(failure) = replay
            .consistent_failures(&req.dna.genes)
            .into_iter()
            .find(|f| f.forbids(&next))
        {
            return reject(
                format!(
                    "{changes} reaches {}, where the workload failed in generation {}",
                    failure.describe(),
                    failure.generation
                ),
                vec!["retries a value that made the workload fail".to_owned()],
            );
        }
        let changes_coerced: Vec<GeneChange> = req
            .mutation
            .changes
            .iter()
            .map(|c| GeneChange {
                gene: c.gene.clone(),
                value: req
                    .dna
                    .schema
                    .get(&c.gene)
                    .map_or_else(|| c.value.clone(), |d| d.spec.coerce(&c.value)),
            })
            .collect();
        if let Some(refused) = replay.repeats_refused(&req.dna.genes, &changes_coerced) {
            return reject(
                format!(
                    "{changes} was tried from these very genes in generation {} and rolled back",
                    refused.generation
                ),
                vec!["repeats a change measured worse".to_owned()],
            );
        }

        let predicted = req.mutation.predicted_impact;
        let mut estimated_impact = BTreeMap::new();
        if predicted.is_finite() {
            estimated_impact.insert("fitness".to_owned(), predicted);
        }
        DecisionResult {
            recommendation: Recommendation::Approve,
            confidence: clamp01(0.55 + 0.35 * (1.0 - risk)),
            risk_assessment: assessment(operational),
            benefits: vec![format!("tests {changes} within the schema's limits")],
            drawbacks: if risk > 0.5 {
                vec![format!("local risk {} is elevated", round_for_text(risk))]
            } else {
                Vec::new()
            },
            mitigation_strategies: vec![
                "evaluated alone; rolled back automatically if fitness drops".to_owned(),
            ],
            reasoning: format!(
                "{changes} validates against the schema, stays within each max_step, does not \
                 touch a frozen gene or a value that failed, and its risk {} is within the \
                 ceiling {}",
                round_for_text(risk),
                req.risk_ceiling
            ),
            estimated_impact,
        }
    }

    /// The resolve role, without the port's envelope: a fixed mapping from conflict kind to
    /// action, because these actions change what runs and must be predictable.
    pub fn resolution(&self, req: &ResolveRequest) -> ResolutionStrategy {
        let conflict = &req.conflict;
        match conflict.kind {
            ConflictKind::RollbackStreak if conflict.severity >= Severity::High => {
                ResolutionStrategy {
                    action: ResolutionAction::Pause,
                    retry_after_seconds: 0,
                    immediate_actions: vec![
                        "pause evolution of this system".to_owned(),
                        "keep the last stable generation running".to_owned(),
                    ],
                    root_cause_analysis: format!(
                        "consecutive rollbacks at severity {:?}: the search keeps breaking the \
                         system ({})",
                        conflict.severity, conflict.description
                    ),
                    prevention_measures: vec![
                        "review gene bounds and max_step".to_owned(),
                        "check that the fitness signal is not noisy".to_owned(),
                    ],
                    risk_assessment: 0.2,
                    success_metrics: vec!["no rollback after resuming".to_owned()],
                    reasoning: "a long rollback streak at high severity: stop changing the \
                                system until an operator has looked"
                        .to_owned(),
                }
            }
            ConflictKind::RollbackStreak => ResolutionStrategy {
                action: ResolutionAction::RetryLater,
                retry_after_seconds: RETRY_AFTER_SECONDS,
                immediate_actions: vec!["wait before the next cycle".to_owned()],
                root_cause_analysis: format!(
                    "consecutive rollbacks at severity {:?}: probably near an optimum or a \
                     boundary ({})",
                    conflict.severity, conflict.description
                ),
                prevention_measures: vec!["smaller steps after each rollback".to_owned()],
                risk_assessment: 0.3,
                success_metrics: vec!["a kept generation after the pause".to_owned()],
                reasoning: "a rollback streak below high severity: the last stable generation \
                            is running; retry later with fresh measurements"
                    .to_owned(),
            },
            ConflictKind::ChecksumMismatch => ResolutionStrategy {
                action: ResolutionAction::RollbackToLastStable,
                retry_after_seconds: 0,
                immediate_actions: vec![
                    "roll back to the last stable generation".to_owned(),
                    "republish its DNA so subscribers converge".to_owned(),
                ],
                root_cause_analysis: format!(
                    "fitness reports carry another checksum: the system does not run the DNA \
                     on record ({})",
                    conflict.description
                ),
                prevention_measures: vec![
                    "subscribers verify the checksum before applying a generation".to_owned(),
                ],
                risk_assessment: 0.3,
                success_metrics: vec!["reports carry the head's checksum".to_owned()],
                reasoning: "measurements of unknown DNA cannot be trusted; return to a known \
                            state"
                    .to_owned(),
            },
            ConflictKind::BaselineUnmeasured => ResolutionStrategy {
                action: ResolutionAction::Escalate,
                retry_after_seconds: 0,
                immediate_actions: vec!["notify an operator".to_owned()],
                root_cause_analysis: format!(
                    "no valid fitness report for the baseline ({})",
                    conflict.description
                ),
                prevention_measures: vec![
                    "check that the evaluator runs and reports for this system".to_owned(),
                ],
                risk_assessment: 0.1,
                success_metrics: vec!["a measured baseline".to_owned()],
                reasoning: "without a baseline no change can be judged; this needs a human"
                    .to_owned(),
            },
        }
    }
}

#[async_trait]
impl LanguageModel for LocalEngine {
    async fn analyze(
        &self,
        req: &AnalyzeRequest,
    ) -> Result<LlmAnswer<EvolutionAnalysis>, LlmError> {
        Ok(LlmAnswer::local(self.analysis(req), LOCAL_MODEL_ID))
    }

    async fn strategize(
        &self,
        req: &StrategizeRequest,
    ) -> Result<LlmAnswer<crate::domain::MutationStrategy>, LlmError> {
        Ok(LlmAnswer::local(self.strategy(req), LOCAL_MODEL_ID))
    }

    async fn decide(&self, req: &DecideRequest) -> Result<LlmAnswer<DecisionResult>, LlmError> {
        Ok(LlmAnswer::local(self.decision(req), LOCAL_MODEL_ID))
    }

    async fn resolve_conflict(
        &self,
        req: &ResolveRequest,
    ) -> Result<LlmAnswer<ResolutionStrategy>, LlmError> {
        Ok(LlmAnswer::local(self.resolution(req), LOCAL_MODEL_ID))
    }
}

fn clamp01(x: f64) -> f64 {
    if x.is_finite() {
        x.clamp(0.0, 1.0)
    } else {
        1.0
    }
}

/// The largest change of the mutation as a fraction of its gene's max_step (or range).
fn step_fraction(req: &DecideRequest) -> f64 {
    req.mutation
        .changes
        .iter()
        .filter_map(|c| {
            let spec = &req.dna.schema.get(&c.gene)?.spec;
            let from = req.dna.genes.get(&c.gene)?.as_f64()?;
            let to = spec.coerce(&c.value).as_f64()?;
            let (lo, hi) = spec.range()?;
            let scale = spec.max_step().unwrap_or(hi - lo);
            (scale > 0.0).then(|| ((to - from).abs() / scale).min(1.0))
        })
        .fold(0.0, f64::max)
}

/// "improving", "flat" or "declining", from the kept fitness values (recent third against the
/// first third).
fn trend(kept: &[f64]) -> &'static str {
    if kept.len() < 2 {
        return "unknown";
    }
    let third = (kept.len() / 3).max(1);
    let early = kept[..third].iter().sum::<f64>() / third as f64;
    let late = kept[kept.len() - third..].iter().sum::<f64>() / third as f64;
    let scale = early.abs().max(late.abs()).max(1e-9);
    if (late - early) / scale > 1e-6 {
        "improving"
    } else if (early - late) / scale > 1e-6 {
        "declining"
    } else {
        "flat"
    }
}

/// Every non-frozen gene, most promising first: recent improvers, untouched genes, then the
/// rest by how often they helped.
fn focus_areas(req: &AnalyzeRequest, replay: &Replay) -> Vec<String> {
    let mut scored: Vec<(f64, String)> = req
        .dna
        .schema
        .iter()
        .filter(|(_, def)| !def.frozen)
        .map(|(gene, def)| {
            let stats = replay.stats.get(gene).cloned().unwrap_or_default();
            let confirmed = replay.tracks.get(gene).is_some_and(|t| t.confirmed);
            let numeric = def.spec.range().is_some();
            let score = if confirmed {
                5.0 + stats.gain.max(0.0)
            } else if stats.touched() == 0 {
                if numeric { 2.0 } else { 0.5 }
            } else {
                let touched = f64::from(stats.touched());
                (1.0 + f64::from(stats.improved) / touched
                    - 0.15 * f64::from(stats.worse + stats.failed))
                .max(0.1)
            };
            (score, gene.to_string())
        })
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    scored.into_iter().map(|(_, gene)| gene).collect()
}

#[cfg(test)]
mod tests;
