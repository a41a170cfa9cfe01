//! The local strategist: turns the replayed history into an ordered plan of gene changes.

use std::collections::BTreeMap;

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::replay::{
    Failure, GeneStats, NumericTrack, Replay, initial_step, prior_direction, replay,
};
use crate::domain::risk;
use crate::domain::{
    GeneChange, GeneName, GeneSchema, GeneSpec, GeneValue, Genes, Mutation, MutationStrategy,
    StrategicMutation, apply_mutation, derive_id,
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
/// A joint move shorter than this fraction of its steps is not worth the risk of a joint move.
const MIN_PATTERN_FRACTION: f64 = 0.2;

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
    let schema = &req.dna.schema;
    let genes = &req.dna.genes;
    let replay = replay(schema, genes, &req.history);
    let failures = replay.consistent_failures(genes);
    let recent_gain = replay.recent_gain().max(0.0);
    let focus = |gene: &GeneName| {
        req.analysis
            .recommended_focus_areas
            .iter()
            .position(|f| f == gene.as_str())
            .unwrap_or(usize::MAX)
    };

    let mut candidates = Vec::new();
    let mut used: Vec<GeneName> = Vec::new();

    // Pattern move over the genes whose direction the history confirmed.
    let risk_of = |changes: &[GeneChange]| {
        risk::assess(schema, genes, &as_mutation("", changes), &req.history).overall_risk
    };
    let mut confirmed: Vec<(&GeneName, &NumericTrack, f64)> = replay
        .tracks
        .iter()
        .filter(|(gene, track)| track.confirmed && movable(schema, gene))
        .map(|(gene, track)| {
            let slope = replay.stats.get(gene).map_or(0.0, |s| s.slope);
            (gene, track, slope)
        })
        .collect();
    // Steepest first (the Gauss-Southwell rule); genes far flatter than the steepest wait for a
    // later plan, when the steep ones have flattened out.
    confirmed.sort_by(|a, b| b.2.total_cmp(&a.2).then_with(|| a.0.cmp(b.0)));
    let steepest = confirmed.first().map_or(0.0, |c| c.2);
    let (confirmed, waiting): (Vec<_>, Vec<_>) = confirmed
        .into_iter()
        .partition(|c| c.2 >= FLAT_RATIO * steepest);
    used.extend(waiting.iter().map(|(gene, _, _)| (*gene).clone()));
    // The risk of a mutation grows with every gene it touches, so the confirmed genes are moved
    // in groups: each as large as the risk budget allows at (nearly) full length.
    let mut remaining = confirmed;
    while remaining.len() >= 2 {
        let Some(changes) = pattern_move(schema, genes, &remaining, &failures, &risk_of) else {
            break;
        };
        remaining.retain(|(gene, _, _)| !changes.iter().any(|c| &c.gene == *gene));
        let half = halve(schema, genes, &changes)
            .filter(|h| !forbidden(genes, h, &failures) && risk_of(h) <= RISK_BUDGET);
        let gain: f64 = changes
            .iter()
            .filter_map(|c| replay.stats.get(&c.gene))
            .map(|s| s.gain.max(0.0))
            .sum();
        used.extend(changes.iter().map(|c| c.gene.clone()));
        candidates.push(Candidate {
            rationale: format!(
                "pattern move: repeat the last successful displacement of {} genes at grown \
                 step sizes ({})",
                changes.len(),
                describe_moves(genes, &changes)
            ),
            contingency_rationale: "the pattern move at half length".to_owned(),
            contingency: half,
            promise: 10.0 + gain,
            focus: 0,
            predicted_impact: 0.5 * recent_gain,
            changes,
        });
    }

    // Single-gene steps for every other numeric gene.
    for (gene, track) in &replay.tracks {
        if used.contains(gene) || !movable(schema, gene) {
            continue;
        }
        let (Some(def), Some(x)) = (schema.get(gene), value_of(genes, gene)) else {
            continue;
        };
        if track.settled(replay.last_improvement) {
            continue;
        }
        let stats = replay.stats.get(gene).cloned().unwrap_or_default();
        let prior = track.dir == 0.0;
        let mut dir = if prior {
            prior_direction(&def.spec, x)
        } else {
            track.dir
        };
        let safe_move = |dir: f64, step: f64| {
            SHRINK_LADDER.iter().find_map(|f| {
                let value = single_move(schema, genes, gene, x, dir, step * f, &failures)?;
                let change = vec![GeneChange {
                    gene: gene.clone(),
                    value,
                }];
                (risk_of(&change) <= RISK_BUDGET).then_some(change)
            })
        };
        let mut target = safe_move(dir, track.step);
        if target.is_none() {
            dir = -dir;
            target = safe_move(dir, track.step);
        }
        let Some(changes) = target else {
            continue;
        };
        let value = changes[0].value.clone();
        let moved = value.as_f64().map_or(track.step, |t| (t - x).abs());
        let contingency = safe_move(-dir, moved);
        let (promise, why) = single_promise(track, &stats, prior);
        candidates.push(Candidate {
            changes: vec![GeneChange {
                gene: gene.clone(),
                value: value.clone(),
            }],
            contingency,
            promise,
            focus: focus(gene),
            rationale: format!(
                "{why}: move {gene} {} by {} to {value}",
                if dir > 0.0 { "up" } else { "down" },
                round_for_text(moved)
            ),
            contingency_rationale: format!("{gene} the other way, by the same amount"),
            predicted_impact: if track.confirmed {
                0.5 * recent_gain
            } else {
                0.0
            },
        });
        used.push(gene.clone());
    }

    // Occasional flips of bools and choices.
    for (gene, def) in schema {
        if def.frozen || used.contains(gene) {
            continue;
        }
        let Some(current) = genes.get(gene) else {
            continue;
        };
        let alternatives: Vec<GeneValue> = match &def.spec {
            GeneSpec::Bool => match current {
                GeneValue::Bool(b) => vec![GeneValue::Bool(!b)],
                _ => continue,
            },
            GeneSpec::Choice { choices } => choices
                .iter()
                .map(|c| GeneValue::Choice(c.clone()))
                .filter(|v| v != current)
                .collect(),
            GeneSpec::Int { .. } | GeneSpec::Float { .. } => continue,
        };
        let alternatives: Vec<GeneValue> = alternatives
            .into_iter()
            .filter(|v| {
                !forbidden(
                    genes,
                    &[GeneChange {
                        gene: gene.clone(),
                        value: v.clone(),
                    }],
                    &failures,
                )
            })
            .collect();
        if alternatives.is_empty() {
            continue;
        }
        let stats = replay.stats.get(gene).cloned().unwrap_or_default();
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
            continue;
        }
        let value = pool[pick].clone();
        let flip = [GeneChange {
            gene: gene.clone(),
            value: value.clone(),
        }];
        if risk_of(&flip) > RISK_BUDGET {
            continue;
        }
        candidates.push(Candidate {
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
            focus: focus(gene),
            predicted_impact: 0.0,
        });
    }

    candidates.sort_by(|a, b| {
        b.promise
            .total_cmp(&a.promise)
            .then(a.focus.cmp(&b.focus))
            .then_with(|| a.changes[0].gene.cmp(&b.changes[0].gene))
    });

    assemble(req, schema, genes, candidates, &replay)
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

