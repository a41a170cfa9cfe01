//! `evolve --store aws` against moto: init writes the head directly, the views read DynamoDB and
//! S3, and a rollback, an approval or a resume is a message on its queue carrying the caller's
//! AWS identity.

use std::process::{Command, Output, Stdio};
use std::sync::Arc;

use serde_json::Value;
use shared::domain::SystemId;
use shared::engine::LocalEngine;
use shared::local::{LocalHome, RunOptions, Silent};
use shared::stages::PipelineConfig;
use shared::store::EvolutionStore;
use shared::store::dynamo::DynamoStore;
use tests::evaluators::Rising;
use tests::moto::{MotoServer, unique_name};

use crate::bin;

pub(crate) struct Stack {
    pub(crate) moto: MotoServer,
    pub(crate) table: String,
    pub(crate) bucket: String,
    queue_url: String,
    /// The events topic, and a queue subscribed to it with raw delivery: what a running
    /// system receives.
    events_topic: String,
    subscriber: String,
    sqs: aws_sdk_sqs::Client,
    pub(crate) store: Arc<DynamoStore>,
}

pub(crate) async fn stack() -> Stack {
    let moto = MotoServer::start();
    let sdk = tests::moto::sdk_config(moto.url()).await;
    let s3 = tests::moto::s3_client(&sdk);
    let table = unique_name("cli-table");
    let bucket = unique_name("cli-bucket");
    let store = DynamoStore::new(
        aws_sdk_dynamodb::Client::new(&sdk),
        s3,
        table.clone(),
        bucket.clone(),
    );
    store.create_resources().await.expect("table and bucket");
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let (queue_url, _) = tests::moto::queue(&sqs, "cli-snapshot").await;
    let sns = aws_sdk_sns::Client::new(&sdk);
    let events_topic =
        tests::moto::topics(&sns).await[&shared::domain::Topic::EvolutionEvents].clone();
    let (subscriber, subscriber_arn) = tests::moto::queue(&sqs, "cli-running-system").await;
    sns.subscribe()
        .topic_arn(&events_topic)
        .protocol("sqs")
        .endpoint(subscriber_arn)
        .attributes("RawMessageDelivery", "true")
        .send()
        .await
        .expect("subscribe");
    Stack {
        moto,
        table,
        bucket,
        queue_url,
        events_topic,
        subscriber,
        sqs,
        store: Arc::new(store),
    }
}

fn evolve_aws(stack: &Stack, args: &[&str]) -> Output {
    evolve_aws_with(stack, args, &[])
}

/// `evolve --store aws` with the stack's settings plus `env`.
pub(crate) fn evolve_aws_with(stack: &Stack, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(bin("evolve"))
        .args(args)
        .env("EVOLVE_STORE", "aws")
        .env("EVOLVE_TABLE_NAME", &stack.table)
        .env("EVOLVE_BUCKET_NAME", &stack.bucket)
        .env("EVOLVE_SNAPSHOT_QUEUE_URL", &stack.queue_url)
        .env("EVOLVE_EVENTS_TOPIC_ARN", &stack.events_topic)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL", stack.moto.url())
        .env_remove("AWS_PROFILE")
        .env_remove("EVOLVE_SYSTEM")
        // Last, so a test's own settings win over the stack's.
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("evolve runs")
}

