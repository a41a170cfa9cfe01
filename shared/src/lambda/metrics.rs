//! Metrics as CloudWatch Embedded Metric Format log lines: one JSON object per line on stdout,
//! which CloudWatch Logs turns into metrics without a `PutMetricData` call on the hot path.

use std::io::Write as _;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

/// The CloudWatch namespace of every metric of the suite.
pub const NAMESPACE: &str = "Evolve";
/// The one dimension: the function that emitted the metric.
pub const DIMENSION: &str = "Function";
/// The second dimension of the LLM metrics: the model that answered.
pub const MODEL_DIMENSION: &str = "Model";

/// Records handled to completion (including acknowledged no-ops).
pub const MESSAGES_PROCESSED: &str = "MessagesProcessed";
/// Records left on the queue for SQS to redeliver (batch item failures).
pub const MESSAGES_RETRIED: &str = "MessagesRetried";
/// Records moved to their queue's dead-letter queue.
pub const MESSAGES_DEAD_LETTERED: &str = "MessagesDeadLettered";
/// Of the retried records: left unstarted because the invocation's deadline was too near (a
/// steady count means batches too large for the function's timeout).
pub const MESSAGES_NOT_STARTED: &str = "MessagesNotStarted";
/// Of the retried records: their handling panicked (a defect; the invocation went on).
pub const MESSAGES_PANICKED: &str = "MessagesPanicked";
/// Redeliveries of completed messages (their stored messages were sent again).
pub const DUPLICATES: &str = "Duplicates";
/// LLM role calls answered by the local engine instead of Bedrock.
pub const FALLBACKS: &str = "Fallbacks";
/// LLM spend, in nano-USD.
pub const LLM_COST_NANO_USD: &str = "LlmCostNanoUsd";
pub const LLM_TOKENS: &str = "LlmTokens";
/// The head generation of a system.
pub const GENERATION: &str = "Generation";
pub const FITNESS: &str = "Fitness";
pub const ROLLBACKS: &str = "Rollbacks";
/// The budget mode: 0 normal, 1 economy, 2 paused.
pub const BUDGET_MODE: &str = "BudgetMode";
/// Scheduled invocations (ticks, sweeps) handled.
pub const SCHEDULED_RUNS: &str = "ScheduledRuns";
/// Webhook posts of alerts (notify): one per alert and webhook.
pub const ALERTS_POSTED: &str = "AlertsPosted";
/// Alerts notify acknowledged without posting (filtered out, or no webhook configured).
pub const ALERTS_FILTERED: &str = "AlertsFiltered";

/// The metrics stored at one-second resolution (`StorageResolution: 1`), so the dashboard's live
/// row can draw them in 10-second periods and a cycle, a decision, a rollback, a spend or an
/// error shows within 30 seconds of happening (standard resolution aggregates to the minute and
/// shows a point only once that minute closes). The cycle's flow is `MessagesProcessed` per
/// function (decide's are the decisions) with the generation and fitness it moves; the rollbacks;
/// the spend in tokens and nano-USD; the errors: retries, dead letters, panics and fallbacks to
/// the local engine. The rest stay standard: the budget mode and the scheduled runs are written
/// once a minute, and duplicates, late starts and alerts are counts read over hours. High
/// resolution costs no more to store; its one-second points are kept three hours, then roll up
/// to the minute like the others.
pub const HIGH_RESOLUTION: &[&str] = &[
    MESSAGES_PROCESSED,
    GENERATION,
    FITNESS,
    ROLLBACKS,
    LLM_COST_NANO_USD,
    LLM_TOKENS,
    MESSAGES_RETRIED,
    MESSAGES_DEAD_LETTERED,
    MESSAGES_PANICKED,
    FALLBACKS,
];

/// Whether `name` is stored at one-second resolution ([`HIGH_RESOLUTION`]).
pub fn is_high_resolution(name: &str) -> bool {
    HIGH_RESOLUTION.contains(&name)
}

/// CloudWatch units used by the suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Count,
    Milliseconds,
    None,
}

impl Unit {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Count => "Count",
            Self::Milliseconds => "Milliseconds",
            Self::None => "None",
        }
    }
}

/// One value of one metric.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Metric {
    pub name: &'static str,
    pub unit: Unit,
    pub value: f64,
}

impl Metric {
    pub fn count(name: &'static str, value: u32) -> Self {
        Self {
            name,
            unit: Unit::Count,
            value: f64::from(value),
        }
    }

    pub fn gauge(name: &'static str, value: f64) -> Self {
        Self {
            name,
            unit: Unit::None,
            value,
        }
    }
}

/// The EMF line for `metrics` emitted by `function` at `at`; `None` when there is nothing to
/// emit. Non-finite values are dropped (JSON has no representation for them).
pub fn render(function: &str, at: DateTime<Utc>, metrics: &[Metric]) -> Option<String> {
    let metrics: Vec<&Metric> = metrics.iter().filter(|m| m.value.is_finite()).collect();
    if metrics.is_empty() {
        return None;
    }
    Some(emf_line(
        at,
        &json!([[DIMENSION]]),
        &[(DIMENSION, function)],
        &metrics,
    ))
}

