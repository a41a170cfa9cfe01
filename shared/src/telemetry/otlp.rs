//! OTLP/JSON of finished spans: the body of an OTLP/HTTP `POST /v1/traces` and the file of
//! `evolve demo --trace` (docs/architecture.md, "Tracing"). OTLP's JSON mapping writes ids as
//! lower-case hex, 64-bit integers (times, `intValue`) as strings and enums as numbers.

use serde_json::{Value, json};

use super::{AttrValue, FinishedSpan, SpanKind};

/// The instrumentation scope every span is reported under.
pub const SCOPE: &str = "evolve";

/// One `resourceSpans` entry for `service`, holding `spans`.
pub fn encode(service: &str, spans: &[FinishedSpan]) -> Value {
    json!({
        "resourceSpans": [{
            "resource": {
                "attributes": [attribute("service.name", &AttrValue::Str(service.to_owned()))]
            },
            "scopeSpans": [{
                "scope": {"name": SCOPE},
                "spans": spans.iter().map(span).collect::<Vec<_>>()
            }]
        }]
    })
}

fn span(s: &FinishedSpan) -> Value {
    let mut out = json!({
        "traceId": hex::encode(s.trace_id),
        "spanId": hex::encode(s.span_id),
        "name": s.name,
        "kind": kind(s.kind),
        "startTimeUnixNano": nanos(s.start),
        "endTimeUnixNano": nanos(s.end),
        "attributes": s.attributes.iter().map(|(k, v)| attribute(k, v)).collect::<Vec<_>>(),
    });
    if let Some(parent) = s.parent_span_id {
        out["parentSpanId"] = Value::String(hex::encode(parent));
    }
    out
}

/// OTLP's `SpanKind` numbers.
fn kind(kind: SpanKind) -> u8 {
    match kind {
        SpanKind::Internal => 1,
        SpanKind::Client => 3,
        SpanKind::Consumer => 5,
    }
}

fn nanos(at: chrono::DateTime<chrono::Utc>) -> String {
    at.timestamp_nanos_opt()
        .unwrap_or_default()
        .max(0)
        .to_string()
}

fn attribute(key: &str, value: &AttrValue) -> Value {
    let value = match value {
        AttrValue::Str(s) => json!({"stringValue": s}),
        AttrValue::Int(i) => json!({"intValue": i.to_string()}),
        AttrValue::Bool(b) => json!({"boolValue": b}),
        AttrValue::Double(d) => json!({"doubleValue": d}),
    };
    json!({"key": key, "value": value})
}
