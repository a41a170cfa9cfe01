//! The geometry of a step: how far a gene can move within its bounds and `max_step`, how a joint
//! move is shortened until it fits the risk budget, and how steps keep out of the regions where
//! the workload failed.

use super::RISK_BUDGET;
use crate::domain::{GeneChange, GeneName, GeneSchema, GeneSpec, GeneValue, Genes};
use crate::engine::replay::{Failure, NumericTrack, initial_step};

/// A joint move shorter than this fraction of its steps is not worth the risk of a joint move.
const MIN_PATTERN_FRACTION: f64 = 0.2;

pub(super) fn value_of(genes: &Genes, gene: &GeneName) -> Option<f64> {
    genes.get(gene).and_then(GeneValue::as_f64)
}

/// The value `step` away from `x` in direction `dir`, inside the bounds and the max_step;
/// `None` when there is no room to move that way.
pub(super) fn numeric_value(spec: &GeneSpec, x: f64, dir: f64, step: f64) -> Option<GeneValue> {
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
pub(super) fn single_move(
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
pub(super) fn pattern_move(
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
pub(super) fn halve(
    schema: &GeneSchema,
    genes: &Genes,
    changes: &[GeneChange],
) -> Option<Vec<GeneChange>> {
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

pub(super) fn forbidden(genes: &Genes, changes: &[GeneChange], failures: &[&Failure]) -> bool {
    if failures.is_empty() {
        return false;
    }
    let mut point = genes.clone();
    for c in changes {
        point.insert(c.gene.clone(), c.value.clone());
    }
    failures.iter().any(|f| f.forbids(&point))
}
