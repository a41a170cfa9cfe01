//! The snapshot function's binary: wiring only (the handler is in `lib.rs`).

use lambda_runtime::{Error, run, service_fn};
use shared::lambda::config::SnapshotConfig;
use shared::lambda::wiring;

// One invocation at a time, its records one after another: one thread is all a Lambda
// uses, and worker threads would only add stacks and allocator arenas to its memory.
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    shared::telemetry::export::init_subscriber();
    let deps = wiring::from_env::<SnapshotConfig>().await?;
    run(service_fn(|event| snapshot::handler(&deps, event))).await
}
