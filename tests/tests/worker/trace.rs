//! One trace per cycle through real queues (docs/architecture.md, "Tracing"): the worker
//! consumes all but the strategize queue, so the cycle's `AnalysisReady` waits there to be read
//! with its attributes; a second worker then finishes the cycle and the announcement the
//! running system receives carries the same trace. With `OTEL_EXPORTER_OTLP_ENDPOINT` set,
//! the worker posts its spans as OTLP JSON to `<endpoint>/v1/traces`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use shared::bus::aws::aws_sdk_sqs::types::{Message, MessageSystemAttributeName};
use shared::domain::trace::span_id_of;
use shared::domain::{Envelope, Queue, TraceContext};

use super::stack::Stack;

/// Messages of `url` with all their attributes, visible again at once; waits up to `within`
/// for the first.
async fn peek(stack: &Stack, url: &str, within: Duration) -> Vec<Message> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let messages = stack
            .sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .wait_time_seconds(1)
            .visibility_timeout(0)
            .send()
            .await
            .expect("receive")
            .messages
            .unwrap_or_default();
        if !messages.is_empty() {
            return messages;
        }
    }
    Vec::new()
}

fn envelope(m: &Message) -> Envelope {
    serde_json::from_str(m.body().expect("body")).expect("an envelope")
}

fn traceparent(m: &Message) -> Option<&str> {
    m.message_attributes()?.get("traceparent")?.string_value()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cycles_messages_carry_one_trace_from_its_request_to_the_announcement() {
    let stack = Stack::new().await;
    stack.init().await;
    let mut first = stack.worker("fitness,snapshot,analyze", &["--llm", "local"]);
    // The running system does not trace: its report starts a trace of its own, and the cycle
    // it closes starts the cycle's.
    stack.report_baseline(10.0).await;

    let waiting = peek(
        &stack,
        &stack.queues[&Queue::Strategize],
        Duration::from_secs(90),
    )
    .await;
    assert_eq!(waiting.len(), 1, "{}", first.log());
    let ready = &waiting[0];
    let analysis = envelope(ready);
    assert_eq!(analysis.body.type_name(), "AnalysisReady");
    let trace = analysis.trace();
    // The cycle's request (the analysis's cause) started the trace; analyze's span sent this.
    let cycle = TraceContext::start(&analysis.causation_id);
    assert_eq!(trace.trace_id, cycle.trace_id);
    assert_eq!(trace.parent_id, span_id_of(&analysis.causation_id));
    assert_eq!(traceparent(ready), analysis.traceparent.as_deref());
    // moto 5.2.5 drops the system attributes of batch entries; the header is checked if kept.
    if let Some(header) = ready
        .attributes()
        .and_then(|a| a.get(&MessageSystemAttributeName::AwsTraceHeader))
    {
        assert_eq!(
            TraceContext::parse_xray(header).expect("X-Ray header"),
            trace
        );
    }

    let mut second = stack.worker("strategize,decide", &["--llm", "local"]);
    let announced = peek(&stack, &stack.running_system, Duration::from_secs(90)).await;
    assert_eq!(announced.len(), 1, "{}\n{}", first.log(), second.log());
    let dna = envelope(&announced[0]);
    assert_eq!(dna.body.type_name(), "DnaUpdated");
    assert_eq!(dna.trace().trace_id, cycle.trace_id, "one trace end to end");
    assert_eq!(traceparent(&announced[0]), dna.traceparent.as_deref());

    for worker in [&mut first, &mut second] {
        worker.sigterm();
        let status = worker.exit_within(Duration::from_secs(30)).await;
        assert!(status.success(), "{status}:\n{}", worker.log());
    }
}

/// What the collector received: each request's path, content type and body.
type Posts = Arc<Mutex<Vec<(String, String, Value)>>>;

async fn collector() -> (String, Posts, tokio::task::JoinHandle<()>) {
    let posts: Posts = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the collector");
    let base = format!("http://{}", listener.local_addr().expect("address"));
    let seen = posts.clone();
    let app = axum::Router::new().fallback(
        move |uri: axum::http::Uri, headers: axum::http::HeaderMap, body: String| {
            let seen = seen.clone();
            async move {
                let kind = headers
                    .get(axum::http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let body = serde_json::from_str(&body).unwrap_or(Value::Null);
                seen.lock()
                    .expect("posts")
                    .push((uri.path().to_owned(), kind, body));
                "{}"
            }
        },
    );
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (base, posts, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_otlp_endpoint_the_worker_posts_the_cycles_spans_as_otlp_json() {
    let (base, posts, _server) = collector().await;
    let stack = Stack::new().await;
    stack.init().await;
    let mut worker = stack.worker_with_env(
        "all",
        &["--llm", "local"],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", base.as_str())],
    );
    stack.report_baseline(10.0).await;
    let announced = peek(&stack, &stack.running_system, Duration::from_secs(90)).await;
    assert_eq!(announced.len(), 1, "{}", worker.log());
    let cycle = envelope(&announced[0]).trace().trace_id_hex();
    worker.sigterm();
    let status = worker.exit_within(Duration::from_secs(30)).await;
    assert!(status.success(), "{status}:\n{}", worker.log());

    let posts = posts.lock().expect("posts").clone();
    assert!(!posts.is_empty(), "{}", worker.log());
    let mut spans = Vec::new();
    for (path, kind, body) in &posts {
        assert_eq!(path, "/v1/traces");
        assert_eq!(kind, "application/json");
        let resource = &body["resourceSpans"][0];
        assert_eq!(
            resource["resource"]["attributes"][0]["value"]["stringValue"],
            "evolve-worker"
        );
        spans.extend(
            resource["scopeSpans"][0]["spans"]
                .as_array()
                .expect("spans")
                .iter()
                .cloned(),
        );
    }
    let in_cycle: Vec<&Value> = spans.iter().filter(|s| s["traceId"] == cycle).collect();
    let names: Vec<&str> = in_cycle.iter().filter_map(|s| s["name"].as_str()).collect();
    for name in [
        "cycle",
        "analyze",
        "strategize AnalysisReady",
        "decide",
        "store commit",
    ] {
        assert!(names.contains(&name), "{name} in {names:?}");
    }
}