/// One EMF line: `metrics` declared under each of `dimension_sets`, with the dimensions' values
/// and the metrics' values.
fn emf_line(
    at: DateTime<Utc>,
    dimension_sets: &Value,
    dimensions: &[(&str, &str)],
    metrics: &[&Metric],
) -> String {
    let definitions: Vec<Value> = metrics.iter().map(|m| definition(m)).collect();
    let mut line = Map::new();
    line.insert(
        "_aws".into(),
        json!({
            "Timestamp": at.timestamp_millis(),
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": dimension_sets,
                "Metrics": definitions,
            }],
        }),
    );
    for (name, value) in dimensions {
        line.insert((*name).into(), Value::from(*value));
    }
    for m in metrics {
        line.insert(m.name.into(), json!(m.value));
    }
    Value::Object(line).to_string()
}

/// A metric's EMF definition; high-resolution metrics carry `StorageResolution: 1` (absent, the
/// metric is stored at the standard 60 seconds).
fn definition(metric: &Metric) -> Value {
    let mut definition = json!({ "Name": metric.name, "Unit": metric.unit.as_str() });
    if is_high_resolution(metric.name) {
        definition["StorageResolution"] = json!(1);
    }
    definition
}

/// The lines for what a batch changed: the head's generation, the fitness of the evaluations
/// it closed and its rollbacks (snapshot), and per model the LLM tokens, cost and fallbacks
/// (the LLM-calling stages), declared under both `Function` and `Function` + `Model`.
pub fn render_observed(
    function: &str,
    at: DateTime<Utc>,
    observed: &[crate::pipeline::Observed],
) -> Vec<String> {
    let mut lines = Vec::new();
    let mut dna = Vec::new();
    if let Some(g) = observed.iter().filter_map(|o| o.generation).next_back() {
        dna.push(Metric::gauge(GENERATION, g as f64));
    }
    if let Some(f) = observed.iter().filter_map(|o| o.fitness).next_back() {
        dna.push(Metric::gauge(FITNESS, f));
    }
    let rollbacks: u32 = observed.iter().map(|o| o.rollbacks).sum();
    if rollbacks > 0 || !dna.is_empty() {
        dna.push(Metric::count(ROLLBACKS, rollbacks));
    }
    lines.extend(render(function, at, &dna));
    let mut by_model: std::collections::BTreeMap<&str, (u64, u64, u32)> =
        std::collections::BTreeMap::new();
    for call in observed.iter().flat_map(|o| &o.llm_calls) {
        let entry = by_model.entry(call.model_id.as_str()).or_default();
        entry.0 += call.usage.total();
        entry.1 += call.cost_nano_usd;
        entry.2 += u32::from(call.fallback.is_some());
    }
    for (model, (tokens, cost, fallbacks)) in by_model {
        let metrics = [
            Metric::gauge(LLM_TOKENS, tokens as f64),
            Metric::gauge(LLM_COST_NANO_USD, cost as f64),
            Metric::count(FALLBACKS, fallbacks),
        ];
        let metrics: Vec<&Metric> = metrics.iter().collect();
        lines.push(emf_line(
            at,
            &json!([[DIMENSION], [DIMENSION, MODEL_DIMENSION]]),
            &[(DIMENSION, function), (MODEL_DIMENSION, model)],
            &metrics,
        ));
    }
    lines
}

/// Prints [`render_observed`]'s lines to stdout.
pub fn emit_observed(function: &str, at: DateTime<Utc>, observed: &[crate::pipeline::Observed]) {
    let mut out = std::io::stdout().lock();
    for line in render_observed(function, at, observed) {
        let _ = writeln!(out, "{line}");
    }
}

