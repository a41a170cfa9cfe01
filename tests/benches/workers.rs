//! `make bench`: how many cycles two `evolve worker` processes complete per minute with a
//! fleet of 1,000 registered systems on moto, with the local engine and no faults. Every system
//! starts at once (its baseline reported), and the running systems report each new
//! generation's fitness as soon as its `DnaUpdated` arrives; after a fixed time the generations
//! committed are counted from the heads. The figure is moto's as much as the workers' (its SQS
//! and serialized DynamoDB are the bottleneck at this size), so it is a floor, not a ceiling.
//!
//! `WORKERS_BENCH_SYSTEMS` and `WORKERS_BENCH_SECONDS` change the size and the duration.

#[allow(dead_code)]
#[path = "../tests/chaos/world.rs"]
mod world;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tests::fault_proxy::FaultPlan;
use world::World;

fn var(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The debug `evolve` binary (`make bench` builds it first): benches run from
/// `target/release/deps`, the binaries the tests use live in `target/debug`.
fn evolve() -> PathBuf {
    let exe = std::env::current_exe().expect("bench path");
    let target = exe
        .ancestors()
        .nth(3)
        .expect("target directory")
        .to_path_buf();
    let bin = target.join("debug").join("evolve");
    assert!(
        bin.is_file(),
        "{} not found: run `cargo build -p evolve` first",
        bin.display()
    );
    bin
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let systems = usize::try_from(var("WORKERS_BENCH_SYSTEMS", 1_000)).unwrap_or(1_000);
    let run_for = Duration::from_secs(var("WORKERS_BENCH_SECONDS", 120));
    let registering = Instant::now();
    let world = World::new(systems, FaultPlan::none(0), evolve()).await;
    println!(
        "workers on moto: {systems} systems registered in {:.1} s",
        registering.elapsed().as_secs_f64()
    );
    let workers = [
        world.worker(0, "local", false),
        world.worker(1, "local", false),
    ];
    let started = Instant::now();
    world.report_baselines().await;
    while started.elapsed() < run_for {
        world.running_systems(u64::MAX).await;
    }
    let elapsed = started.elapsed();
    let heads = world.heads().await;
    let committed: u64 = heads.values().map(|(generation, _)| generation).sum();
    let advanced = heads
        .values()
        .filter(|(generation, _)| *generation > 0)
        .count();
    drop(workers);
    println!(
        "cycles completed per minute by two workers with {systems} systems: {:.1} ({committed} \
         generations committed in {:.0} s; {advanced} systems moved past generation 0)",
        committed as f64 * 60.0 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );
}
