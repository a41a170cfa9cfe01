//! The local strategist: turns the replayed history into an ordered plan of gene changes.

mod moves;

use std::collections::BTreeMap;

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use self::moves::{forbidden, halve, pattern_move, single_move, value_of};
use super::replay::{Failure, GeneStats, NumericTrack, Replay, prior_direction, replay};
use crate::domain::risk;
use crate::domain::{
    GeneChange, GeneDef, GeneName, GeneSchema, GeneSpec, GeneValue, Genes, Mutation,
    MutationStrategy, StrategicMutation, apply_mutation, derive_id,
};
use crate::llm::StrategizeRequest;

/// The highest local risk a planned step may carry. The pipeline refuses anything above its risk
/// ceiling (0.8 by default) and the strategist is not told the ceiling, so steps are shaped to
/// stay a margin below it: a refused step costs a cycle and teaches nothing.
pub(crate) const RISK_BUDGET: f64 = 0.75;
/// Fractions of a step tried, largest first, when a single-gene move is too risky at full length.
const SHRINK_LADDER: [f64; 5] = [1.0, 0.7, 0.5, 0.35, 0.25];
/// Confirmed genes less steep than this fraction of the steepest sit out the plan.
const FLAT_RATIO: f64 = 0.3;

/// Chance per plan of trying an untried value of a bool or choice gene.
const FLIP_UNTRIED: f64 = 0.3;
/// Chance per plan of trying again a value that was measured worse before (the genes around it
/// may have moved since); values that made the workload fail are never tried again.
const FLIP_RETRY: f64 = 0.08;

/// A step before ids are assigned.
#[derive(Debug, Clone)]
struct Candidate {
    changes: Vec<GeneChange>,
    contingency: Option<Vec<GeneChange>>,
    promise: f64,
    focus: usize,
    rationale: String,
    contingency_rationale: String,
    predicted_impact: f64,
}

/// A confirmed gene with its track and its last measured slope.
type Confirmed<'a> = (&'a GeneName, &'a NumericTrack, f64);

/// Plans the next generations by adaptive pattern search over the genes.
///
/// Method: every numeric gene carries a step size and a direction, recovered by replaying the
/// history (Rprop in spirit): an untouched gene starts at half its `max_step` (a range/8 without
/// one), moving toward the middle of its range; a kept change that improved fitness grows that
/// gene's step x1.5 (capped at `max_step`) and keeps its direction; a rolled-back change halves
/// it and reverses the direction; a change whose workload failed does the same and also marks
/// the failed value as a barrier that later steps never reach again (they bisect toward it, down
/// to a 1/64 of `max_step`). Genes whose last kept change improved fitness have a confirmed
/// direction; the plan opens with Hooke-Jeeves style pattern moves that repeat their combined
/// displacement at the grown step sizes, which follows interacting genes and curved valleys
/// (Rosenbrock) far faster than one gene at a time. Two refinements shape those joint moves:
/// - Gauss-Southwell: confirmed genes are ranked by their last measured improvement per step,
///   and genes under a third as steep as the steepest sit the plan out until the steep ones
///   flatten;
/// - the risk budget: the pipeline's local risk grows with every gene a mutation touches, so the
///   confirmed genes are cut into groups, each the largest that fits [`RISK_BUDGET`] at (nearly)
///   full length.
///
/// A pattern move's contingency is the same move at half length (the way back is already known
/// to be worse); a joint move that is rolled back halves its genes' steps without reversing them,
/// and their directions must be confirmed again by single-gene exploratory steps, each paired
/// with a contingency that moves the same gene the opposite way. A gene narrowed to its smallest
/// step whose last try missed waits until another gene improves. Bools and choices are flipped
/// occasionally (seeded by the request), preferring values not tried yet. Steps are ordered by
/// promise: pattern moves, confirmed genes, untouched genes, genes that recently missed, genes
/// with no visible effect, then discrete flips. Each gene appears in at most one primary step,
/// so every step stays valid whether or not the earlier ones are kept, and no step repeats a
/// change already measured worse from the same genes.
pub(crate) fn strategy(req: &StrategizeRequest, rng: &mut ChaCha8Rng) -> MutationStrategy {
    let replay = replay(&req.dna.schema, &req.dna.genes, &req.history);
    let planner = Planner::new(req, &replay);
    // Each gene appears in at most one primary step: the phases skip the genes already used.
    let mut used: Vec<GeneName> = Vec::new();
    let mut candidates = planner.pattern_moves(&mut used);
    candidates.extend(planner.single_steps(&mut used));
    candidates.extend(planner.flips(&used, rng));
    candidates.sort_by(|a, b| {
        b.promise
            .total_cmp(&a.promise)
            .then(a.focus.cmp(&b.focus))
            .then_with(|| a.changes[0].gene.cmp(&b.changes[0].gene))
    });
    assemble(req, planner.schema, planner.genes, candidates, &replay)
}