#[test]
fn operator_commands_work_against_a_deployed_stack() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let stack = runtime.block_on(stack());
    let dir = tempfile::tempdir().expect("dir");
    let dna = dir.path().join("dna.json");
    std::fs::write(
        &dna,
        r#"{"system_id": "svc-aws", "genes": {"x": {"type": "int", "value": 5, "min": 0, "max": 50, "max_step": 5}}}"#,
    )
    .expect("write");
    let ok = |out: &Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ok(&evolve_aws(
        &stack,
        &["init", "--dna", &dna.display().to_string()],
    ));
    let again = evolve_aws(&stack, &["init", "--dna", &dna.display().to_string()]);
    assert_eq!(again.status.code(), Some(2), "a second init is refused");
    // Generation 0 reached the running system's queue once, with the checksum of the head.
    let published = runtime.block_on(tests::moto::receive(&stack.sqs, &stack.subscriber));
    assert_eq!(published.len(), 1, "{published:?}");
    let dna_updated: Value =
        serde_json::from_str(published[0].body().expect("body")).expect("envelope");
    assert_eq!(dna_updated["type"], "DnaUpdated");
    assert_eq!(dna_updated["generation"], 0);
    let generation_0 = runtime
        .block_on(
            stack
                .store
                .get_generation(&SystemId::parse("svc-aws").expect("id"), 0),
        )
        .expect("read")
        .expect("generation 0");
    assert_eq!(dna_updated["checksum"], generation_0.checksum.as_str());
    assert_eq!(dna_updated["genes"]["x"], 5);

    // The settings: shown, changed in the caller's name, audited.
    let shown = evolve_aws(&stack, &["settings", "--json"]);
    ok(&shown);
    let shown: Value = serde_json::from_slice(&shown.stdout).expect("JSON");
    assert_eq!(shown["cycle_interval_seconds"], 900, "{shown}");
    ok(&evolve_aws(&stack, &["settings", "--interval", "300"]));
    let changed = runtime
        .block_on(
            stack
                .store
                .get_system(&SystemId::parse("svc-aws").expect("id")),
        )
        .expect("read")
        .expect("system");
    assert_eq!(changed.settings.cycle_interval_seconds, 300);
    let events = runtime
        .block_on(stack.store.list_events(&changed.system_id, None, 10))
        .expect("events");
    assert!(
        events.iter().any(
            |e| e.event_type == shared::domain::EventType::SettingsChanged
                && e.detail
                    .as_deref()
                    .is_some_and(|d| d.contains("interval_s 900 -> 300") && d.contains("arn:aws:"))
        ),
        "{events:?}"
    );
    assert_eq!(
        evolve_aws(&stack, &["settings", "--interval", "5"])
            .status
            .code(),
        Some(2),
        "an interval under a minute is refused"
    );
    assert_eq!(
        evolve_aws(&stack, &["demo"]).status.code(),
        Some(2),
        "demo runs locally only"
    );

    // Evolve two generations through the real stages on the DynamoDB store.
    runtime.block_on(async {
        let home = LocalHome::new(
            stack.store.clone(),
            Arc::new(LocalEngine::new(1)),
            chrono::Utc::now(),
            PipelineConfig::default(),
        );
        let opts = RunOptions {
            generations: 2,
            ..RunOptions::default()
        };
        let id = SystemId::parse("svc-aws").expect("id");
        let report = home
            .runner(&Rising)
            .run(&id, &opts, &Silent)
            .await
            .expect("run");
        assert_eq!(report.generations, 2);
    });

    // A replay reads the stack's records and writes nothing back: every item of the table is
    // the same afterwards.
    let table_items = || {
        runtime.block_on(async {
            let config = tests::moto::sdk_config(stack.moto.url()).await;
            let scan = aws_sdk_dynamodb::Client::new(&config)
                .scan()
                .table_name(&stack.table)
                .send()
                .await
                .expect("scan");
            // Attributes in key order: an item's map iterates in no fixed order.
            let mut items: Vec<String> = scan
                .items()
                .iter()
                .map(|i| {
                    format!(
                        "{:?}",
                        i.iter().collect::<std::collections::BTreeMap<_, _>>()
                    )
                })
                .collect();
            items.sort();
            items
        })
    };
    let before = table_items();
    let replayed = evolve_aws(&stack, &["replay", "--since", "2000-01-01", "--json"]);
    ok(&replayed);
    let replayed: Value = serde_json::from_slice(&replayed.stdout).expect("JSON");
    let decisions = replayed["decisions"].as_array().expect("decisions");
    assert!(!decisions.is_empty(), "{replayed}");
    assert_eq!(
        replayed["agreement"]["agreed"].as_u64(),
        Some(decisions.len() as u64),
        "{replayed}"
    );
    assert!(table_items() == before, "the replay wrote to the table");

    let status = evolve_aws(&stack, &["status", "--json"]);
    ok(&status);
    let status: Value = serde_json::from_slice(&status.stdout).expect("JSON");
    let generation = status["generation"].as_u64().expect("generation");
    assert!(generation >= 2, "{status}");
    let history = evolve_aws(&stack, &["history", "--json"]);
    ok(&history);
    let history: Value = serde_json::from_slice(&history.stdout).expect("JSON");
    assert!(history.as_array().expect("array").len() >= 3, "{history}");
    ok(&evolve_aws(&stack, &["decisions"]));
    ok(&evolve_aws(&stack, &["cost", "--json"]));
    let report = dir.path().join("report.html");
    ok(&evolve_aws(
        &stack,
        &["report", "--out", &report.display().to_string()],
    ));
    let html = std::fs::read_to_string(&report).expect("the report is written");
    assert!(
        html.contains(&format!("data-head-generation=\"{generation}\"")),
        "the report reads the stack's head"
    );

    ok(&evolve_aws(
        &stack,
        &["rollback", "--to", "0", "--reason", "test"],
    ));
    let received = runtime.block_on(async {
        stack
            .sqs
            .receive_message()
            .queue_url(&stack.queue_url)
            .wait_time_seconds(2)
            .send()
            .await
            .expect("receive")
    });
    let body = received
        .messages()
        .first()
        .and_then(|m| m.body())
        .expect("a rollback message");
    let envelope: Value = serde_json::from_str(body).expect("envelope");
    assert_eq!(envelope["type"], "RollbackRequested");
    assert_eq!(envelope["to_generation"], 0);
    assert_eq!(envelope["base_generation"].as_u64(), Some(generation));
    let who = envelope["requested_by"].as_str().expect("requested_by");
    assert!(
        who.starts_with("arn:aws:"),
        "the caller's AWS identity: {who}"
    );
}