fn value_of(genes: &Genes, gene: &GeneName) -> Option<f64> {
    genes.get(gene).and_then(GeneValue::as_f64)
}

/// The value `step` away from `x` in direction `dir`, inside the bounds and the max_step;
/// `None` when there is no room to move that way.
pub(crate) fn numeric_value(spec: &GeneSpec, x: f64, dir: f64, step: f64) -> Option<GeneValue> {
    let dir = if dir < 0.0 { -1.0 } else { 1.0 };
    match spec {
        GeneSpec::Int { min, max, max_step } => {
            let xi = x.round() as i64;
            let mut t = (x + dir * step).round() as i64;
            if t == xi {
                t = xi + dir as i64;
            }
            if let Some(ms) = max_step {
                t = t.clamp(xi - ms, xi + ms);
            }
            let t = t.clamp(*min, *max);
            (t != xi).then_some(GeneValue::Int(t))
        }
        GeneSpec::Float { min, max, max_step } => {
            let mut t = x + dir * step;
            if let Some(ms) = max_step {
                // A hair under the limit, so rounding never makes the step "too large".
                let ms = ms * (1.0 - 1e-9);
                t = t.clamp(x - ms, x + ms);
            }
            let t = t.clamp(*min, *max);
            ((t - x).abs() > 1e-12 * (1.0 + x.abs())).then_some(GeneValue::Float(t))
        }
        GeneSpec::Bool | GeneSpec::Choice { .. } => None,
    }
}

/// A single-gene step that stays out of failed regions, shortened (halved, up to eight times)
/// until it does: repeated misses bisect toward a failed value without reaching it.
fn single_move(
    schema: &GeneSchema,
    genes: &Genes,
    gene: &GeneName,
    x: f64,
    dir: f64,
    step: f64,
    failures: &[&Failure],
) -> Option<GeneValue> {
    let spec = &schema.get(gene)?.spec;
    let floor = step_floor(spec);
    let mut step = step;
    for _ in 0..8 {
        let value = numeric_value(spec, x, dir, step)?;
        let change = [GeneChange {
            gene: gene.clone(),
            value: value.clone(),
        }];
        if !forbidden(genes, &change, failures) {
            return Some(value);
        }
        let moved = value.as_f64().map_or(step, |t| (t - x).abs());
        // Closing in on a failed value further is not worth an evaluation.
        if moved * 0.5 < floor {
            return None;
        }
        step = moved * 0.5;
    }
    None
}

