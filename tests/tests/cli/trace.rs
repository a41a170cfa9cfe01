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

#[test]
fn trace_prints_a_cycles_events_llm_calls_and_decision_in_time_order_by_any_of_its_ids() {
    let dir = tempfile::tempdir().expect("dir");
    let out = evolve(dir.path(), &["demo", "--generations", "2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let decisions = evolve(dir.path(), &["decisions", "--json"]);
    let decisions: Value = serde_json::from_slice(&decisions.stdout).expect("decisions JSON");
    let first = decisions[0]["decision_id"].as_str().expect("a decision");

    let by_decision = evolve(dir.path(), &["trace", first, "--json"]);
    assert!(by_decision.status.success(), "{}", stderr(&by_decision));
    let timeline: Value = serde_json::from_slice(&by_decision.stdout).expect("timeline JSON");
    let entries = timeline.as_array().expect("entries");
    let trace_id = entries[0]["trace_id"].as_str().expect("trace id");
    assert_eq!(trace_id.len(), 32);
    assert!(
        entries.iter().all(|e| e["trace_id"] == trace_id),
        "{timeline}"
    );
    assert!(
        entries.iter().all(|e| e["message_id"]
            .as_str()
            .is_some_and(|m| m.starts_with("msg_"))),
        "{timeline}"
    );
    let times: Vec<&str> = entries.iter().filter_map(|e| e["at"].as_str()).collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "time order: {times:?}"
    );
    let kinds: BTreeSet<&str> = entries.iter().filter_map(|e| e["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        BTreeSet::from(["decision", "event", "llm"]),
        "{timeline}"
    );
    assert!(entries.iter().any(|e| e["id"] == first));
    assert!(
        entries.iter().any(|e| e["what"]
            .as_str()
            .is_some_and(|w| w.starts_with("mutation_applied"))),
        "the cycle's snapshot is in it: {timeline}"
    );

    // The trace id itself, and a message id of the cycle, give the same timeline.
    for id in [
        trace_id,
        entries[0]["message_id"].as_str().expect("message"),
    ] {
        let again = evolve(dir.path(), &["trace", id, "--json"]);
        assert!(again.status.success(), "{}", stderr(&again));
        assert_eq!(
            serde_json::from_slice::<Value>(&again.stdout).expect("JSON"),
            timeline
        );
    }
    let unknown = evolve(dir.path(), &["trace", "dec_nothing"]);
    assert_eq!(unknown.status.code(), Some(2), "{}", stderr(&unknown));
}