/// Prints the EMF line for `metrics` to stdout. Losing a metric never fails a message.
pub fn emit(function: &str, at: DateTime<Utc>, metrics: &[Metric]) {
    if let Some(line) = render(function, at, metrics) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn observed_changes_become_dna_and_per_model_llm_lines() {
        use crate::domain::{Role, SystemId};
        use crate::pipeline::Observed;
        use crate::store::{LlmCallRecord, Usage};
        let at = Utc
            .with_ymd_and_hms(2026, 3, 1, 12, 0, 0)
            .single()
            .expect("valid time");
        let call = |model: &str, fallback: bool| LlmCallRecord {
            trace_id: None,
            call_id: "c".into(),
            system_id: SystemId::parse("s").expect("id"),
            envelope_id: "e".into(),
            role: Role::Analyze,
            model_id: model.into(),
            usage: Usage {
                input_tokens: 100,
                output_tokens: 20,
                ..Usage::default()
            },
            cost_nano_usd: 7,
            latency_ms: 3,
            bedrock_requests: 1,
            fallback: fallback.then(|| "throttled".into()),
            cache_hit: false,
            at,
        };
        let observed = vec![
            Observed {
                llm_calls: vec![call("m1", false), call("m1", true)],
                generation: Some(4),
                fitness: Some(12.5),
                rollbacks: 1,
            },
            Observed {
                llm_calls: vec![call("m2", false)],
                ..Observed::default()
            },
        ];
        let lines: Vec<Value> = render_observed("snapshot", at, &observed)
            .iter()
            .map(|l| serde_json::from_str(l).expect("JSON"))
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0][GENERATION], 4.0);
        assert_eq!(lines[0][FITNESS], 12.5);
        assert_eq!(lines[0][ROLLBACKS], 1.0);
        assert_eq!(lines[1][MODEL_DIMENSION], "m1");
        assert_eq!(lines[1][LLM_TOKENS], 240.0);
        assert_eq!(lines[1][LLM_COST_NANO_USD], 14.0);
        assert_eq!(lines[1][FALLBACKS], 1.0);
        assert_eq!(
            lines[2]["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([["Function"], ["Function", "Model"]])
        );
        assert!(render_observed("x", at, &[Observed::default()]).is_empty());
    }

    #[test]
    fn a_line_declares_its_metrics_under_the_function_dimension() {
        let at = Utc
            .with_ymd_and_hms(2026, 3, 1, 12, 0, 0)
            .single()
            .expect("valid time");
        let line = render(
            "decide",
            at,
            &[
                Metric::count(MESSAGES_PROCESSED, 3),
                Metric::gauge(BUDGET_MODE, 1.0),
            ],
        )
        .expect("a line");
        assert!(!line.contains('\n'));
        let v: Value = serde_json::from_str(&line).expect("json");
        assert_eq!(v["_aws"]["Timestamp"], json!(at.timestamp_millis()));
        let cw = &v["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(cw["Namespace"], "Evolve");
        assert_eq!(cw["Dimensions"], json!([["Function"]]));
        assert_eq!(
            cw["Metrics"],
            json!([
                {"Name": "MessagesProcessed", "Unit": "Count", "StorageResolution": 1},
                {"Name": "BudgetMode", "Unit": "None"}
            ])
        );
        assert_eq!(v["Function"], "decide");
        assert_eq!(v["MessagesProcessed"], json!(3.0));
        assert_eq!(v["BudgetMode"], json!(1.0));
    }

    /// The metric definitions of an EMF line, by name.
    fn definitions(line: &str) -> Vec<Value> {
        let v: Value = serde_json::from_str(line).expect("json");
        v["_aws"]["CloudWatchMetrics"][0]["Metrics"]
            .as_array()
            .expect("metric definitions")
            .clone()
    }

    #[test]
    fn high_resolution_metrics_carry_storage_resolution_one_and_standard_ones_none() {
        let at = Utc::now();
        let line = render(
            "snapshot",
            at,
            &[
                Metric::count(ROLLBACKS, 1),
                Metric::count(MESSAGES_PANICKED, 1),
                Metric::count(DUPLICATES, 1),
                Metric::gauge(BUDGET_MODE, 0.0),
            ],
        )
        .expect("a line");
        let definitions = definitions(&line);
        assert_eq!(definitions[0]["StorageResolution"], json!(1));
        assert_eq!(definitions[1]["StorageResolution"], json!(1));
        assert!(definitions[2].get("StorageResolution").is_none());
        assert!(definitions[3].get("StorageResolution").is_none());
    }

    #[test]
    fn the_llm_lines_declare_spend_and_fallbacks_at_high_resolution() {
        use crate::pipeline::Observed;
        use crate::store::LlmCallRecord;
        let at = Utc::now();
        let call = LlmCallRecord {
            trace_id: None,
            call_id: "c".into(),
            system_id: crate::domain::SystemId::parse("s").expect("id"),
            envelope_id: "e".into(),
            role: crate::domain::Role::Decide,
            model_id: "m".into(),
            usage: crate::store::Usage::default(),
            cost_nano_usd: 1,
            latency_ms: 1,
            bedrock_requests: 1,
            fallback: None,
            cache_hit: false,
            at,
        };
        let observed = [Observed {
            llm_calls: vec![call],
            ..Observed::default()
        }];
        let lines = render_observed("decide", at, &observed);
        assert_eq!(lines.len(), 1);
        for definition in definitions(&lines[0]) {
            assert_eq!(definition["StorageResolution"], json!(1), "{definition}");
        }
    }

    #[test]
    fn the_high_resolution_list_names_distinct_metrics() {
        let distinct: std::collections::BTreeSet<&str> = HIGH_RESOLUTION.iter().copied().collect();
        assert_eq!(distinct.len(), HIGH_RESOLUTION.len());
        assert!(!is_high_resolution(BUDGET_MODE));
        assert!(!is_high_resolution(SCHEDULED_RUNS));
    }

    #[test]
    fn nothing_or_only_non_finite_values_render_no_line() {
        let at = Utc::now();
        assert_eq!(render("snapshot", at, &[]), None);
        assert_eq!(
            render("snapshot", at, &[Metric::gauge(FITNESS, f64::NAN)]),
            None
        );
    }
}