/// The smallest step worth an evaluation on this gene.
fn step_floor(spec: &GeneSpec) -> f64 {
    initial_step(spec).map_or(0.0, |(_, _, floor)| floor)
}

/// The joint move over the confirmed genes (best first) that moves farthest, in units of each
/// gene's step cap, while staying out of failed regions and within the risk budget: the local
/// risk grows with every gene a mutation touches, so fewer genes at full length can beat many
/// genes at a fraction of it.
fn pattern_move(
    schema: &GeneSchema,
    genes: &Genes,
    confirmed: &[(&GeneName, &NumericTrack, f64)],
    failures: &[&Failure],
    risk_of: &dyn Fn(&[GeneChange]) -> f64,
) -> Option<Vec<GeneChange>> {
    let build = |count: usize, fraction: f64| {
        let changes: Vec<GeneChange> = confirmed[..count]
            .iter()
            .filter_map(|(gene, track, _)| {
                let spec = &schema.get(*gene)?.spec;
                let x = value_of(genes, gene)?;
                numeric_value(spec, x, track.dir, track.step * fraction).map(|value| GeneChange {
                    gene: (*gene).clone(),
                    value,
                })
            })
            .collect();
        let changes = retreat_from_failures(schema, genes, changes, failures);
        (changes.len() >= 2 && risk_of(&changes) <= RISK_BUDGET).then_some(changes)
    };
    let mut best: Option<(f64, Vec<GeneChange>)> = None;
    for count in (2..=confirmed.len()).rev() {
        // Risk grows with the length of the move: bisect for the longest one within budget.
        let found = build(count, 1.0).or_else(|| {
            let (mut lo, mut hi) = (MIN_PATTERN_FRACTION, 1.0);
            let mut found = build(count, lo)?;
            for _ in 0..10 {
                let mid = f64::midpoint(lo, hi);
                match build(count, mid) {
                    Some(changes) => {
                        lo = mid;
                        found = changes;
                    }
                    None => hi = mid,
                }
            }
            Some(found)
        });
        if let Some(changes) = found {
            let reach = reach(schema, genes, &changes);
            if best.as_ref().is_none_or(|(r, _)| reach > *r + 1e-9) {
                best = Some((reach, changes));
            }
        }
    }
    best.map(|(_, changes)| changes)
}

/// How far a move goes, summed over its genes in units of each gene's step cap.
fn reach(schema: &GeneSchema, genes: &Genes, changes: &[GeneChange]) -> f64 {
    changes
        .iter()
        .filter_map(|c| {
            let spec = &schema.get(&c.gene)?.spec;
            let (lo, hi) = spec.range()?;
            let cap = spec.max_step().unwrap_or(hi - lo).max(f64::MIN_POSITIVE);
            Some((c.value.as_f64()? - value_of(genes, &c.gene)?).abs() / cap)
        })
        .sum()
}

/// Shortens a joint move until it leaves every failed region, dropping genes whose move
/// rounds away.
fn retreat_from_failures(
    schema: &GeneSchema,
    genes: &Genes,
    mut changes: Vec<GeneChange>,
    failures: &[&Failure],
) -> Vec<GeneChange> {
    for _ in 0..8 {
        if changes.is_empty() || !forbidden(genes, &changes, failures) {
            return changes;
        }
        changes = halve(schema, genes, &changes).unwrap_or_default();
    }
    if forbidden(genes, &changes, failures) {
        Vec::new()
    } else {
        changes
    }
}

/// The same numeric changes at half length; genes whose half move rounds to nothing drop out.
fn halve(schema: &GeneSchema, genes: &Genes, changes: &[GeneChange]) -> Option<Vec<GeneChange>> {
    let halved: Vec<GeneChange> = changes
        .iter()
        .filter_map(|c| {
            let spec = &schema.get(&c.gene)?.spec;
            let x = value_of(genes, &c.gene)?;
            let t = c.value.as_f64()?;
            let half = (t - x) / 2.0;
            if half.abs() < step_floor(spec) {
                return None;
            }
            numeric_value(spec, x, half.signum(), half.abs()).map(|value| GeneChange {
                gene: c.gene.clone(),
                value,
            })
        })
        .collect();
    (!halved.is_empty()).then_some(halved)
}

fn forbidden(genes: &Genes, changes: &[GeneChange], failures: &[&Failure]) -> bool {
    if failures.is_empty() {
        return false;
    }
    let mut point = genes.clone();
    for c in changes {
        point.insert(c.gene.clone(), c.value.clone());
    }
    failures.iter().any(|f| f.forbids(&point))
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
