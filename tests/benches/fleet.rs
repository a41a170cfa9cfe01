//! `make bench`: the tick with a fleet on moto. For 100 and 1,000 registered systems, all due:
//! how long the tick itself takes (paging the registry and sending one message per system), and
//! how long the per-system steps take when eight are handled at once, as a few concurrent
//! Lambda invocations would. The tick's own duration is what must stay flat as the fleet grows;
//! the steps spread over the analyze function's concurrency.

#[allow(dead_code)]
#[path = "../tests/fleet/world.rs"]
mod world;

use std::time::Instant;

use world::{Fleet, minute};

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    println!("fleet on moto: the tick and its per-system steps");
    println!(
        "{:>8} {:>12} {:>14} {:>14} {:>16}",
        "systems", "tick (ms)", "tick/system", "steps (ms)", "steps/second"
    );
    for size in [100_usize, 1_000] {
        let fleet = Fleet::new(size).await;
        let started = Instant::now();
        assert_eq!(fleet.tick(minute(0)).await, "processed");
        let tick = started.elapsed();
        let started = Instant::now();
        let drained = fleet.drain_steps().await;
        let steps = started.elapsed();
        assert_eq!(drained.processed, size, "{drained:?}");
        println!(
            "{size:>8} {:>12.1} {:>12.3}ms {:>14.0} {:>16.1}",
            tick.as_secs_f64() * 1e3,
            tick.as_secs_f64() * 1e3 / size as f64,
            steps.as_secs_f64() * 1e3,
            size as f64 / steps.as_secs_f64()
        );
    }
}
