//! What the models see of the running system besides its genes: the metrics it reported per
//! generation, the fitness trend, the DNA file's requirements and constraints, and the latest
//! load. Every part is numbers, enums or quoted, capped strings (see `prompts`), and a prompt
//! that would outgrow its budget loses its oldest history first, whole entries at a time, so
//! the document stays valid JSON.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::domain::{Constraints, EvaluationOutcome, HistoryEntry, MetricName};

/// Metrics per generation shown to a model, by name order: enough for latency, errors and
/// load, and a bound on what a chatty running system can put in a prompt.
pub const METRICS_PER_ENTRY: usize = 8;

/// Generations the trend is fitted over.
pub const TREND_WINDOW: usize = 10;

/// Most characters of a prompt's data document (about 6,000 tokens at 4 characters a token):
/// well inside every routed model's context, and a cap on what one call can cost.
pub const PROMPT_BUDGET_CHARS: usize = 24_000;

/// A generation's metrics as the prompt shows them: finite values of allowed names, at most
/// [`METRICS_PER_ENTRY`].
pub fn metrics_json(metrics: &BTreeMap<MetricName, f64>) -> Value {
    Value::Object(
        metrics
            .iter()
            .filter(|(_, v)| v.is_finite())
            .take(METRICS_PER_ENTRY)
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect(),
    )
}

/// The fitness trend of the kept generations, newest last: the least-squares slope per
/// generation over the last [`TREND_WINDOW`] measured ones, its direction, and the rollbacks
/// among the same closes. The seed's `_calculate_trend`.
pub fn trend_json(history: &[HistoryEntry]) -> Value {
    let recent = &history[history.len().saturating_sub(TREND_WINDOW)..];
    let points: Vec<f64> = recent
        .iter()
        .filter(|h| h.outcome == EvaluationOutcome::Keep)
        .filter_map(|h| h.fitness)
        .filter(|f| f.is_finite())
        .collect();
    let rollbacks = recent
        .iter()
        .filter(|h| h.outcome != EvaluationOutcome::Keep)
        .count();
    let slope = slope(&points);
    let direction = match slope {
        None => "unknown",
        Some(s) if s.abs() <= 1e-9 => "flat",
        Some(s) if s > 0.0 => "improving",
        Some(_) => "declining",
    };
    json!({
        "direction": direction,
        "slope_per_generation": slope,
        "measured_generations": points.len(),
        "rollbacks": rollbacks,
    })
}

/// Least-squares slope of `y` against 0, 1, 2, ...; `None` with fewer than two points.
fn slope(y: &[f64]) -> Option<f64> {
    if y.len() < 2 {
        return None;
    }
    #[allow(clippy::cast_precision_loss)]
    let n = y.len() as f64;
    let mean_x = (n - 1.0) / 2.0;
    let mean_y = y.iter().sum::<f64>() / n;
    let (mut num, mut den) = (0.0, 0.0);
    for (i, v) in y.iter().enumerate() {
        #[allow(clippy::cast_precision_loss)]
        let dx = i as f64 - mean_x;
        num += dx * (v - mean_y);
        den += dx * dx;
    }
    Some(num / den)
}

/// The latest measured load: the newest closed window's metrics.
pub fn load_json(history: &[HistoryEntry]) -> Value {
    history.iter().rev().find(|h| !h.metrics.is_empty()).map_or(
        Value::Null,
        |h| json!({"generation": h.generation, "metrics": metrics_json(&h.metrics)}),
    )
}

/// The requirements and constraints, quoted and capped like every other string.
pub fn constraints_json(c: &Constraints, quote: impl Fn(&str, usize) -> String) -> Value {
    let requirements: serde_json::Map<String, Value> = c
        .performance_requirements
        .iter()
        .map(|(k, v)| {
            let v = match v {
                Value::String(s) => Value::String(quote(s, 200)),
                other => other.clone(),
            };
            (quote(k, 64), v)
        })
        .collect();
    json!({
        "performance_requirements": requirements,
        "business_constraints": c.business_constraints.iter().map(|b| quote(b, 200)).collect::<Vec<_>>(),
        // Parsed on the way in (metric names and numbers only), so they go as written.
        "guardrails": c.guardrails.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "objectives": c.objectives,
    })
}

/// Trims `data` to [`PROMPT_BUDGET_CHARS`]: drops the oldest `history` entries one at a time,
/// then their metrics, never cutting inside a value, so the document stays well-formed JSON.
pub fn fit_to_budget(data: &mut Value) {
    while data.to_string().len() > PROMPT_BUDGET_CHARS {
        let Some(history) = data.get_mut("history").and_then(Value::as_array_mut) else {
            return;
        };
        if history.len() > 1 {
            history.remove(0);
        } else if let Some(entry) = history.first_mut().and_then(Value::as_object_mut) {
            if entry.remove("metrics").is_none() {
                return;
            }
        } else {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;

    fn entry(generation: u64, fitness: f64, outcome: EvaluationOutcome) -> HistoryEntry {
        HistoryEntry {
            generation,
            fitness: Some(fitness),
            outcome,
            baseline_fitness: None,
            changes: Vec::new(),
            predicted_impact: 0.0,
            plan_step: None,
            reports: 1,
            failed: 0,
            metrics: BTreeMap::from([(
                MetricName::parse("p99_latency_ms").expect("name"),
                40.0 + f64::from(u32::try_from(generation).expect("small")),
            )]),
            breaches: Vec::new(),
            significance: None,
            canary: None,
            closed_at: Utc::now(),
        }
    }

    #[test]
    fn the_trend_is_the_slope_of_the_kept_fitness() {
        use EvaluationOutcome::{Keep, Rollback};
        let history = [
            entry(0, 1.0, Keep),
            entry(1, 2.0, Keep),
            entry(2, 0.5, Rollback),
            entry(3, 3.0, Keep),
        ];
        let trend = trend_json(&history);
        assert_eq!(trend["direction"], "improving");
        assert_eq!(trend["slope_per_generation"], 1.0);
        assert_eq!(trend["rollbacks"], 1);
        assert_eq!(trend_json(&history[..1])["direction"], "unknown");
        let falling = [entry(0, 3.0, Keep), entry(1, 1.0, Keep)];
        assert_eq!(trend_json(&falling)["direction"], "declining");
    }

    #[test]
    fn a_prompt_over_budget_loses_its_oldest_history_and_stays_json() {
        let big = "x".repeat(1_000);
        let history: Vec<Value> = (0..60)
            .map(|i| json!({"generation": i, "note": big, "metrics": {"a": 1}}))
            .collect();
        let mut data = json!({"role": "analyze", "history": history});
        fit_to_budget(&mut data);
        let text = data.to_string();
        assert!(text.len() <= PROMPT_BUDGET_CHARS, "{}", text.len());
        let kept = data["history"].as_array().expect("history");
        assert!(!kept.is_empty());
        assert_eq!(
            kept.last().expect("newest")["generation"],
            59,
            "the newest stay"
        );
        serde_json::from_str::<Value>(&text).expect("still JSON");
    }

    #[test]
    fn the_load_is_the_newest_measured_metrics() {
        let history = [
            entry(0, 1.0, EvaluationOutcome::Keep),
            entry(1, 2.0, EvaluationOutcome::Keep),
        ];
        let load = load_json(&history);
        assert_eq!(load["generation"], 1);
        assert_eq!(load["metrics"]["p99_latency_ms"], 41.0);
    }
}