/// What every candidate step of one plan is weighed against: the genes now, what the replayed
/// history taught, and the failed regions that stay off limits.
struct Planner<'a> {
    req: &'a StrategizeRequest,
    schema: &'a GeneSchema,
    genes: &'a Genes,
    replay: &'a Replay,
    failures: Vec<&'a Failure>,
    recent_gain: f64,
}

impl<'a> Planner<'a> {
    fn new(req: &'a StrategizeRequest, replay: &'a Replay) -> Self {
        let genes = &req.dna.genes;
        Self {
            req,
            schema: &req.dna.schema,
            genes,
            replay,
            failures: replay.consistent_failures(genes),
            recent_gain: replay.recent_gain().max(0.0),
        }
    }

    /// The gene's rank among the analysis's recommended focus areas (last when not named).
    fn focus(&self, gene: &GeneName) -> usize {
        self.req
            .analysis
            .recommended_focus_areas
            .iter()
            .position(|f| f == gene.as_str())
            .unwrap_or(usize::MAX)
    }

    fn risk_of(&self, changes: &[GeneChange]) -> f64 {
        let mutation = as_mutation("", changes);
        risk::assess(self.schema, self.genes, &mutation, &self.req.history).overall_risk
    }

    fn stats(&self, gene: &GeneName) -> GeneStats {
        self.replay.stats.get(gene).cloned().unwrap_or_default()
    }

    /// The movable genes whose direction the history confirmed, steepest first (the
    /// Gauss-Southwell rule), split into those steep enough to move now and those far flatter
    /// than the steepest, which wait for a later plan when the steep ones have flattened out.
    fn ranked_confirmed(&self) -> (Vec<Confirmed<'a>>, Vec<Confirmed<'a>>) {
        let replay = self.replay;
        let mut confirmed: Vec<Confirmed<'a>> = replay
            .tracks
            .iter()
            .filter(|(gene, track)| track.confirmed && movable(self.schema, gene))
            .map(|(gene, track)| {
                let slope = replay.stats.get(gene).map_or(0.0, |s| s.slope);
                (gene, track, slope)
            })
            .collect();
        confirmed.sort_by(|a, b| b.2.total_cmp(&a.2).then_with(|| a.0.cmp(b.0)));
        let steepest = confirmed.first().map_or(0.0, |c| c.2);
        confirmed
            .into_iter()
            .partition(|c| c.2 >= FLAT_RATIO * steepest)
    }

    /// Pattern moves over the genes whose direction the history confirmed. The risk of a
    /// mutation grows with every gene it touches, so the confirmed genes are moved in groups:
    /// each as large as the risk budget allows at (nearly) full length.
    fn pattern_moves(&self, used: &mut Vec<GeneName>) -> Vec<Candidate> {
        let (mut remaining, waiting) = self.ranked_confirmed();
        used.extend(waiting.iter().map(|(gene, _, _)| (*gene).clone()));
        let risk_of = |changes: &[GeneChange]| self.risk_of(changes);
        let mut candidates = Vec::new();
        while remaining.len() >= 2 {
            let Some(changes) = pattern_move(
                self.schema,
                self.genes,
                &remaining,
                &self.failures,
                &risk_of,
            ) else {
                break;
            };
            remaining.retain(|(gene, _, _)| !changes.iter().any(|c| &c.gene == *gene));
            used.extend(changes.iter().map(|c| c.gene.clone()));
            candidates.push(self.pattern_candidate(changes));
        }
        candidates
    }

