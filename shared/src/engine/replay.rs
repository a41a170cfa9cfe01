//! Replaying the evaluation history gene by gene: which way each numeric gene last moved with
//! success, how large its next step should be, and which values made the workload fail.
//!
//! The history only records the values a generation *set*, not the values it replaced, so the
//! value before a change is reconstructed: it is the value set by the most recent earlier kept
//! change of that gene, or the gene's value at the start of the window. That start value equals
//! the current value for genes without kept changes; for the others it is inferred from the first
//! kept change (see [`infer_origin`]).

use std::collections::BTreeMap;

use crate::domain::{
    EvaluationOutcome, GeneChange, GeneDef, GeneName, GeneSchema, GeneSpec, GeneValue, Genes,
    HistoryEntry,
};

/// A successful step grows by this factor (Rprop's eta+).
pub(crate) const GROW: f64 = 1.5;
/// A failed step shrinks by this factor (Rprop's eta-).
pub(crate) const SHRINK: f64 = 0.5;

/// The adaptive search state of one numeric gene.
#[derive(Debug, Clone)]
pub(crate) struct NumericTrack {
    /// Size of the next step on this gene.
    pub step: f64,
    /// Direction of the next step: +1, -1, or 0 when nothing is known yet.
    pub dir: f64,
    /// The gene's last change was kept and improved fitness: its direction is trusted.
    pub confirmed: bool,
    /// The largest step allowed (the schema's `max_step`, else the range).
    pub cap: f64,
    /// Below this a step is not worth an evaluation.
    pub floor: f64,
    /// Index (in the replayed window) of the last evaluated change of this gene.
    pub last_change: Option<usize>,
    /// That change was rolled back or failed.
    pub last_missed: bool,
}

impl NumericTrack {
    /// The gene has been narrowed down to its smallest step, the last try missed, and nothing
    /// has improved since: another step would most likely miss again, so it waits until some
    /// other gene moves the landscape under it.
    pub fn settled(&self, last_improvement: Option<usize>) -> bool {
        self.step <= self.floor * (1.0 + 1e-9)
            && self.last_missed
            && last_improvement.is_none_or(|i| self.last_change.is_some_and(|c| c > i))
    }
}

/// What the history says about one gene.
#[derive(Debug, Clone, Default)]
pub(crate) struct GeneStats {
    pub improved: u32,
    pub flat: u32,
    pub worse: u32,
    pub failed: u32,
    /// Fitness improvement attributed to this gene (shared evenly within a multi-gene change).
    pub gain: f64,
    /// Improvement per step cap of the gene's last kept, improving move: a finite-difference
    /// estimate of how steep fitness is along this gene (0 until one improved).
    pub slope: f64,
    /// Discrete values tried from some state and how that went: (value, kept and improved).
    pub tried: Vec<(GeneValue, bool)>,
}

impl GeneStats {
    pub fn touched(&self) -> u32 {
        self.improved + self.flat + self.worse + self.failed
    }
}

/// One side of a failed point: the workload failed with this gene at `to`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Barrier {
    /// Moving from `from` to `to` failed: `to` and everything beyond it is off limits.
    Beyond { from: f64, to: f64 },
    /// A discrete (or unreconstructable) value that failed.
    Exact(GeneValue),
}

/// A failed evaluation, as a region not to enter again. A point is inside when it is inside on
/// every gene the failed change touched.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Failure {
    pub generation: u64,
    pub parts: Vec<(GeneName, Barrier)>,
}

impl Failure {
    pub fn forbids(&self, point: &Genes) -> bool {
        !self.parts.is_empty()
            && self.parts.iter().all(|(gene, barrier)| {
                point.get(gene).is_some_and(|v| match barrier {
                    Barrier::Beyond { from, to } => {
                        v.as_f64().is_some_and(|x| (x - to) * (to - from) >= 0.0)
                    }
                    Barrier::Exact(value) => v == value,
                })
            })
    }

    pub fn describe(&self) -> String {
        self.parts
            .iter()
            .map(|(gene, barrier)| match barrier {
                Barrier::Beyond { from, to } if to > from => format!("{gene} >= {to}"),
                Barrier::Beyond { to, .. } => format!("{gene} <= {to}"),
                Barrier::Exact(v) => format!("{gene} = {v}"),
            })
            .collect::<Vec<_>>()
            .join(" and ")
    }
}

/// A change that was measured worse (or failed) from a known state.
#[derive(Debug, Clone)]
pub(crate) struct Refused {
    pub generation: u64,
    pub pre: BTreeMap<GeneName, Option<GeneValue>>,
    pub changes: Vec<GeneChange>,
}

