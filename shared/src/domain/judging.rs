//! What a DNA file says about judging a generation besides its score (docs/architecture.md,
//! "Judging a generation"): guardrails, bounds a generation must stay inside whatever its
//! score, and objectives, the metrics a fitness is computed from.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::ids::MetricName;

/// The confidence a verdict needs when the system's settings name none. Windows hold 3 to 10
/// reports, where 0.95 is rarely reached and good mutations are rolled back more often than
/// under the mean rule; at 0.8 the judge makes fewer wrong verdicts of both kinds than the mean
/// rule on the noisy service (`make bench` prints the rates for 0.8, 0.9 and 0.95).
pub const DEFAULT_CONFIDENCE: f64 = 0.8;
/// [`DEFAULT_CONFIDENCE`] as the settings keep it.
pub const DEFAULT_CONFIDENCE_PERCENT: u32 = 80;
/// The confidences a system may ask for, in percent: below 51 a verdict is a coin toss, and at
/// 100 nothing is ever significant.
pub const CONFIDENCE_PERCENT_RANGE: std::ops::RangeInclusive<u32> = 51..=99;

/// Most guardrails and most objectives a DNA file may give.
pub const MAX_JUDGING_RULES: usize = 16;

/// Which side of the bound a metric must stay on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Comparison {
    #[serde(rename = "<=")]
    AtMost,
    #[serde(rename = ">=")]
    AtLeast,
}

/// The bound itself: a number, or the parent's value of the same metric times a factor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Bound {
    Absolute(f64),
    Parent(f64),
}

/// One guardrail, written in the DNA file as `"p99_latency_ms <= 250"` or
/// `"p99_latency_ms <= parent * 1.10"`, and kept in that text form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Guardrail {
    pub metric: MetricName,
    pub comparison: Comparison,
    pub bound: Bound,
}

/// A guardrail a window's metrics broke, with the values that broke it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Breach {
    /// The guardrail as written.
    pub guardrail: String,
    pub value: f64,
    /// The bound it was held to (for a relative guardrail, the parent's value times the factor).
    pub limit: f64,
}

impl fmt::Display for Breach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "guardrail {} breached: {} against a limit of {}",
            self.guardrail,
            short(self.value),
            short(self.limit)
        )
    }
}

fn short(v: f64) -> String {
    let s = format!("{v:.4}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

impl fmt::Display for Guardrail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = match self.comparison {
            Comparison::AtMost => "<=",
            Comparison::AtLeast => ">=",
        };
        match self.bound {
            Bound::Absolute(v) => write!(f, "{} {op} {v}", self.metric),
            Bound::Parent(factor) => write!(f, "{} {op} parent * {factor}", self.metric),
        }
    }
}

impl From<Guardrail> for String {
    fn from(g: Guardrail) -> Self {
        g.to_string()
    }
}

impl TryFrom<String> for Guardrail {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        Self::parse(&text)
    }
}

impl Guardrail {
    /// Parses `METRIC <= N`, `METRIC >= N`, `METRIC <= parent * F` (or `parent` alone, a
    /// factor of 1).
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("guardrail {text:?}: {why}");
        let (metric, comparison, rest) = if let Some((m, r)) = text.split_once("<=") {
            (m, Comparison::AtMost, r)
        } else if let Some((m, r)) = text.split_once(">=") {
            (m, Comparison::AtLeast, r)
        } else {
            return Err(bad("expected METRIC <= BOUND or METRIC >= BOUND"));
        };
        let metric =
            MetricName::parse(metric.trim().to_owned()).map_err(|e| bad(&e.to_string()))?;
        let number = |s: &str| {
            s.trim()
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| bad("the bound is not a finite number"))
        };
        let rest = rest.trim();
        let bound = match rest.strip_prefix("parent") {
            Some("") => Bound::Parent(1.0),
            Some(tail) => {
                let factor = tail
                    .trim()
                    .strip_prefix('*')
                    .ok_or_else(|| bad("expected `parent * FACTOR`"))?;
                let factor = number(factor)?;
                if factor <= 0.0 {
                    return Err(bad("the factor must be above 0"));
                }
                Bound::Parent(factor)
            }
            None => Bound::Absolute(number(rest)?),
        };
        Ok(Self {
            metric,
            comparison,
            bound,
        })
    }

    /// Whether this guardrail compares against the parent, whose metrics must then be read.
    pub fn is_relative(&self) -> bool {
        matches!(self.bound, Bound::Parent(_))
    }

    /// The breach, if `metrics` (a window's means) break this guardrail. A metric the window
    /// did not report, or a relative bound whose parent did not report it, is no breach: a
    /// guardrail judges what was measured.
    pub fn breach(
        &self,
        metrics: &BTreeMap<MetricName, f64>,
        parent: Option<&BTreeMap<MetricName, f64>>,
    ) -> Option<Breach> {
        let value = *metrics.get(&self.metric)?;
        let limit = match self.bound {
            Bound::Absolute(v) => v,
            Bound::Parent(factor) => parent?.get(&self.metric)? * factor,
        };
        let broken = match self.comparison {
            Comparison::AtMost => value > limit,
            Comparison::AtLeast => value < limit,
        };
        broken.then(|| Breach {
            guardrail: self.to_string(),
            value,
            limit,
        })
    }
}

