//! Runtime smoke tests of the six Lambda functions. Each function's debug binary polls
//! `cargo lambda watch --only-lambda-apis` (the Lambda Runtime API emulator) with exactly the
//! environment its config type reads, pointed at moto (DynamoDB, S3, SQS, SNS) and the Bedrock
//! stub through `AWS_ENDPOINT_URL` and `AWS_ENDPOINT_URL_BEDROCK_RUNTIME`, and is invoked with
//! `cargo lambda invoke --data-file` on the AWS event shapes in `infra/events/`: SQS batches with
//! a good and a bad record, the scheduler's tick and sweep.
//!
//! They skip, saying so, only when cargo-lambda is not installed (`make test-tools` installs it,
//! so they run in CI).

mod lambda;
mod world;

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::{Value, json};
use shared::consumer::dead_letters::REASON_ATTRIBUTE;
use shared::domain::Queue;
use shared::lambda::config::functions;

use lambda::{Running, build_functions, cargo_lambda, repo_root};
use world::{World, attribute};

/// Skips the test, with the reason, when cargo-lambda is not installed.
macro_rules! cargo_lambda_or_skip {
    () => {
        match cargo_lambda() {
            Some(tool) => tool,
            None => {
                println!(
                    "SKIPPED: cargo-lambda is not installed (`make test-tools` installs it into .venv)"
                );
                return;
            }
        }
    };
}

fn event(name: &str) -> PathBuf {
    repo_root().join("infra/events").join(name)
}

/// The body of the record `message_id` of a sample event.
fn record_body(file: &str, message_id: &str) -> String {
    let text = std::fs::read_to_string(event(file)).expect("sample event");
    let sample: Value = serde_json::from_str(&text).expect("sample event JSON");
    sample["Records"]
        .as_array()
        .expect("records")
        .iter()
        .find(|r| r["messageId"] == message_id)
        .and_then(|r| r["body"].as_str())
        .unwrap_or_else(|| panic!("no record {message_id} in {file}"))
        .to_owned()
}

/// Starts `package` against `world` (after building the function binaries).
async fn start(
    tool: &std::path::Path,
    world: &World,
    package: &str,
    logs: &std::path::Path,
) -> Running {
    let functions = functions();
    let packages: Vec<&str> = functions.iter().map(|(p, _)| *p).collect();
    let binaries = build_functions(&packages).await;
    let (_, variables) = functions
        .iter()
        .find(|(p, _)| *p == package)
        .expect("a function package");
    Running::start(tool, &binaries[package], &world.env(variables), logs).await
}

/// The bodies waiting on a queue's dead-letter queue; each must carry the reason attribute.
async fn dead_lettered(world: &World, queue: Queue, running: &Running) -> Vec<String> {
    let messages = world.drain(&world.queue(queue).dead_letters).await;
    messages
        .iter()
        .map(|m| {
            let reason = attribute(m, REASON_ATTRIBUTE).unwrap_or_default();
            assert!(
                !reason.is_empty(),
                "a dead-lettered record says why\n{}",
                running.logs()
            );
            m.body().unwrap_or_default().to_owned()
        })
        .collect()
}

/// The `type` attributes of the messages waiting on a queue.
async fn types_on(world: &World, queue: Queue) -> Vec<String> {
    world
        .drain(&world.queue(queue).url)
        .await
        .iter()
        .map(|m| attribute(m, "type").unwrap_or_default().to_owned())
        .collect()
}

/// The function printed at least one Embedded Metric Format line in namespace `Evolve`.
fn emitted_metrics(running: &Running) -> bool {
    lambda::read_log(&running.function_log)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .any(|l| {
            l["_aws"]["CloudWatchMetrics"][0]["Namespace"] == shared::lambda::metrics::NAMESPACE
        })
}