/// On a stack, `approve` is an `ApprovalGiven` message on the decide queue that names the
/// caller's AWS identity; a decision that is not pending is refused before anything is sent.
#[test]
fn approve_sends_the_verdict_to_the_decide_queue_as_the_callers_identity() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let stack = runtime.block_on(stack());
    let dir = tempfile::tempdir().expect("dir");
    let dna = dir.path().join("dna.json");
    std::fs::write(
        &dna,
        r#"{"system_id": "svc-gate", "genes": {"x": {"type": "int", "value": 5, "min": 0, "max": 50, "max_step": 5}}}"#,
    )
    .expect("write");
    let init = evolve_aws(&stack, &["init", "--dna", &dna.display().to_string()]);
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let decide_queue = runtime.block_on(async {
        stack
            .sqs
            .create_queue()
            .queue_name(unique_name("cli-decide"))
            .send()
            .await
            .expect("queue")
            .queue_url()
            .expect("url")
            .to_owned()
    });

    // The stages hold the first approval on the DynamoDB store.
    let pending = runtime.block_on(async {
        let home = LocalHome::new(
            stack.store.clone(),
            Arc::new(LocalEngine::new(1)),
            chrono::Utc::now(),
            PipelineConfig {
                approval_threshold: Some(0.0),
                ..PipelineConfig::default()
            },
        );
        let opts = RunOptions {
            generations: 1,
            ..RunOptions::default()
        };
        let id = SystemId::parse("svc-gate").expect("id");
        home.runner(&Rising)
            .run(&id, &opts, &Silent)
            .await
            .expect("run")
            .awaiting_approval
            .expect("held for approval")
    });

    let approve = |id: &str| {
        evolve_aws_with(
            &stack,
            &["approve", id, "--note", "ship it"],
            &[("EVOLVE_DECIDE_QUEUE_URL", decide_queue.as_str())],
        )
    };
    let wrong = approve("dec_not_pending");
    assert_eq!(
        wrong.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );
    let out = approve(&pending);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let received = runtime.block_on(async {
        stack
            .sqs
            .receive_message()
            .queue_url(&decide_queue)
            .max_number_of_messages(10)
            .wait_time_seconds(2)
            .send()
            .await
            .expect("receive")
    });
    assert_eq!(
        received.messages().len(),
        1,
        "only the valid verdict is sent"
    );
    let body = received.messages()[0].body().expect("body");
    let envelope: Value = serde_json::from_str(body).expect("envelope");
    assert_eq!(envelope["type"], "ApprovalGiven");
    assert_eq!(envelope["decision_id"], pending.as_str());
    assert_eq!(envelope["approve"], true);
    assert_eq!(envelope["note"], "ship it");
    let who = envelope["approver"].as_str().expect("approver");
    assert!(
        who.starts_with("arn:aws:"),
        "the caller's AWS identity: {who}"
    );
}