/// Everything the engine learns from the history window.
#[derive(Debug, Clone, Default)]
pub(crate) struct Replay {
    pub tracks: BTreeMap<GeneName, NumericTrack>,
    pub stats: BTreeMap<GeneName, GeneStats>,
    pub failures: Vec<Failure>,
    pub refused: Vec<Refused>,
    /// Index of the last kept, improving change.
    pub last_improvement: Option<usize>,
    /// Improvement of each kept, improving change, oldest first.
    pub kept_gains: Vec<f64>,
    /// Fitness of each kept generation (baselines included), oldest first.
    pub kept_fitness: Vec<f64>,
    pub evaluated: u32,
    pub rolled_back: u32,
    pub inconclusive: u32,
}

impl Replay {
    /// Mean improvement of the last few kept, improving changes; 0 when there is none.
    pub fn recent_gain(&self) -> f64 {
        let recent: Vec<f64> = self.kept_gains.iter().rev().take(6).copied().collect();
        if recent.is_empty() {
            0.0
        } else {
            recent.iter().sum::<f64>() / recent.len() as f64
        }
    }

    /// Share of evaluated changes that were not kept.
    pub fn rollback_rate(&self) -> f64 {
        if self.evaluated == 0 {
            0.0
        } else {
            f64::from(self.rolled_back + self.inconclusive) / f64::from(self.evaluated)
        }
    }

    /// The refused change that `changes` would repeat from the very same genes, if any: the
    /// same measurement again would give the same answer.
    pub fn repeats_refused(&self, genes: &Genes, changes: &[GeneChange]) -> Option<&Refused> {
        fn key(changes: &[GeneChange]) -> Vec<(&GeneName, &GeneValue)> {
            let mut key: Vec<(&GeneName, &GeneValue)> =
                changes.iter().map(|c| (&c.gene, &c.value)).collect();
            key.sort_by(|a, b| a.0.cmp(b.0));
            key
        }
        let wanted = key(changes);
        self.refused.iter().rev().find(|r| {
            key(&r.changes) == wanted
                && r.pre
                    .iter()
                    .all(|(gene, before)| before.as_ref() == genes.get(gene))
        })
    }

    /// The failure regions that `point` (normally the current genes) lies inside of; a region
    /// containing the running system cannot be right, so callers ignore those.
    pub fn consistent_failures(&self, current: &Genes) -> Vec<&Failure> {
        self.failures
            .iter()
            .filter(|f| !f.forbids(current))
            .collect()
    }
}

/// The first step size of a gene: half its max_step, or an eighth of its range without one.
pub(crate) fn initial_step(spec: &GeneSpec) -> Option<(f64, f64, f64)> {
    let (lo, hi) = spec.range()?;
    if hi <= lo {
        return None;
    }
    let cap = spec.max_step().unwrap_or(hi - lo).min(hi - lo);
    let is_int = matches!(spec, GeneSpec::Int { .. });
    // Five halvings below the first step: finer moves are lost in measurement noise on real
    // systems and barely pay on smooth ones.
    let floor = if is_int { 1.0 } else { (cap / 64.0).max(1e-9) };
    let step = match spec.max_step() {
        Some(_) => cap * 0.5,
        None => (hi - lo) / 8.0,
    };
    Some((step.max(floor).min(cap), cap, floor))
}

/// The direction an untouched gene moves first: toward the middle of its range, where bounds
/// are usually drawn around the plausible region; up when already there.
pub(crate) fn prior_direction(spec: &GeneSpec, value: f64) -> f64 {
    match spec.range() {
        Some((lo, hi)) if value > f64::midpoint(lo, hi) + 1e-12 => -1.0,
        _ => 1.0,
    }
}

/// Reconstructs a gene's value at the start of the window from its first kept change `kept`
/// and, when there is one, the last change of it measured worse before that (`refused`).
///
/// The engine pairs each step with a mirrored contingency, so a refused value followed by a kept
/// one most often brackets the origin symmetrically; without one, the kept change was a first
/// step of the initial size in the prior direction.
fn infer_origin(def: &GeneDef, kept: &GeneValue, refused: Option<&GeneValue>) -> Option<GeneValue> {
    match (&def.spec, kept) {
        (GeneSpec::Bool, GeneValue::Bool(b)) => Some(GeneValue::Bool(!b)),
        (GeneSpec::Choice { choices }, GeneValue::Choice(c)) if choices.len() == 2 => choices
            .iter()
            .find(|other| *other != c)
            .map(|other| GeneValue::Choice(other.clone())),
        (GeneSpec::Int { .. } | GeneSpec::Float { .. }, _) => {
            let k = kept.as_f64()?;
            let (lo, hi) = def.spec.range()?;
            let origin = if let Some(r) = refused.and_then(GeneValue::as_f64) {
                f64::midpoint(r, k)
            } else {
                let (step, _, _) = initial_step(&def.spec)?;
                k - prior_direction(&def.spec, k) * step
            };
            let origin = origin.clamp(lo, hi);
            Some(match def.spec {
                GeneSpec::Int { .. } => GeneValue::Int(origin.round() as i64),
                _ => GeneValue::Float(origin),
            })
        }
        _ => None,
    }
}

