//! The snapshot function's binary: wiring only (the handler is in `lib.rs`).

use aws_config::BehaviorVersion;
use lambda_runtime::{Error, run, service_fn};
use shared::lambda::config::SnapshotConfig;
use shared::lambda::wiring;

// One invocation at a time, its records one after another: one thread is all a Lambda
// uses, and worker threads would only add stacks and allocator arenas to its memory.
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let config = SnapshotConfig::from_env()?;
    let sdk = aws_config::load_defaults(BehaviorVersion::latest()).await;
    let dynamo = aws_sdk_dynamodb::Client::new(&sdk);
    let store = wiring::dynamo_store(&config.common, dynamo, aws_sdk_s3::Client::new(&sdk));
    let llm = wiring::no_llm();
    let pipeline = wiring::deps(store, llm, config.pipeline());
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let sns = aws_sdk_sns::Client::new(&sdk);
    let sources = config.sources();
    let deps = wiring::function("snapshot", &config.common, sources, pipeline, sqs, sns);
    run(service_fn(|event| snapshot::handler(&deps, event))).await
}
