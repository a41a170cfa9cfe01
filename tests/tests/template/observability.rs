//! Alarms and the dashboard: they name only metrics the code emits, and every dead-letter queue
//! and function is watched.

use std::collections::BTreeSet;

use serde_json::Value;
use shared::domain::Topic;
use shared::lambda::config;
use shared::lambda::metrics;

use super::cfn::{alternatives, target, template, text};
use super::{consumed_queues, dead_letter_queue, first, functions, topic_id};

/// Every metric the code emits (shared/src/lambda/metrics.rs).
const METRICS: &[&str] = &[
    metrics::MESSAGES_PROCESSED,
    metrics::MESSAGES_RETRIED,
    metrics::MESSAGES_DEAD_LETTERED,
    metrics::MESSAGES_NOT_STARTED,
    metrics::MESSAGES_PANICKED,
    metrics::DUPLICATES,
    metrics::FALLBACKS,
    metrics::LLM_COST_NANO_USD,
    metrics::LLM_TOKENS,
    metrics::GENERATION,
    metrics::FITNESS,
    metrics::ROLLBACKS,
    metrics::BUDGET_MODE,
    metrics::SCHEDULED_RUNS,
    metrics::ALERTS_POSTED,
    metrics::ALERTS_FILTERED,
];

/// The metric names of namespace `Evolve` a dashboard body names (JSON inside `Fn::Sub`).
fn dashboard_metrics(body: &str) -> BTreeSet<String> {
    // `${...}` substitutions sit inside JSON strings: replace them with a plain word.
    let mut plain = String::with_capacity(body.len());
    let mut rest = body;
    while let Some(start) = rest.find("${") {
        plain.push_str(&rest[..start]);
        plain.push_str("substituted");
        let end = rest[start..].find('}').expect("closed substitution");
        rest = &rest[start + end + 1..];
    }
    plain.push_str(rest);
    let body: Value = serde_json::from_str(&plain).expect("the dashboard body is JSON");
    let mut names = BTreeSet::new();
    for widget in body["widgets"].as_array().expect("widgets") {
        let Some(rows) = widget["properties"]["metrics"].as_array() else {
            continue;
        };
        let mut previous: Vec<Value> = Vec::new();
        for row in rows {
            let row = row.as_array().expect("a metric row");
            if let Some(expression) = row.first().and_then(|v| v["expression"].as_str()) {
                names.extend(search_metrics(expression));
                continue;
            }
            // "." repeats the previous row's value at the same position.
            let resolved: Vec<Value> = row
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    if v == "." {
                        previous.get(i).cloned().unwrap_or(Value::Null)
                    } else {
                        v.clone()
                    }
                })
                .collect();
            if resolved.first().and_then(Value::as_str) == Some(metrics::NAMESPACE) {
                names.insert(resolved[1].as_str().expect("metric name").to_owned());
                if let Some(dimension) = resolved.get(2) {
                    assert_eq!(dimension, metrics::DIMENSION, "dimension of {resolved:?}");
                    let function = resolved[3].as_str().expect("dimension value");
                    assert!(
                        config::functions().iter().any(|(p, _)| *p == function),
                        "{function}"
                    );
                }
            }
            previous = resolved;
        }
    }
    names
}

/// `MetricName="X"` of a `SEARCH('{Evolve,...} ...')` expression in namespace `Evolve`.
fn search_metrics(expression: &str) -> Vec<String> {
    let Some(schema) = expression.split_once('{').map(|(_, s)| s) else {
        return Vec::new();
    };
    let namespace = schema.split([',', '}']).next().unwrap_or("");
    if namespace != metrics::NAMESPACE {
        return Vec::new();
    }
    expression
        .split("MetricName=\"")
        .skip(1)
        .filter_map(|s| s.split_once('"').map(|(name, _)| name.to_owned()))
        .collect()
}

#[test]
fn alarms_and_the_dashboard_name_only_metrics_the_code_emits() {
    let t = template();
    let known: BTreeSet<&str> = METRICS.iter().copied().collect();
    let mut alarmed = BTreeSet::new();
    for (id, alarm) in t.of_type("AWS::CloudWatch::Alarm") {
        let p = &alarm["Properties"];
        let mut stats = vec![p];
        stats.extend(
            alternatives(&p["Metrics"])
                .into_iter()
                .map(|m| &m["MetricStat"]["Metric"]),
        );
        for metric in stats {
            if metric["Namespace"] == metrics::NAMESPACE {
                let name = metric["MetricName"].as_str().expect("metric name");
                assert!(
                    known.contains(name),
                    "{id}: {name} is not emitted by the code"
                );
                for dimension in alternatives(&metric["Dimensions"]) {
                    assert_eq!(dimension["Name"], metrics::DIMENSION, "{id}");
                }
                alarmed.insert(name.to_owned());
            }
        }
        let actions = alternatives(&p["AlarmActions"]);
        assert!(
            actions
                .iter()
                .any(|a| target(a) == Some(topic_id(t, Topic::Alerts).as_str())),
            "{id}: alarms publish to the alerts topic"
        );
        let name = text(&p["AlarmName"]).expect("alarm name");
        assert!(
            name.starts_with("${AWS::StackName}-"),
            "{id}: the key policy lets alarms named after the stack publish"
        );
    }
    for needed in [
        metrics::BUDGET_MODE,
        metrics::FITNESS,
        metrics::MESSAGES_PANICKED,
    ] {
        assert!(alarmed.contains(needed), "no alarm on {needed}");
    }

    let (_, dashboard) = first(t, "AWS::CloudWatch::Dashboard", "a dashboard");
    let body = text(&dashboard["Properties"]["DashboardBody"]).expect("a dashboard body");
    let shown = dashboard_metrics(body);
    for name in &shown {
        assert!(
            known.contains(name.as_str()),
            "dashboard: {name} is not emitted by the code"
        );
    }
    for needed in [
        metrics::FITNESS,
        metrics::GENERATION,
        metrics::ROLLBACKS,
        metrics::LLM_TOKENS,
        metrics::LLM_COST_NANO_USD,
        metrics::FALLBACKS,
        metrics::BUDGET_MODE,
    ] {
        assert!(
            shown.contains(needed),
            "the dashboard does not show {needed}"
        );
    }
}

#[test]
fn every_dead_letter_queue_and_function_has_alarms() {
    let t = template();
    let alarms: Vec<&Value> = t
        .of_type("AWS::CloudWatch::Alarm")
        .map(|(_, a)| &a["Properties"])
        .collect();
    let watching = |namespace: &str, metric: &str, resource: &str| {
        alarms.iter().any(|a| {
            a["Namespace"] == namespace
                && a["MetricName"] == metric
                && alternatives(&a["Dimensions"])
                    .iter()
                    .any(|d| target(&d["Value"]) == Some(resource))
        })
    };
    for (queue, _, _) in consumed_queues(t) {
        let dlq = dead_letter_queue(t, &queue);
        assert!(
            watching("AWS/SQS", "ApproximateNumberOfMessagesVisible", dlq),
            "{dlq}"
        );
    }
    for (_, id, _) in functions(t) {
        assert!(watching("AWS/Lambda", "Errors", id), "{id} errors");
        assert!(watching("AWS/Lambda", "Throttles", id), "{id} throttles");
    }
}
