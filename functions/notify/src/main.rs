//! The notify function's binary: wiring only (the handler is in `lib.rs`).

use aws_config::BehaviorVersion;
use lambda_runtime::{Error, run, service_fn};
use shared::lambda::config::NotifyConfig;

// One invocation at a time, its records one after another: one thread is all a Lambda
// uses, and worker threads would only add stacks and allocator arenas to its memory.
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let config = NotifyConfig::from_env()?;
    let sdk = aws_config::load_defaults(BehaviorVersion::latest()).await;
    let notifier = shared::notify::notifier(
        &config,
        aws_sdk_dynamodb::Client::new(&sdk),
        aws_sdk_s3::Client::new(&sdk),
        aws_sdk_secretsmanager::Client::new(&sdk),
        aws_sdk_sqs::Client::new(&sdk),
    )?;
    run(service_fn(|event| notify::handler(&notifier, event))).await
}