/// On a stack, `resume` is a `ResumeRequested` message on the decide queue that names the
/// caller's AWS identity and the paused generation; a head that is not paused is refused before
/// anything is sent.
#[test]
fn resume_sends_the_request_to_the_decide_queue_as_the_callers_identity() {
    use shared::domain::{Head, HeadStatus};
    use shared::store::{EvolutionStore, Transaction, Write};

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let stack = runtime.block_on(stack());
    let dir = tempfile::tempdir().expect("dir");
    let dna = dir.path().join("dna.json");
    std::fs::write(
        &dna,
        r#"{"system_id": "svc-paused", "genes": {"x": {"type": "int", "value": 5, "min": 0, "max": 50, "max_step": 5}}}"#,
    )
    .expect("write");
    let init = evolve_aws(&stack, &["init", "--dna", &dna.display().to_string()]);
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let decide_queue = runtime.block_on(async {
        stack
            .sqs
            .create_queue()
            .queue_name(unique_name("cli-decide"))
            .send()
            .await
            .expect("queue")
            .queue_url()
            .expect("url")
            .to_owned()
    });
    let resume = || {
        evolve_aws_with(
            &stack,
            &["resume", "--note", "conflict understood"],
            &[("EVOLVE_DECIDE_QUEUE_URL", decide_queue.as_str())],
        )
    };

    let early = resume();
    assert_eq!(
        early.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&early.stderr)
    );

    // Paused as conflict resolution would leave it.
    let id = SystemId::parse("svc-paused").expect("id");
    let generation = runtime.block_on(async {
        let head = stack
            .store
            .get_head(&id)
            .await
            .expect("head")
            .expect("exists");
        stack
            .store
            .commit(Transaction {
                writes: vec![Write::UpdateHead {
                    expected_generation: head.generation,
                    expected_status: head.status,
                    head: Head {
                        status: HeadStatus::Paused,
                        evaluation: None,
                        ..head.clone()
                    },
                }],
                completion: None,
            })
            .await
            .expect("paused");
        head.generation
    });
    let out = resume();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let received = runtime.block_on(async {
        stack
            .sqs
            .receive_message()
            .queue_url(&decide_queue)
            .max_number_of_messages(10)
            .wait_time_seconds(2)
            .send()
            .await
            .expect("receive")
    });
    assert_eq!(
        received.messages().len(),
        1,
        "only the resume of the paused head is sent"
    );
    let body = received.messages()[0].body().expect("body");
    let envelope: Value = serde_json::from_str(body).expect("envelope");
    assert_eq!(envelope["type"], "ResumeRequested");
    assert_eq!(envelope["system_id"], "svc-paused");
    assert_eq!(envelope["base_generation"].as_u64(), Some(generation));
    assert_eq!(envelope["note"], "conflict understood");
    let who = envelope["requested_by"].as_str().expect("requested_by");
    assert!(
        who.starts_with("arn:aws:"),
        "the caller's AWS identity: {who}"
    );
}
