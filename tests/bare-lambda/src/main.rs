//! A Lambda that builds the five SDK clients a function needs and echoes its event: the floor
//! `make bench` measures the functions' init time and peak memory against (see
//! `tests/benches/lambda_init.rs`).

use aws_config::BehaviorVersion;
use lambda_runtime::{Error, LambdaEvent, run, service_fn};
use serde_json::Value;

// One invocation at a time, its records one after another: one thread is all a Lambda
// uses, and worker threads would only add stacks and allocator arenas to its memory.
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let sdk = aws_config::load_defaults(BehaviorVersion::latest()).await;
    let clients = (
        aws_sdk_dynamodb::Client::new(&sdk),
        aws_sdk_s3::Client::new(&sdk),
        aws_sdk_sqs::Client::new(&sdk),
        aws_sdk_sns::Client::new(&sdk),
        aws_sdk_bedrockruntime::Client::new(&sdk),
    );
    run(service_fn(|event: LambdaEvent<Value>| {
        let _ = &clients;
        async move { Ok::<Value, Error>(event.payload) }
    }))
    .await
}