    fn pattern_candidate(&self, changes: Vec<GeneChange>) -> Candidate {
        let half = halve(self.schema, self.genes, &changes).filter(|h| {
            !forbidden(self.genes, h, &self.failures) && self.risk_of(h) <= RISK_BUDGET
        });
        let gain: f64 = changes
            .iter()
            .filter_map(|c| self.replay.stats.get(&c.gene))
            .map(|s| s.gain.max(0.0))
            .sum();
        Candidate {
            rationale: format!(
                "pattern move: repeat the last successful displacement of {} genes at grown \
                 step sizes ({})",
                changes.len(),
                describe_moves(self.genes, &changes)
            ),
            contingency_rationale: "the pattern move at half length".to_owned(),
            contingency: half,
            promise: 10.0 + gain,
            focus: 0,
            predicted_impact: 0.5 * self.recent_gain,
            changes,
        }
    }

    /// Single-gene steps for every numeric gene no pattern move took.
    fn single_steps(&self, used: &mut Vec<GeneName>) -> Vec<Candidate> {
        let mut candidates = Vec::new();
        for (gene, track) in &self.replay.tracks {
            if used.contains(gene) || !movable(self.schema, gene) {
                continue;
            }
            let (Some(def), Some(x)) = (self.schema.get(gene), value_of(self.genes, gene)) else {
                continue;
            };
            if track.settled(self.replay.last_improvement) {
                continue;
            }
            if let Some(candidate) = self.single_step(gene, def, track, x) {
                candidates.push(candidate);
                used.push(gene.clone());
            }
        }
        candidates
    }

    /// A step of `gene` from `x` along its track (the other way when that way has no room
    /// within the risk budget), paired with the same move the opposite way.
    fn single_step(
        &self,
        gene: &GeneName,
        def: &GeneDef,
        track: &NumericTrack,
        x: f64,
    ) -> Option<Candidate> {
        let stats = self.stats(gene);
        let prior = track.dir == 0.0;
        let mut dir = if prior {
            prior_direction(&def.spec, x)
        } else {
            track.dir
        };
        let mut target = self.safe_move(gene, x, dir, track.step);
        if target.is_none() {
            dir = -dir;
            target = self.safe_move(gene, x, dir, track.step);
        }
        let changes = target?;
        let value = changes[0].value.clone();
        let moved = value.as_f64().map_or(track.step, |t| (t - x).abs());
        let contingency = self.safe_move(gene, x, -dir, moved);
        let (promise, why) = single_promise(track, &stats, prior);
        Some(Candidate {
            changes: vec![GeneChange {
                gene: gene.clone(),
                value: value.clone(),
            }],
            contingency,
            promise,
            focus: self.focus(gene),
            rationale: format!(
                "{why}: move {gene} {} by {} to {value}",
                if dir > 0.0 { "up" } else { "down" },
                round_for_text(moved)
            ),
            contingency_rationale: format!("{gene} the other way, by the same amount"),
            predicted_impact: if track.confirmed {
                0.5 * self.recent_gain
            } else {
                0.0
            },
        })
    }

    /// The longest move of `gene` down the shrink ladder that stays out of failed regions and
    /// within the risk budget.
    fn safe_move(&self, gene: &GeneName, x: f64, dir: f64, step: f64) -> Option<Vec<GeneChange>> {
        SHRINK_LADDER.iter().find_map(|f| {
            let value = single_move(
                self.schema,
                self.genes,
                gene,
                x,
                dir,
                step * f,
                &self.failures,
            )?;
            let change = vec![GeneChange {
                gene: gene.clone(),
                value,
            }];
            (self.risk_of(&change) <= RISK_BUDGET).then_some(change)
        })
    }

