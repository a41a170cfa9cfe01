//! `evolve failover` and `evolve failback` against moto with two regions: the status, a move
//! that times out and lifts its fence, a forced move, and `status` naming the writer.

use std::process::Output;

use serde_json::Value;
use shared::store::EvolutionStore;
use shared::store::dynamo::{DynamoStore, aws_sdk_dynamodb};
use tests::moto::unique_name;

use crate::aws::{Stack, evolve_aws_with, stack};

fn json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

/// The stack's table in `eu-west-1` (moto keeps regions apart: a second table of the same
/// name) and a bucket there.
async fn replica(stack: &Stack) -> DynamoStore {
    let sdk = tests::moto::sdk_config(stack.moto.url())
        .await
        .into_builder()
        .region(aws_config::Region::new("eu-west-1"))
        .build();
    let store = DynamoStore::new(
        aws_sdk_dynamodb::Client::new(&sdk),
        tests::moto::s3_client(&sdk),
        stack.table.clone(),
        unique_name("cli-replica"),
    );
    store
        .create_resources()
        .await
        .expect("replica table and bucket");
    store
}

#[test]
fn failover_moves_the_writer_and_refuses_to_promote_a_replica_that_lags() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let stack = runtime.block_on(stack());
    let replica = runtime.block_on(replica(&stack));
    let to_bucket = replica.bucket().to_owned();
    let home = |args: &[&str]| evolve_aws_with(&stack, args, &[]);
    let away = |args: &[&str]| evolve_aws_with(&stack, args, &[("AWS_REGION", "eu-west-1")]);

    let status = json(&home(&["failover", "--status", "--json"]));
    assert_eq!(status["region"], "us-east-1");
    assert!(status["record"].is_null(), "{status}");

    // Nothing replicates in this test: the move waits, gives up and lifts its fence.
    let lagging = home(&[
        "failover",
        "--to",
        "eu-west-1",
        "--to-bucket",
        &to_bucket,
        "--timeout",
        "1",
    ]);
    assert_eq!(lagging.status.code(), Some(1), "{lagging:?}");
    let stderr = String::from_utf8_lossy(&lagging.stderr);
    assert!(
        stderr.contains("did not catch up") && stderr.contains("us-east-1 writes again"),
        "{stderr}"
    );
    let status = json(&home(&["failover", "--status", "--json"]));
    assert_eq!(status["record"]["writer"], "us-east-1", "{status}");

    // The home region is unreachable: a forced move promotes the replica on its own.
    let moved = json(&home(&[
        "failover",
        "--to",
        "eu-west-1",
        "--to-bucket",
        &to_bucket,
        "--force",
        "--json",
    ]));
    assert_eq!(
        (moved["to"].as_str(), moved["forced"].as_bool()),
        (Some("eu-west-1"), Some(true))
    );
    let status = json(&away(&["failover", "--status", "--json"]));
    assert_eq!(status["record"]["writer"], "eu-west-1", "{status}");
    assert_eq!(status["record"]["home"], "us-east-1", "{status}");
    assert_eq!(status["fence_copies"], 16, "{status}");
    runtime.block_on(async {
        let alerts = replica.list_alerts(None, 10).await.expect("alerts");
        assert!(
            alerts.iter().any(|a| a.kind == "writer_moved"),
            "{alerts:?}"
        );
        let write = shared::store::Transaction {
            writes: vec![shared::store::Write::PutAlert {
                alert: shared::domain::Alert {
                    id: "after-the-move".into(),
                    level: shared::domain::AlertLevel::Info,
                    kind: "test".into(),
                    message: "a write in the new writer region".into(),
                    system_id: None,
                    at: chrono::Utc::now(),
                },
            }],
            completion: None,
        };
        replica.commit(write).await.expect("the replica writes");
    });

    // Failing back needs the home region to catch up, which nothing replicates here either.
    let back = away(&["failback", "--to-bucket", &stack.bucket, "--timeout", "1"]);
    assert_eq!(back.status.code(), Some(1), "{back:?}");
    assert!(
        String::from_utf8_lossy(&back.stderr).contains("eu-west-1 writes again"),
        "{back:?}"
    );
    let local = evolve_aws_with(
        &stack,
        &["failover", "--status"],
        &[("EVOLVE_STORE", "local")],
    );
    assert_eq!(
        local.status.code(),
        Some(2),
        "failover is for a deployed stack"
    );
}
