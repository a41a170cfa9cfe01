//! `--store aws`: a deployed stack's table, bucket and queues, reached with the standard AWS
//! credential chain. Operators act through messages; only `init` writes directly.

use std::collections::BTreeMap;

use aws_config::{BehaviorVersion, SdkConfig};
use shared::bus::Bus;
use shared::bus::aws::{AwsBus, Destinations};
use shared::domain::{Destination, Outgoing, Queue, Topic};
use shared::store::dynamo::DynamoStore;

use crate::args::Cli;
use crate::output::bad_input;

async fn sdk() -> SdkConfig {
    aws_config::load_defaults(BehaviorVersion::latest()).await
}

fn required<'a>(value: Option<&'a String>, flag: &str, var: &str) -> anyhow::Result<&'a str> {
    value.map(String::as_str).ok_or_else(|| {
        bad_input(format!(
            "--store aws needs {flag} (or {var}); the stack's outputs list it"
        ))
    })
}

pub async fn store(cli: &Cli) -> anyhow::Result<DynamoStore> {
    let table = required(cli.table.as_ref(), "--table", "EVOLVE_TABLE_NAME")?;
    let bucket = required(cli.bucket.as_ref(), "--bucket", "EVOLVE_BUCKET_NAME")?;
    Ok(dynamo_store(&sdk().await, table, bucket))
}

/// The stack's table as `region`'s replica holds it, with the bucket there.
pub async fn store_in(cli: &Cli, region: &str, bucket: &str) -> anyhow::Result<DynamoStore> {
    let table = required(cli.table.as_ref(), "--table", "EVOLVE_TABLE_NAME")?;
    let sdk = sdk()
        .await
        .into_builder()
        .region(aws_config::Region::new(region.to_owned()))
        .build();
    Ok(dynamo_store(&sdk, table, bucket))
}

fn dynamo_store(sdk: &SdkConfig, table: &str, bucket: &str) -> DynamoStore {
    // Path-style addressing works with every S3 endpoint, local stand-ins included.
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(sdk)
            .force_path_style(true)
            .build(),
    );
    DynamoStore::new(
        aws_sdk_dynamodb::Client::new(sdk),
        s3,
        table.to_owned(),
        bucket.to_owned(),
    )
}

/// The caller's AWS identity, recorded with every operator action.
pub async fn caller_identity() -> anyhow::Result<String> {
    let sdk = sdk().await;
    let identity = aws_sdk_sts::Client::new(&sdk)
        .get_caller_identity()
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("cannot read the caller's AWS identity: {e}"))?;
    Ok(identity.arn().unwrap_or("unknown AWS principal").to_owned())
}

/// The events topic as a bus, for `init`'s generation 0.
pub async fn events_bus(cli: &Cli) -> anyhow::Result<AwsBus> {
    let topic = required(
        cli.events_topic_arn.as_ref(),
        "--events-topic-arn",
        "EVOLVE_EVENTS_TOPIC_ARN",
    )?;
    let sdk = sdk().await;
    Ok(AwsBus::new(
        aws_sdk_sqs::Client::new(&sdk),
        aws_sdk_sns::Client::new(&sdk),
        Destinations {
            queues: BTreeMap::new(),
            topics: BTreeMap::from([(Topic::EvolutionEvents, topic.to_owned())]),
        },
    ))
}

/// Sends an operator message to its queue: rollbacks to snapshot, approvals and resumes to
/// decide.
pub async fn send_operator_message(cli: &Cli, message: Outgoing) -> anyhow::Result<()> {
    let queue = match message.destination {
        Destination::Queue(queue @ (Queue::Snapshot | Queue::Decide)) => queue,
        other => anyhow::bail!("operators do not send to {other:?}"),
    };
    let url = if queue == Queue::Snapshot {
        required(
            cli.snapshot_queue_url.as_ref(),
            "--snapshot-queue-url",
            "EVOLVE_SNAPSHOT_QUEUE_URL",
        )?
    } else {
        required(
            cli.decide_queue_url.as_ref(),
            "--decide-queue-url",
            "EVOLVE_DECIDE_QUEUE_URL",
        )?
    };
    let sdk = sdk().await;
    let bus = AwsBus::new(
        aws_sdk_sqs::Client::new(&sdk),
        aws_sdk_sns::Client::new(&sdk),
        Destinations {
            queues: BTreeMap::from([(queue, url.to_owned())]),
            topics: BTreeMap::new(),
        },
    );
    bus.send(&[message]).await?;
    Ok(())
}