    /// Occasional flips of the bools and choices no earlier step took.
    fn flips(&self, used: &[GeneName], rng: &mut ChaCha8Rng) -> Vec<Candidate> {
        self.schema
            .iter()
            .filter(|&(gene, def)| !def.frozen && !used.contains(gene))
            .filter_map(|(gene, def)| self.flip(gene, &def.spec, rng))
            .collect()
    }

    /// A flip of `gene` to a value the failures allow, drawn with the chance its history earns;
    /// the random stream is drawn from only once there is a value to pick.
    fn flip(&self, gene: &GeneName, spec: &GeneSpec, rng: &mut ChaCha8Rng) -> Option<Candidate> {
        let alternatives = self.flip_alternatives(gene, spec)?;
        if alternatives.is_empty() {
            return None;
        }
        let stats = self.stats(gene);
        let untried: Vec<&GeneValue> = alternatives
            .iter()
            .filter(|v| !stats.tried.iter().any(|(t, _)| t == *v))
            .collect();
        let (chance, pool): (f64, Vec<&GeneValue>) = if untried.is_empty() {
            (FLIP_RETRY, alternatives.iter().collect())
        } else {
            (FLIP_UNTRIED, untried)
        };
        let roll: f64 = rng.random();
        let pick = rng.random_range(0..pool.len());
        if roll >= chance {
            return None;
        }
        let value = pool[pick].clone();
        let flip = [GeneChange {
            gene: gene.clone(),
            value: value.clone(),
        }];
        if self.risk_of(&flip) > RISK_BUDGET {
            return None;
        }
        Some(Candidate {
            rationale: format!(
                "try {gene} = {value} ({})",
                if chance >= FLIP_UNTRIED {
                    "not tried yet"
                } else {
                    "tried before, the genes around it have moved since"
                }
            ),
            changes: vec![GeneChange {
                gene: gene.clone(),
                value,
            }],
            contingency: None,
            contingency_rationale: String::new(),
            promise: if chance >= FLIP_UNTRIED { 0.3 } else { 0.1 },
            focus: self.focus(gene),
            predicted_impact: 0.0,
        })
    }

    /// The other values of a bool or choice gene that lead into no failed region; `None` for
    /// numeric genes and for genes without a current value.
    fn flip_alternatives(&self, gene: &GeneName, spec: &GeneSpec) -> Option<Vec<GeneValue>> {
        let current = self.genes.get(gene)?;
        let alternatives: Vec<GeneValue> = match spec {
            GeneSpec::Bool => match current {
                GeneValue::Bool(b) => vec![GeneValue::Bool(!b)],
                _ => return None,
            },
            GeneSpec::Choice { choices } => choices
                .iter()
                .map(|c| GeneValue::Choice(c.clone()))
                .filter(|v| v != current)
                .collect(),
            GeneSpec::Int { .. } | GeneSpec::Float { .. } => return None,
        };
        let allowed = |v: &GeneValue| {
            let change = [GeneChange {
                gene: gene.clone(),
                value: v.clone(),
            }];
            !forbidden(self.genes, &change, &self.failures)
        };
        Some(alternatives.into_iter().filter(allowed).collect())
    }
}