fn sign(x: f64) -> f64 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}

/// Replays `history` (any order; one entry per generation) against the current `genes`.
pub(crate) fn replay(schema: &GeneSchema, genes: &Genes, history: &[HistoryEntry]) -> Replay {
    let mut entries: Vec<&HistoryEntry> = history.iter().collect();
    entries.sort_by_key(|e| e.generation);
    entries.dedup_by_key(|e| e.generation);

    let mut out = Replay::default();
    let mut state: BTreeMap<GeneName, Option<GeneValue>> = BTreeMap::new();
    for (name, def) in schema {
        state.insert(name.clone(), start_value(name, def, genes, &entries));
        out.stats.insert(name.clone(), GeneStats::default());
        if !def.frozen {
            if let Some(track) = fresh_track(&def.spec) {
                out.tracks.insert(name.clone(), track);
            }
        }
    }
    for (index, entry) in entries.into_iter().enumerate() {
        out.record(schema, &mut state, index, entry);
    }
    out
}

/// A gene's value at the start of the window: the current one when no change of it was kept,
/// else inferred from the first kept change and the last refused one before it.
fn start_value(
    name: &GeneName,
    def: &GeneDef,
    genes: &Genes,
    entries: &[&HistoryEntry],
) -> Option<GeneValue> {
    let first_kept = entries.iter().enumerate().find_map(|(i, e)| {
        (e.outcome == EvaluationOutcome::Keep)
            .then(|| e.changes.iter().find(|c| &c.gene == name))
            .flatten()
            .map(|c| (i, &c.value))
    });
    match first_kept {
        None => genes.get(name).cloned(),
        Some((idx, kept)) => {
            let refused = entries[..idx]
                .iter()
                .rev()
                .find_map(|e| e.changes.iter().find(|c| &c.gene == name))
                .map(|c| &c.value);
            infer_origin(def, &def.spec.coerce(kept), refused)
        }
    }
}

/// The track of a numeric gene nothing is known about yet; `None` for genes without a range.
fn fresh_track(spec: &GeneSpec) -> Option<NumericTrack> {
    let (step, cap, floor) = initial_step(spec)?;
    Some(NumericTrack {
        step,
        dir: 0.0,
        confirmed: false,
        cap,
        floor,
        last_change: None,
        last_missed: false,
    })
}

/// The entry's changes of genes the schema still declares, coerced to their specs.
fn schema_changes(schema: &GeneSchema, entry: &HistoryEntry) -> Vec<GeneChange> {
    entry
        .changes
        .iter()
        .filter_map(|c| {
            schema.get(&c.gene).map(|def| GeneChange {
                gene: c.gene.clone(),
                value: def.spec.coerce(&c.value),
            })
        })
        .collect()
}

/// The numeric genes that actually moved, as (gene, from, to), from the values in `state`.
fn numeric_moves<'c>(
    state: &BTreeMap<GeneName, Option<GeneValue>>,
    changes: &'c [GeneChange],
) -> Vec<(&'c GeneName, f64, f64)> {
    changes
        .iter()
        .filter_map(|c| {
            let from = state.get(&c.gene)?.as_ref()?.as_f64()?;
            let to = c.value.as_f64()?;
            ((to - from).abs() > 0.0).then_some((&c.gene, from, to))
        })
        .collect()
}

/// How one evaluated change went, as the per-gene updates need it.
#[derive(Debug, Clone, Copy)]
struct Verdict {
    outcome: EvaluationOutcome,
    /// Kept, with fitness measurably above its parent's.
    improved: bool,
    /// The improvement attributed to each gene of the change (shared evenly).
    share: f64,
}

impl Replay {
    /// Replays one entry (the `index`-th of the window) onto the tracks, the stats and `state`,
    /// the genes as they stand after the kept changes so far.
    fn record(
        &mut self,
        schema: &GeneSchema,
        state: &mut BTreeMap<GeneName, Option<GeneValue>>,
        index: usize,
        entry: &HistoryEntry,
    ) {
        let changes = schema_changes(schema, entry);
        if changes.is_empty() {
            if entry.outcome == EvaluationOutcome::Keep {
                self.kept_fitness
                    .extend(entry.fitness.filter(|f| f.is_finite()));
            }
            return;
        }
        self.evaluated += 1;
        let (improvement, improved) = self.tally(index, entry);
        let moves = numeric_moves(state, &changes);
        let verdict = Verdict {
            outcome: entry.outcome,
            improved,
            share: improvement.unwrap_or(0.0) / changes.len() as f64,
        };
        self.update_stats(&changes, verdict);
        self.update_tracks(&moves, index, verdict);

        if entry.outcome == EvaluationOutcome::Keep {
            for change in &changes {
                state.insert(change.gene.clone(), Some(change.value.clone()));
            }
        } else {
            // A failed measurement and a broken guardrail are both barriers: the region is
            // off limits, not merely worse.
            if entry.outcome == EvaluationOutcome::Inconclusive || !entry.breaches.is_empty() {
                self.failures
                    .push(failure_of(entry.generation, &changes, &moves));
            }
            self.refused.push(Refused {
                generation: entry.generation,
                pre: state.clone(),
                changes: changes.clone(),
            });
        }
    }

