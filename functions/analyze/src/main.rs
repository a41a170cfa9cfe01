//! The analyze function's binary: wiring only (the handler is in `lib.rs`).

use lambda_runtime::{Error, run, service_fn};
use shared::lambda::config::AnalyzeConfig;
use shared::lambda::wiring;

// One invocation at a time, its records one after another: one thread is all a Lambda
// uses, and worker threads would only add stacks and allocator arenas to its memory.
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    shared::telemetry::export::init_subscriber();
    let deps = wiring::from_env::<AnalyzeConfig>().await?;
    run(service_fn(|event| analyze::handler(&deps, event))).await
}