/// Assigns ids, validates each step against the genes as they will be when the earlier steps
/// are kept, and caps the plan length.
fn assemble(
    req: &StrategizeRequest,
    schema: &GeneSchema,
    genes: &Genes,
    candidates: Vec<Candidate>,
    replay: &Replay,
) -> MutationStrategy {
    let envelope = req.ctx.envelope_id.as_str();
    let cap = req.max_steps as usize;
    let mut primary = Vec::new();
    let mut contingency = Vec::new();
    let mut current = genes.clone();
    for (index, candidate) in candidates.into_iter().enumerate() {
        if primary.len() >= cap {
            break;
        }
        let index_text = index.to_string();
        let id = derive_id("step", &[envelope, &index_text]);
        // Decide refuses a change already measured worse from the same genes; proposing one
        // would only loop.
        if replay
            .repeats_refused(&current, &candidate.changes)
            .is_some()
        {
            continue;
        }
        let Ok(next) = apply_mutation(schema, &current, &as_mutation(&id, &candidate.changes))
        else {
            continue;
        };
        if let Some(changes) = candidate.contingency {
            let cid = derive_id("alt", &[envelope, &index_text]);
            if apply_mutation(schema, &current, &as_mutation(&cid, &changes)).is_ok()
                && replay.repeats_refused(&current, &changes).is_none()
            {
                contingency.push(StrategicMutation {
                    id: cid,
                    changes,
                    rationale: candidate.contingency_rationale,
                    predicted_impact: 0.0,
                    contingency_for: Some(id.clone()),
                });
            }
        }
        primary.push(StrategicMutation {
            id,
            changes: candidate.changes,
            rationale: candidate.rationale,
            predicted_impact: candidate.predicted_impact,
            contingency_for: None,
        });
        current = next;
    }

    let mut risk_mitigation = vec![
        "every step is evaluated on its own and rolled back when fitness drops".to_owned(),
        "no step exceeds a gene's max_step; frozen genes are never touched".to_owned(),
    ];
    for failure in replay.consistent_failures(genes) {
        risk_mitigation.push(format!(
            "the workload failed at {} (generation {}): not reached again",
            failure.describe(),
            failure.generation
        ));
    }
    let mut expected_outcomes = BTreeMap::new();
    expected_outcomes.insert(
        "fitness".to_owned(),
        if replay.kept_gains.is_empty() {
            "unknown yet: the first steps probe which way each gene helps".to_owned()
        } else {
            format!(
                "about +{} per kept step, judging by recent kept steps",
                round_for_text(replay.recent_gain())
            )
        },
    );
    expected_outcomes.insert(
        "method".to_owned(),
        "adaptive pattern search (Hooke-Jeeves moves, Rprop step sizes)".to_owned(),
    );
    let steps = primary.len();
    MutationStrategy {
        execution_order: primary.iter().map(|s| s.id.clone()).collect(),
        primary_mutations: primary,
        contingency_mutations: contingency,
        success_criteria: BTreeMap::new(),
        risk_mitigation,
        expected_outcomes,
        timeline_estimate: format!(
            "{steps} generation(s), up to {} with contingencies",
            steps * 2
        ),
    }
}

fn as_mutation(id: &str, changes: &[GeneChange]) -> Mutation {
    Mutation {
        id: id.to_owned(),
        changes: changes.to_vec(),
        description: String::new(),
        predicted_impact: 0.0,
        plan_step: None,
    }
}

/// How promising a single-gene step is, and the words for why.
fn single_promise(track: &NumericTrack, stats: &GeneStats, prior: bool) -> (f64, &'static str) {
    let touched = f64::from(stats.touched());
    if track.confirmed {
        (5.0 + stats.gain.max(0.0), "continue a kept improvement")
    } else if prior || stats.touched() == 0 {
        (2.0, "explore an untouched gene")
    } else if stats.touched() == stats.flat {
        (0.2, "probe a gene with no visible effect so far")
    } else {
        let success = f64::from(stats.improved) / touched;
        let misses = f64::from(stats.worse + stats.failed);
        (
            (1.0 + success - 0.15 * misses).max(0.25),
            "probe again at a smaller step after a miss",
        )
    }
}

fn movable(schema: &GeneSchema, gene: &GeneName) -> bool {
    schema.get(gene).is_some_and(|d| !d.frozen)
}

fn describe_moves(genes: &Genes, changes: &[GeneChange]) -> String {
    changes
        .iter()
        .map(|c| match (value_of(genes, &c.gene), c.value.as_f64()) {
            (Some(x), Some(t)) => format!(
                "{} {}{}",
                c.gene,
                if t > x { "+" } else { "-" },
                round_for_text((t - x).abs())
            ),
            _ => format!("{}={}", c.gene, c.value),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Four significant digits, for rationales.
pub(crate) fn round_for_text(x: f64) -> String {
    if !x.is_finite() || x == 0.0 {
        return "0".to_owned();
    }
    let digits = (3 - x.abs().log10().floor() as i32).max(0) as usize;
    format!("{x:.digits$}")
}
