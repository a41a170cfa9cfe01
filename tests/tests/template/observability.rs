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

/// The dashboard's body as JSON: its `${...}` substitutions (inside JSON strings) replaced with a
/// plain word.
fn dashboard_body() -> Value {
    let t = template();
    let (_, dashboard) = first(t, "AWS::CloudWatch::Dashboard", "a dashboard");
    let body = text(&dashboard["Properties"]["DashboardBody"]).expect("a dashboard body");
    let mut plain = String::with_capacity(body.len());
    let mut rest = body;
    while let Some(start) = rest.find("${") {
        plain.push_str(&rest[..start]);
        plain.push_str("substituted");
        let end = rest[start..].find('}').expect("closed substitution");
        rest = &rest[start + end + 1..];
    }
    plain.push_str(rest);
    serde_json::from_str(&plain).expect("the dashboard body is JSON")
}

fn widgets(body: &Value) -> &Vec<Value> {
    body["widgets"].as_array().expect("widgets")
}

/// The metric names of namespace `Evolve` the widgets of a dashboard body name.
fn dashboard_metrics(body: &Value) -> BTreeSet<String> {
    widgets(body).iter().flat_map(widget_metrics).collect()
}

/// The `Evolve` metric names one widget names, in metric rows and `SEARCH` expressions.
fn widget_metrics(widget: &Value) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let Some(rows) = widget["properties"]["metrics"].as_array() else {
        return names;
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
    names
}

/// The namespaces a widget's metric rows name (`SEARCH` expressions by their schema's first
/// part), so a live widget cannot slip in a standard-resolution AWS metric.
fn widget_namespaces(widget: &Value) -> BTreeSet<String> {
    let rows = widget["properties"]["metrics"]
        .as_array()
        .expect("a metric widget");
    let mut namespaces = BTreeSet::new();
    for row in rows {
        let first = &row[0];
        if let Some(expression) = first["expression"].as_str() {
            let schema = expression.split_once('{').map_or("", |(_, s)| s);
            namespaces.insert(schema.split([',', '}']).next().unwrap_or("").to_owned());
        } else if let Some(namespace) = first.as_str().filter(|n| *n != ".") {
            namespaces.insert(namespace.to_owned());
        }
    }
    namespaces
}

/// The period (seconds, the last argument) of each `SEARCH(...)` expression of a widget.
fn search_periods(widget: &Value) -> Vec<u64> {
    alternatives(&widget["properties"]["metrics"])
        .into_iter()
        .filter_map(|m| m["expression"].as_str())
        .filter(|e| e.starts_with("SEARCH("))
        .map(|e| {
            let (_, last) = e.trim_end_matches(')').rsplit_once(',').expect("a period");
            last.trim().parse().expect("a period in seconds")
        })
        .collect()
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

    let shown = dashboard_metrics(&dashboard_body());
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

/// The top row is live: every widget in it draws only `Evolve` metrics the code stores at one-second
/// resolution, in periods of at most 10 s (the high-resolution periods are 1, 5, 10 and 30 s), so
/// a cycle, decision, rollback, spend or error shows within 30 seconds; together they draw every
/// high-resolution metric, and no slower widget shares the row.
#[test]
fn the_dashboard_has_a_live_row_of_high_resolution_metrics_in_ten_second_periods() {
    let body = dashboard_body();
    assert_eq!(
        body["periodOverride"], "inherit",
        "the dashboard keeps each widget's period whatever the time range"
    );
    let top = widgets(&body)
        .iter()
        .filter_map(|w| w["y"].as_u64())
        .min()
        .expect("a widget");
    let live: Vec<&Value> = widgets(&body)
        .iter()
        .filter(|w| w["y"].as_u64() == Some(top))
        .collect();
    assert!(!live.is_empty(), "a live row at the top");
    let high: BTreeSet<&str> = metrics::HIGH_RESOLUTION.iter().copied().collect();
    let mut shown = BTreeSet::new();
    for widget in live {
        let title = widget["properties"]["title"].as_str().unwrap_or("");
        assert_eq!(widget["type"], "metric", "{title}");
        let period = widget["properties"]["period"]
            .as_u64()
            .unwrap_or_else(|| panic!("{title}: no period"));
        assert!([1, 5, 10].contains(&period), "{title}: period {period}");
        for search in search_periods(widget) {
            assert!(
                [1, 5, 10].contains(&search),
                "{title}: SEARCH period {search}"
            );
        }
        assert_eq!(
            widget_namespaces(widget),
            BTreeSet::from([metrics::NAMESPACE.to_owned()]),
            "{title}: only the suite's own metrics can be high resolution"
        );
        let names = widget_metrics(widget);
        assert!(!names.is_empty(), "{title}: draws no metric");
        for name in &names {
            assert!(
                high.contains(name.as_str()),
                "{title}: {name} is not emitted at high resolution"
            );
        }
        shown.extend(names);
    }
    let missing: Vec<&&str> = high.iter().filter(|m| !shown.contains(**m)).collect();
    assert!(missing.is_empty(), "the live row does not draw {missing:?}");
}
