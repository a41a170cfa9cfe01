use std::sync::Arc;

use chrono::{TimeZone, Utc};
use tracing::info_span;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;

use super::*;
use crate::clock::SimClock;
use crate::domain::TraceContext;
use crate::domain::trace::span_id_of;

fn collected(run: impl FnOnce(&SimClock)) -> Vec<FinishedSpan> {
    let clock = Arc::new(SimClock::new(
        Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0)
            .single()
            .expect("time"),
    ));
    let collector = SpanCollector::default();
    collector.start(clock.clone());
    let subscriber =
        tracing_subscriber::registry().with(collector.clone().with_filter(spans_only()));
    tracing::subscriber::with_default(subscriber, || run(&clock));
    collector.drain()
}

fn message_span(id: &str, trace: &TraceContext) -> tracing::Span {
    info_span!(
        "message",
        otel.name = "analyze CycleRequested",
        otel.kind = "consumer",
        system_id = "svc",
        trace_id = %trace.trace_id_hex(),
        span_id = %hex::encode(span_id_of(id)),
        parent_span_id = trace.parent_of(id).map(hex::encode),
    )
}

#[test]
fn spans_inside_a_message_inherit_its_trace_with_derived_ids() {
    let trace = TraceContext::start("msg_1");
    let run = |clock: &SimClock| {
        let message = message_span("msg_1", &trace);
        message.in_scope(|| {
            let stage = info_span!("stage", otel.name = "analyze");
            stage.in_scope(|| {
                clock.advance(chrono::Duration::seconds(2));
                info_span!("llm_call", model = "m", cost_nano_usd = 7_u64).in_scope(|| {});
            });
        });
    };
    let spans = collected(run);
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["llm_call", "analyze", "analyze CycleRequested"]);
    let [call, stage, message] = &spans[..] else {
        panic!("three spans")
    };
    assert!(spans.iter().all(|s| s.trace_id == trace.trace_id));
    assert_eq!(message.span_id, span_id_of("msg_1"));
    assert_eq!(
        message.parent_span_id, None,
        "the message started its trace"
    );
    assert_eq!(message.kind, SpanKind::Consumer);
    assert_eq!(stage.parent_span_id, Some(message.span_id));
    assert_eq!(call.parent_span_id, Some(stage.span_id));
    assert_eq!(stage.end - stage.start, chrono::Duration::seconds(2));
    assert!(
        call.attributes
            .contains(&("cost_nano_usd".into(), AttrValue::Int(7)))
    );
    assert!(
        message
            .attributes
            .contains(&("system_id".into(), AttrValue::Str("svc".into())))
    );
    assert_eq!(
        collected(run).iter().map(|s| s.span_id).collect::<Vec<_>>(),
        spans.iter().map(|s| s.span_id).collect::<Vec<_>>(),
        "a re-run rebuilds the same ids"
    );
}

#[test]
fn a_message_sent_from_another_is_its_child_and_untraced_spans_are_left_out() {
    let root = TraceContext::start("msg_1");
    let child = root.sent_from("msg_1");
    let spans = collected(|_| {
        info_span!("batch").in_scope(|| {
            message_span("msg_2", &child).in_scope(|| {});
        });
    });
    assert_eq!(spans.len(), 1, "{spans:?}");
    assert_eq!(spans[0].parent_span_id, Some(span_id_of("msg_1")));
}

#[test]
fn otlp_json_names_the_service_scope_ids_and_typed_attributes() {
    let trace = TraceContext::start("msg_1");
    let spans = collected(|_| {
        message_span("msg_1", &trace).in_scope(|| {
            info_span!(
                "llm_call",
                model = "m",
                cost_nano_usd = 7_u64,
                cache_hit = false
            )
            .in_scope(|| {});
        });
    });
    let json = otlp::encode("evolve-demo", &spans);
    let resource = &json["resourceSpans"][0];
    assert_eq!(resource["resource"]["attributes"][0]["key"], "service.name");
    assert_eq!(
        resource["resource"]["attributes"][0]["value"]["stringValue"],
        "evolve-demo"
    );
    assert_eq!(resource["scopeSpans"][0]["scope"]["name"], "evolve");
    let out = &resource["scopeSpans"][0]["spans"];
    assert_eq!(out[0]["traceId"], trace.trace_id_hex());
    assert_eq!(out[0]["parentSpanId"], out[1]["spanId"]);
    assert!(out[1].get("parentSpanId").is_none());
    assert_eq!(out[1]["kind"], 5);
    assert_eq!(out[0]["startTimeUnixNano"], "1772366400000000000");
    let attrs = out[0]["attributes"].as_array().expect("attributes");
    assert!(
        attrs.contains(&serde_json::json!({"key": "cost_nano_usd", "value": {"intValue": "7"}}))
    );
    assert!(attrs.contains(&serde_json::json!({"key": "model", "value": {"stringValue": "m"}})));
    assert!(
        attrs.contains(&serde_json::json!({"key": "cache_hit", "value": {"boolValue": false}}))
    );
}

/// A writer the JSON log lines go to, for the test to read.
#[derive(Clone, Default)]
struct Lines(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// docs/architecture.md, "Tracing": every log line of a record's handling names the trace and
/// the system, in the JSON the functions log (the record's span and the message's).
#[tokio::test]
async fn a_functions_json_log_lines_of_a_record_name_its_trace_and_system() {
    use aws_lambda_events::sqs::{SqsEvent, SqsMessage};

    use crate::domain::Queue;
    use crate::lambda::QueueSources;
    use crate::lambda::testing::TestFunction;

    let t = TestFunction::new("snapshot", QueueSources::Only(Queue::Snapshot))
        .await
        .expect("function");
    let report = t.baseline_report(0.5).await.expect("report");
    let mut record = SqsMessage::default();
    record.message_id = Some("sqs-1".into());
    record.body = Some(serde_json::to_string(&report).expect("json"));
    let mut event = SqsEvent::default();
    event.records = vec![record];

    let lines = Lines::default();
    let writer = lines.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .finish();
    {
        let _logging = tracing::subscriber::set_default(subscriber);
        let response = t.deps.sqs(&event).await;
        assert!(response.batch_item_failures.is_empty());
    }
    let text = String::from_utf8(lines.0.lock().expect("lines").clone()).expect("utf-8");
    let trace_id = report.trace().trace_id_hex();
    let in_record: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .filter(|l: &serde_json::Value| {
            l["spans"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| s["name"] == "record"))
        })
        .collect();
    assert!(!in_record.is_empty(), "{text}");
    for line in &in_record {
        let spans = line["spans"].as_array().expect("spans");
        assert!(
            spans.iter().any(|s| s["trace_id"] == trace_id.as_str()),
            "{line}"
        );
        assert!(
            spans
                .iter()
                .any(|s| s["system_id"] == report.system_id.as_str()),
            "{line}"
        );
    }
}

/// The functions' subscriber feeds the process's collector, whatever the log level.
#[test]
fn the_functions_subscriber_feeds_the_collector() {
    super::export::init_subscriber();
    let collector = super::export::collector();
    collector.start(Arc::new(SimClock::new(
        Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0)
            .single()
            .expect("time"),
    )));
    let trace = TraceContext::start("msg_global");
    message_span("msg_global", &trace).in_scope(|| {
        info_span!("stage", otel.name = "analyze").in_scope(|| {});
    });
    let mine: Vec<String> = collector
        .drain()
        .into_iter()
        .filter(|s| s.trace_id == trace.trace_id)
        .map(|s| s.name)
        .collect();
    assert_eq!(mine, ["analyze", "analyze CycleRequested"]);
}
