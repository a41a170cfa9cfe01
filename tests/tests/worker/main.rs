//! `evolve worker --store aws` as a process against moto (DynamoDB, S3, SQS, SNS) and the
//! Converse stub: it runs a cycle end to end through real queues; killed with SIGKILL while a
//! message is in flight, the message comes back after its visibility timeout and is processed
//! exactly once by the next worker; on SIGTERM the message in flight finishes and is deleted and
//! the process exits 0; and a message whose work outlasts the visibility timeout is kept hidden
//! from other consumers by the heartbeat.

mod running_system;
mod stack;
mod trace;

use std::time::Duration;

use serde_json::Value;
use shared::domain::{Queue, Role};
use shared::store::EvolutionStore;
use stack::{Stack, system_id};

/// Short visibility and message timeouts, so a lost message comes back within seconds. The
/// message timeout leaves a Bedrock request a few seconds after the margin the commit keeps.
const FAST: &[&str] = &["--visibility-timeout", "2", "--message-timeout", "8"];

fn types(messages: &[Value]) -> Vec<&str> {
    messages.iter().filter_map(|m| m["type"].as_str()).collect()
}

/// The analyze role's committed LLM calls for the system.
async fn analyze_calls(stack: &Stack) -> Vec<shared::store::LlmCallRecord> {
    stack
        .store
        .list_llm_calls(Some(&system_id()), None)
        .await
        .expect("LLM calls")
        .into_iter()
        .filter(|c| c.role == Role::Analyze)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_runs_a_cycle_end_to_end_through_the_queues() {
    let stack = Stack::new().await;
    stack.init().await;
    let mut worker = stack.worker("all", &["--llm", "local"]);
    stack.report_baseline(10.0).await;

    // fitness -> snapshot -> analyze -> strategize -> decide -> snapshot: generation 1 goes out.
    let dna = stack
        .collect(&stack.running_system, 1, Duration::from_secs(90))
        .await;
    assert_eq!(types(&dna), ["DnaUpdated"], "{}", worker.log());
    assert_eq!(dna[0]["generation"], 1);
    let head = stack
        .store
        .get_head(&system_id())
        .await
        .expect("head")
        .expect("exists");
    assert_eq!(head.generation, 1);

    worker.sigterm();
    let status = worker.exit_within(Duration::from_secs(30)).await;
    assert!(status.success(), "{status}:\n{}", worker.log());
    for q in Queue::ALL {
        assert!(
            stack.receive(&stack.dlqs[&q], 0, 30).await.is_empty(),
            "{} dead-lettered something:\n{}",
            q.as_str(),
            worker.log()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_in_flight_when_the_worker_is_killed_is_processed_once_by_the_next() {
    let stack = Stack::new().await;
    stack.init().await;
    // Analyze's Bedrock call hangs, so the worker is killed while the cycle is in flight.
    stack.stub.delay_defaults(Duration::from_secs(120));
    let mut first = stack.worker("fitness,analyze", FAST);
    stack.report_baseline(10.0).await;
    stack.wait_for_requests(1, Duration::from_secs(60)).await;
    first.sigkill();
    let first_log = first.log();
    assert!(
        analyze_calls(&stack).await.is_empty(),
        "nothing was committed"
    );

    stack.stub.delay_defaults(Duration::ZERO);
    let second = stack.worker("fitness,analyze", FAST);
    let strategize = &stack.queues[&Queue::Strategize];
    let ready = stack.collect(strategize, 1, Duration::from_secs(60)).await;
    assert_eq!(
        types(&ready),
        ["AnalysisReady"],
        "first worker:\n{first_log}\nsecond worker:\n{}",
        second.log()
    );
    // Nothing more comes: no second analysis, no redelivery, nothing dead-lettered.
    let later = stack.collect(strategize, 1, Duration::from_secs(8)).await;
    assert!(later.is_empty(), "{later:?}");
    assert!(
        stack
            .receive(&stack.dlqs[&Queue::Analyze], 0, 30)
            .await
            .is_empty(),
        "{}",
        second.log()
    );
    let calls = analyze_calls(&stack).await;
    assert_eq!(calls.len(), 1, "one committed analysis: {calls:?}");
    assert_eq!(calls[0].fallback, None, "Bedrock answered");
    assert_eq!(
        calls[0].envelope_id,
        ready[0]["causation_id"].as_str().expect("causation id"),
        "the analysis is the redelivered cycle's"
    );
    // The killed worker's request and the second worker's.
    assert_eq!(stack.stub.request_count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sigterm_the_message_in_flight_finishes_is_deleted_and_the_worker_exits_0() {
    let stack = Stack::new().await;
    stack.init().await;
    stack.stub.delay_defaults(Duration::from_secs(4));
    let mut worker = stack.worker(
        "fitness,analyze",
        &["--visibility-timeout", "2", "--message-timeout", "30"],
    );
    stack.report_baseline(10.0).await;
    stack.wait_for_requests(1, Duration::from_secs(60)).await;
    worker.sigterm();

    let status = worker.exit_within(Duration::from_secs(30)).await;
    let log = worker.log();
    assert!(status.success(), "{status}:\n{log}");
    assert!(log.contains("worker stopped: 2 deleted, 0 left"), "{log}");
    let ready = stack
        .collect(&stack.queues[&Queue::Strategize], 1, Duration::from_secs(5))
        .await;
    assert_eq!(types(&ready), ["AnalysisReady"], "{log}");
    // Deleted, not merely hidden: it does not come back after its visibility timeout.
    let analyze = stack
        .collect(&stack.queues[&Queue::Analyze], 1, Duration::from_secs(5))
        .await;
    assert!(analyze.is_empty(), "{analyze:?}");
    assert_eq!(analyze_calls(&stack).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_heartbeat_keeps_a_long_message_from_other_consumers() {
    let stack = Stack::new().await;
    stack.init().await;
    // The work takes four times the visibility timeout.
    stack.stub.delay_defaults(Duration::from_secs(8));
    let mut worker = stack.worker(
        "fitness,analyze",
        &["--visibility-timeout", "2", "--message-timeout", "30"],
    );
    stack.report_baseline(10.0).await;
    stack.wait_for_requests(1, Duration::from_secs(60)).await;

    // Another consumer polls the analyze queue while the work goes on: it never sees the cycle.
    let analyze = &stack.queues[&Queue::Analyze];
    let stolen = stack.collect(analyze, 1, Duration::from_secs(7)).await;
    assert!(stolen.is_empty(), "redelivered meanwhile: {stolen:?}");
    let ready = stack
        .collect(
            &stack.queues[&Queue::Strategize],
            1,
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(types(&ready), ["AnalysisReady"], "{}", worker.log());
    assert_eq!(stack.stub.request_count(), 1, "worked on once");
    let after = stack.collect(analyze, 1, Duration::from_secs(4)).await;
    assert!(after.is_empty(), "{after:?}");

    worker.sigterm();
    assert!(worker.exit_within(Duration::from_secs(30)).await.success());
}

#[test]
fn a_worker_without_its_stack_or_a_destination_exits_2_naming_what_is_missing() {
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut command = std::process::Command::new(stack::evolve_bin());
        command.args(args).stdin(std::process::Stdio::null());
        for var in shared::worker::config::VARIABLES {
            command.env_remove(var);
        }
        command.env_remove("EVOLVE_STORE").envs(env.iter().copied());
        command.output().expect("evolve runs")
    };
    let local = run(&["worker"], &[]);
    assert_eq!(local.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&local.stderr).contains("--store aws"));

    let url = "http://127.0.0.1:9/queue/fitness";
    let no_topic = run(
        &["--store", "aws", "worker", "--queues", "fitness"],
        &[
            ("EVOLVE_TABLE_NAME", "t"),
            ("EVOLVE_BUCKET_NAME", "b"),
            ("EVOLVE_FITNESS_QUEUE_URL", url),
            ("EVOLVE_FITNESS_DLQ_URL", url),
            ("EVOLVE_ANALYZE_QUEUE_URL", url),
            ("EVOLVE_DECIDE_QUEUE_URL", url),
            (
                "EVOLVE_ALERTS_TOPIC_ARN",
                "arn:aws:sns:us-east-1:123456789012:alerts",
            ),
        ],
    );
    assert_eq!(no_topic.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&no_topic.stderr);
    assert!(
        stderr.contains("--events-topic-arn") && stderr.contains("EVOLVE_EVENTS_TOPIC_ARN"),
        "{stderr}"
    );
}