/// Every breach of `guardrails` by `metrics`.
pub fn breaches(
    guardrails: &[Guardrail],
    metrics: &BTreeMap<MetricName, f64>,
    parent: Option<&BTreeMap<MetricName, f64>>,
) -> Vec<Breach> {
    guardrails
        .iter()
        .filter_map(|g| g.breach(metrics, parent))
        .collect()
}

/// Whether more of a metric is better or worse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Maximize,
    Minimize,
}

impl Direction {
    /// The wire name, as the DNA file spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Maximize => "maximize",
            Self::Minimize => "minimize",
        }
    }
}

/// One objective: a metric, which way is better, its weight in the fitness, and optionally a
/// target beyond which it earns nothing more (so a metric that is good enough stops pulling
/// the search away from the others).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Objective {
    pub metric: MetricName,
    pub direction: Direction,
    #[serde(default = "one")]
    pub weight: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<f64>,
}

fn one() -> f64 {
    1.0
}

impl Objective {
    pub(crate) fn validate(&self) -> Result<(), String> {
        if !(self.weight.is_finite() && self.weight > 0.0) {
            return Err(format!(
                "objective {}: the weight must be a finite number above 0",
                self.metric
            ));
        }
        if self.target.is_some_and(|t| !t.is_finite()) {
            return Err(format!(
                "objective {}: the target must be a finite number",
                self.metric
            ));
        }
        Ok(())
    }

    /// This objective's part of the fitness: the value, capped at the target, signed so that
    /// higher is better, times the weight.
    pub fn contribution(&self, value: f64) -> f64 {
        let signed = match (self.direction, self.target) {
            (Direction::Maximize, Some(t)) => value.min(t),
            (Direction::Maximize, None) => value,
            (Direction::Minimize, Some(t)) => -value.max(t),
            (Direction::Minimize, None) => -value,
        };
        self.weight * signed
    }

    /// Whether `a` is at least as good as `b` on this objective.
    pub fn at_least_as_good(&self, a: f64, b: f64) -> bool {
        match self.direction {
            Direction::Maximize => a >= b,
            Direction::Minimize => a <= b,
        }
    }
}

/// The fitness of a report from its metrics: the sum of each objective's contribution. An
/// objective the report lacks makes it a failed measurement, named.
pub fn objective_fitness(
    objectives: &[Objective],
    metrics: &BTreeMap<MetricName, f64>,
) -> Result<f64, String> {
    objectives.iter().try_fold(0.0, |sum, o| {
        let value = metrics
            .get(&o.metric)
            .ok_or_else(|| format!("objective metric {} not reported", o.metric))?;
        Ok(sum + o.contribution(*value))
    })
}

/// For each point (two objectives' values), whether another point dominates it: at least as
/// good on both and not equal on both.
pub fn dominated(points: &[(f64, f64)], x: &Objective, y: &Objective) -> Vec<bool> {
    points
        .iter()
        .map(|&(px, py)| {
            points.iter().any(|&(qx, qy)| {
                x.at_least_as_good(qx, px)
                    && y.at_least_as_good(qy, py)
                    && (x.at_least_as_good(qx, px) && !x.at_least_as_good(px, qx)
                        || y.at_least_as_good(qy, py) && !y.at_least_as_good(py, qy))
            })
        })
        .collect()
}

/// What a significance test says of a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Finding {
    /// Higher than the parent beyond chance: keep.
    Better,
    /// Lower than the parent beyond chance: roll back.
    Worse,
    /// Neither, with the window already extended once: the parent is kept.
    Inconclusive,
    /// Neither, on the first window: measure as long again.
    Extend,
}

