//! `make bench`: the tick with a fleet on moto. For 100 and 1,000 registered systems, all due:
//! how long the scheduled tick's invocation takes (one registry page read and its systems'
//! messages sent; later pages go on as messages of their own), and how long the rest takes when
//! eight messages are handled at once, as a few concurrent Lambda invocations would: the later
//! pages and one step per system. The tick invocation's duration is what must stay flat as the
//! fleet grows; the rest spreads over the analyze function's concurrency.

#[allow(dead_code)]
#[path = "../tests/fleet/world.rs"]
mod world;

use std::time::Instant;

use world::{Fleet, minute};

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    println!("fleet on moto: the tick and its per-system steps");
    println!(
        "{:>8} {:>12} {:>8} {:>14} {:>16}",
        "systems", "tick (ms)", "pages", "rest (ms)", "steps/second"
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
            "{size:>8} {:>12.1} {:>8} {:>14.0} {:>16.1}",
            tick.as_secs_f64() * 1e3,
            drained.pages + 1,
            steps.as_secs_f64() * 1e3,
            size as f64 / steps.as_secs_f64()
        );
    }
}
