//! `evolve demo --trace FILE`: the run's spans as OTLP JSON, one trace per cycle, each a tree
//! under its `cycle` root (docs/architecture.md, "Tracing").

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::{evolve, stderr};

/// An attribute's value of an OTLP span, whatever its type.
fn attribute<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)
        .map(|a| &a["value"])
}

#[test]
fn demo_trace_writes_one_otlp_trace_per_cycle_with_stages_llm_calls_and_commits_under_it() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("trace.json");
    let file_arg = file.to_str().expect("utf-8 path");
    let out = evolve(
        dir.path(),
        &["demo", "--generations", "4", "--trace", file_arg],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let otlp: Value =
        serde_json::from_slice(&std::fs::read(&file).expect("trace file")).expect("JSON");
    let resource = &otlp["resourceSpans"][0];
    assert_eq!(resource["resource"]["attributes"][0]["key"], "service.name");
    assert_eq!(resource["scopeSpans"][0]["scope"]["name"], "evolve");
    let spans = resource["scopeSpans"][0]["spans"]
        .as_array()
        .expect("spans");

    let mut traces: BTreeMap<&str, Vec<&Value>> = BTreeMap::new();
    for span in spans {
        let trace_id = span["traceId"].as_str().expect("traceId");
        assert_eq!(trace_id.len(), 32);
        assert_eq!(span["spanId"].as_str().map(str::len), Some(16));
        assert!(span["startTimeUnixNano"].as_str().is_some(), "{span}");
        traces.entry(trace_id).or_default().push(span);
    }

    // Cycles: the closed evaluations of mutated generations.
    let history = evolve(dir.path(), &["history", "--json"]);
    assert!(history.status.success(), "{}", stderr(&history));
    let history: Value = serde_json::from_slice(&history.stdout).expect("history JSON");
    let cycles = history
        .as_array()
        .expect("entries")
        .iter()
        .filter(|h| h["changes"].as_array().is_some_and(|c| !c.is_empty()))
        .count();
    assert_eq!(cycles, 4);

    let mut cycle_traces = 0;
    for (trace_id, spans) in &traces {
        let ids: BTreeMap<&str, &Value> = spans
            .iter()
            .map(|s| (s["spanId"].as_str().expect("spanId"), *s))
            .collect();
        assert_eq!(ids.len(), spans.len(), "span ids are unique in {trace_id}");
        let roots: Vec<&&Value> = spans
            .iter()
            .filter(|s| s.get("parentSpanId").is_none())
            .collect();
        assert_eq!(roots.len(), 1, "one root in {trace_id}: {roots:?}");
        for span in spans {
            if let Some(parent) = span.get("parentSpanId") {
                let parent = parent.as_str().expect("hex");
                assert!(
                    ids.contains_key(parent),
                    "the parent of {} is in trace {trace_id}",
                    span["name"]
                );
            }
        }
        if roots[0]["name"] != "cycle" {
            continue;
        }
        cycle_traces += 1;
        let root = roots[0]["spanId"].as_str().expect("root id");
        // Every span reaches the cycle's root through its parents.
        for span in spans {
            let mut at = *span;
            while let Some(parent) = at.get("parentSpanId").and_then(Value::as_str) {
                at = ids[parent];
            }
            assert_eq!(at["spanId"], root, "{} is under the cycle", span["name"]);
        }
        let names: BTreeSet<&str> = spans.iter().filter_map(|s| s["name"].as_str()).collect();
        for stage in ["analyze", "decide", "snapshot", "store commit"] {
            assert!(names.contains(stage), "{stage} in {trace_id}: {names:?}");
        }
    }
    assert_eq!(cycle_traces, cycles, "one trace per cycle");

    let calls: Vec<&Value> = spans
        .iter()
        .filter(|s| s["name"].as_str().is_some_and(|n| n.starts_with("llm ")))
        .collect();
    assert!(!calls.is_empty());
    for call in calls {
        assert!(attribute(call, "model").is_some(), "{call}");
        assert!(attribute(call, "cost_nano_usd").is_some(), "{call}");
        assert!(attribute(call, "input_tokens").is_some(), "{call}");
        assert_eq!(call["kind"], 3, "a client span");
    }
}