    /// Counts the entry's outcome and returns its improvement over the parent (when both were
    /// measured) and whether it was kept with fitness measurably above the parent's.
    fn tally(&mut self, index: usize, entry: &HistoryEntry) -> (Option<f64>, bool) {
        let improvement = match (entry.fitness, entry.baseline_fitness) {
            (Some(f), Some(b)) if f.is_finite() && b.is_finite() => Some(f - b),
            _ => None,
        };
        let tolerance = 1e-12 * entry.baseline_fitness.map_or(1.0, |b| b.abs().max(1.0));
        let improved =
            entry.outcome == EvaluationOutcome::Keep && improvement.is_some_and(|d| d > tolerance);
        match entry.outcome {
            EvaluationOutcome::Keep => {
                if improved {
                    self.kept_gains.extend(improvement);
                    self.last_improvement = Some(index);
                }
                self.kept_fitness
                    .extend(entry.fitness.filter(|f| f.is_finite()));
            }
            EvaluationOutcome::Rollback => self.rolled_back += 1,
            EvaluationOutcome::Inconclusive => self.inconclusive += 1,
        }
        (improvement, improved)
    }

    fn update_stats(&mut self, changes: &[GeneChange], verdict: Verdict) {
        for change in changes {
            let Some(stats) = self.stats.get_mut(&change.gene) else {
                continue;
            };
            match verdict.outcome {
                EvaluationOutcome::Keep if verdict.improved => {
                    stats.improved += 1;
                    stats.gain += verdict.share;
                }
                EvaluationOutcome::Keep => stats.flat += 1,
                EvaluationOutcome::Rollback => stats.worse += 1,
                EvaluationOutcome::Inconclusive => stats.failed += 1,
            }
            if change.value.as_f64().is_none() {
                stats.tried.push((change.value.clone(), verdict.improved));
            }
        }
    }

    /// Rprop on each moved gene: grow and keep the direction after an improvement, keep the size
    /// after a flat keep, shrink (and reverse, for a single-gene move) after a miss.
    fn update_tracks(&mut self, moves: &[(&GeneName, f64, f64)], index: usize, verdict: Verdict) {
        let multi = moves.len() >= 2;
        for &(gene, from, to) in moves {
            let Some(track) = self.tracks.get_mut(gene) else {
                continue;
            };
            let d = sign(to - from);
            let size = (to - from).abs();
            track.last_change = Some(index);
            track.last_missed = verdict.outcome != EvaluationOutcome::Keep;
            if verdict.improved {
                if let Some(stats) = self.stats.get_mut(gene) {
                    stats.slope = verdict.share.max(0.0) / (size / track.cap).max(1e-9);
                }
            }
            match verdict.outcome {
                EvaluationOutcome::Keep if verdict.improved => {
                    track.dir = d;
                    track.step = (size * GROW).clamp(track.floor, track.cap);
                    track.confirmed = true;
                }
                EvaluationOutcome::Keep => {
                    // Flat: the gene may not matter here; carry on the same way, same size.
                    track.dir = d;
                    track.step = size.clamp(track.floor, track.cap);
                    track.confirmed = false;
                }
                EvaluationOutcome::Rollback | EvaluationOutcome::Inconclusive => {
                    track.step = (size * SHRINK).clamp(track.floor, track.cap);
                    track.confirmed = false;
                    // A joint move says nothing about which gene spoiled it: directions stay.
                    track.dir = if multi { d } else { -d };
                }
            }
        }
    }
}

/// The region a failed change marks off: beyond the moved value for each gene that moved, the
/// exact value for the others.
fn failure_of(generation: u64, changes: &[GeneChange], moves: &[(&GeneName, f64, f64)]) -> Failure {
    let parts = changes
        .iter()
        .map(|c| {
            let barrier = moves
                .iter()
                .find(|(g, _, _)| **g == c.gene)
                .map_or(Barrier::Exact(c.value.clone()), |&(_, from, to)| {
                    Barrier::Beyond { from, to }
                });
            (c.gene.clone(), barrier)
        })
        .collect();
    Failure { generation, parts }
}