/// A finding with the test behind it, recorded with the verdict.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Significance {
    pub finding: Finding,
    /// The one-sided p-value of the direction found (the smaller of the two).
    pub p_value: f64,
    /// Cliff's delta of the candidate against the parent, in [-1, 1].
    pub effect_size: f64,
    pub confidence: f64,
    pub candidate_samples: u32,
    pub parent_samples: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(pairs: &[(&str, f64)]) -> BTreeMap<MetricName, f64> {
        pairs
            .iter()
            .map(|(k, v)| (MetricName::parse((*k).to_owned()).expect("name"), *v))
            .collect()
    }

    #[test]
    fn guardrails_parse_print_back_and_refuse_what_they_cannot_read() {
        for text in [
            "p99_latency_ms <= 250",
            "error_rate <= 0.01",
            "throughput >= 100",
            "p99_latency_ms <= parent * 1.1",
        ] {
            let g = Guardrail::parse(text).expect(text);
            assert_eq!(g.to_string(), text);
        }
        let g: Guardrail = serde_json::from_str("\"latency<=parent\"").expect("json");
        assert_eq!(g.bound, Bound::Parent(1.0));
        for bad in [
            "latency < 3",
            "latency <= fast",
            "bad name <= 3",
            "latency <= parent * 0",
            "latency <= parent + 2",
            "latency <= inf",
        ] {
            assert!(Guardrail::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_breach_is_a_measured_value_past_its_bound_absolute_or_against_the_parent() {
        let rails: Vec<Guardrail> = ["p99 <= 250", "p99 <= parent * 1.10", "ok >= 0.99"]
            .into_iter()
            .map(|t| Guardrail::parse(t).expect(t))
            .collect();
        let parent = metrics(&[("p99", 200.0)]);
        let fine = metrics(&[("p99", 219.0), ("ok", 0.995)]);
        assert!(breaches(&rails, &fine, Some(&parent)).is_empty());
        let slow = metrics(&[("p99", 230.0), ("ok", 0.98)]);
        let found = breaches(&rails, &slow, Some(&parent));
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[0].guardrail, "p99 <= parent * 1.1");
        assert!((found[0].limit - 220.0).abs() < 1e-9);
        assert_eq!(found[1].guardrail, "ok >= 0.99");
        assert_eq!(
            found[1].to_string(),
            "guardrail ok >= 0.99 breached: 0.98 against a limit of 0.99"
        );
        // Unmeasured metrics, or a parent that never reported one, break nothing.
        assert!(breaches(&rails, &metrics(&[]), Some(&parent)).is_empty());
        assert!(breaches(&rails[1..2], &slow, None).is_empty());
    }

    #[test]
    fn objective_fitness_is_the_weighted_signed_sum_with_targets_capping() {
        let objectives: Vec<Objective> = serde_json::from_str(
            r#"[{"metric": "throughput", "direction": "maximize", "weight": 2, "target": 500},
                {"metric": "p99", "direction": "minimize", "weight": 0.5},
                {"metric": "cost", "direction": "minimize", "target": 10}]"#,
        )
        .expect("objectives");
        // By hand: 2 * min(400, 500) - 0.5 * 120 - max(12, 10) = 800 - 60 - 12.
        let report = metrics(&[("throughput", 400.0), ("p99", 120.0), ("cost", 12.0)]);
        assert!((objective_fitness(&objectives, &report).expect("fit") - 728.0).abs() < 1e-9);
        // Past the targets nothing more is earned: 2 * 500 - 60 - 10.
        let beyond = metrics(&[("throughput", 900.0), ("p99", 120.0), ("cost", 3.0)]);
        assert!((objective_fitness(&objectives, &beyond).expect("fit") - 930.0).abs() < 1e-9);
        assert_eq!(
            objective_fitness(&objectives, &metrics(&[("throughput", 1.0)])),
            Err("objective metric p99 not reported".into())
        );
    }

    #[test]
    fn the_dominated_points_are_those_another_beats_on_one_and_matches_on_the_other() {
        let x: Objective =
            serde_json::from_str(r#"{"metric": "throughput", "direction": "maximize"}"#)
                .expect("x");
        let y: Objective =
            serde_json::from_str(r#"{"metric": "p99", "direction": "minimize"}"#).expect("y");
        // (throughput, p99): the second is beaten by the first on both; the third trades.
        let points = [(100.0, 50.0), (90.0, 60.0), (120.0, 70.0), (100.0, 50.0)];
        assert_eq!(dominated(&points, &x, &y), [false, true, false, false]);
    }
}