fn no_failures() -> Value {
    json!({ "batchItemFailures": [] })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analyze_runs_a_cycle_through_bedrock_dead_letters_the_truncated_record_and_ticks() {
    let tool = cargo_lambda_or_skip!();
    let logs = tempfile::tempdir().expect("log dir");
    let world = World::new().await;
    world.init_system().await;
    world.close_baseline().await;
    let mut running = start(&tool, &world, "analyze", logs.path()).await;

    let answer = running.invoke(&event("sqs-analyze.json")).await;
    assert_eq!(answer, no_failures(), "{}", running.logs());
    assert_eq!(
        dead_lettered(&world, Queue::Analyze, &running).await,
        [record_body(
            "sqs-analyze.json",
            "7b3c2f1e-0000-4000-8000-000000000002"
        )],
        "only the truncated record is dead-lettered\n{}",
        running.logs()
    );
    assert!(
        world.stub.request_count() >= 1,
        "the analysis went to Bedrock\n{}",
        running.logs()
    );
    assert_eq!(
        types_on(&world, Queue::Strategize).await,
        ["AnalysisReady"],
        "the analysis went on to strategize\n{}",
        running.logs()
    );

    let answer = running.invoke(&event("tick.json")).await;
    assert_eq!(answer["kind"], "tick", "{answer}");
    assert_eq!(answer["id"], "tick:2026-03-01T12:11", "{answer}");
    assert_eq!(answer["outcome"], "processed", "{answer}");
    assert!(emitted_metrics(&running), "{}", running.logs());
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strategize_acknowledges_a_stale_analysis_and_dead_letters_an_unknown_system() {
    let tool = cargo_lambda_or_skip!();
    let logs = tempfile::tempdir().expect("log dir");
    let world = World::new().await;
    world.init_system().await;
    let mut running = start(&tool, &world, "strategize", logs.path()).await;

    let answer = running.invoke(&event("sqs-strategize.json")).await;
    assert_eq!(answer, no_failures(), "{}", running.logs());
    assert_eq!(
        dead_lettered(&world, Queue::Strategize, &running).await,
        [record_body(
            "sqs-strategize.json",
            "7b3c2f1e-0000-4000-8000-000000000004"
        )],
        "{}",
        running.logs()
    );
    assert!(emitted_metrics(&running), "{}", running.logs());
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decide_acknowledges_a_stale_proposal_and_dead_letters_a_misrouted_message() {
    let tool = cargo_lambda_or_skip!();
    let logs = tempfile::tempdir().expect("log dir");
    let world = World::new().await;
    world.init_system().await;
    let mut running = start(&tool, &world, "decide", logs.path()).await;

    let answer = running.invoke(&event("sqs-decide.json")).await;
    assert_eq!(answer, no_failures(), "{}", running.logs());
    assert_eq!(
        dead_lettered(&world, Queue::Decide, &running).await,
        [record_body(
            "sqs-decide.json",
            "7b3c2f1e-0000-4000-8000-000000000006"
        )],
        "{}",
        running.logs()
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_takes_fitness_and_rollbacks_from_both_queues_and_dead_letters_the_truncated_record()
 {
    let tool = cargo_lambda_or_skip!();
    let logs = tempfile::tempdir().expect("log dir");
    let world = World::new().await;
    world.init_system().await;
    let mut running = start(&tool, &world, "snapshot", logs.path()).await;

    let answer = running.invoke(&event("sqs-snapshot.json")).await;
    assert_eq!(answer, no_failures(), "{}", running.logs());
    assert_eq!(
        dead_lettered(&world, Queue::Snapshot, &running).await,
        [record_body(
            "sqs-snapshot.json",
            "7b3c2f1e-0000-4000-8000-000000000009"
        )],
        "the truncated record goes to the DLQ of the queue it came from\n{}",
        running.logs()
    );
    assert!(
        dead_lettered(&world, Queue::Fitness, &running)
            .await
            .is_empty(),
        "{}",
        running.logs()
    );
    let next: BTreeSet<String> = types_on(&world, Queue::Analyze).await.into_iter().collect();
    assert!(
        next.contains("CycleRequested"),
        "the closed baseline requests the next cycle: {next:?}\n{}",
        running.logs()
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cost_guard_handles_a_threshold_dead_letters_garbage_and_sweeps() {
    let tool = cargo_lambda_or_skip!();
    let logs = tempfile::tempdir().expect("log dir");
    let world = World::new().await;
    let mut running = start(&tool, &world, "cost-guard", logs.path()).await;

    let answer = running.invoke(&event("sqs-cost-guard.json")).await;
    assert_eq!(answer, no_failures(), "{}", running.logs());
    assert_eq!(
        dead_lettered(&world, Queue::CostGuard, &running).await,
        ["not json at all"],
        "{}",
        running.logs()
    );

    let answer = running.invoke(&event("sweep.json")).await;
    assert_eq!(answer["kind"], "sweep", "{answer}");
    assert_eq!(answer["id"], "sweep:2026-03-01T12:11", "{answer}");
    assert_eq!(answer["outcome"], "processed", "{answer}");
    assert!(emitted_metrics(&running), "{}", running.logs());
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_posts_the_sample_alert_to_its_webhook_and_dead_letters_garbage() {
    use std::sync::{Arc, Mutex, PoisonError};

    let tool = cargo_lambda_or_skip!();
    let logs = tempfile::tempdir().expect("log dir");
    let world = World::new().await;
    // A local Slack: records the paths posted to.
    let posted: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the webhook receiver");
    let address = listener.local_addr().expect("address");
    let record = posted.clone();
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri, body: String| {
        let record = record.clone();
        async move {
            record.lock().unwrap_or_else(PoisonError::into_inner).push((
                uri.path().to_owned(),
                serde_json::from_str(&body).unwrap_or(Value::Null),
            ));
            "ok"
        }
    });
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    world
        .secrets
        .put_secret_value()
        .secret_id(&world.webhook_secret)
        .secret_string(
            json!({"slack_webhook_url": format!("http://{address}/services/T0/B0/smoke-token")})
                .to_string(),
        )
        .send()
        .await
        .expect("put the webhook URL");
    let mut running = start(&tool, &world, "notify", logs.path()).await;

    let answer = running.invoke(&event("sqs-notify.json")).await;
    assert_eq!(answer, no_failures(), "{}", running.logs());
    let dead = world.drain(&world.notify.dead_letters).await;
    assert_eq!(dead.len(), 1, "{}", running.logs());
    assert_eq!(dead[0].body(), Some("not json at all"));
    assert!(attribute(&dead[0], REASON_ATTRIBUTE).is_some_and(|r| !r.is_empty()));
    let posted = posted
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    assert_eq!(posted.len(), 1, "{posted:?}\n{}", running.logs());
    assert_eq!(posted[0].0, "/services/T0/B0/smoke-token");
    assert!(
        posted[0].1["text"]
            .as_str()
            .is_some_and(|t| t.contains("budget_mode")),
        "{posted:?}"
    );
    assert!(
        !running.logs().contains("smoke-token"),
        "the webhook URL never reaches the logs"
    );
    assert!(emitted_metrics(&running), "{}", running.logs());
    running.stop().await;
    server.abort();
}
