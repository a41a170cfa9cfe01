//! The chaos suite: the fleet evolves through real `evolve worker` processes while the services
//! misbehave and the workers die, and afterwards nothing was lost, nothing happened twice and
//! no money is held.
//!
//! Between the workers (and the tick and the sweep, invoked through the analyze and cost-guard
//! handlers) and the stand-ins sits the fault proxy: throttling, 5xx, timeouts, dropped
//! connections and answers dropped after the write applied, drawn per operation from a seeded
//! generator. Workers are killed with SIGKILL at seeded moments and restarted. Once every
//! system has been driven through its generations, faults are switched off, the fleet comes to
//! rest, the workers drain on SIGTERM, and the invariants are read back from moto directly:
//!
//! - every system rests in a documented head state, with the records it implies;
//! - no committed message unsent: every completed idempotency record's outbox, the tick's and
//!   the sweep's fan-out and every fitness report reached its destination (consumed, published
//!   to the topic's subscriber, or dead-lettered with a reason);
//! - no duplicate event, decision or generation (no decision applied twice);
//! - every event index item has its body in S3;
//! - no reservation held in any period and scope touched, and the ledger's totals equal the
//!   sum of its settled calls to the nano-USD;
//! - every dead letter carries a reason.
//!
//! The size comes from `CHAOS_*` variables (`make chaos`); the defaults fit CI.

mod world;

use std::time::{Duration, Instant};

use shared::lambda::metrics::{DUPLICATES, MESSAGES_RETRIED};
use tests::fault_proxy::Fault;
use world::{Size, World, fault_plan, minute, pick, rng};

/// How often the scheduler's tick and the budget sweep run (a minute each on AWS; here the
/// minutes are simulated, so they come faster).
const SCHEDULE_EVERY: Duration = Duration::from_secs(3);

/// How long the fleet may take to come to rest once the faults stop.
const SETTLE_WITHIN: Duration = Duration::from_secs(150);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_faults_and_kills_every_message_is_handled_exactly_once() {
    let size = Size::from_env();
    let began = Instant::now();
    let world = World::new(
        size.systems,
        fault_plan(size.seed),
        tests::bins::workspace_bin("evolve"),
    )
    .await;
    let mut rng = rng(size.seed);
    // Bedrock (through the proxy to the stub) for all but one worker, which runs the local
    // engine: LLM calls reserve and settle, and both engines share the queues.
    let llm = |i: usize| {
        if size.workers > 1 && i + 1 == size.workers {
            "local"
        } else {
            "bedrock"
        }
    };
    let mut workers: Vec<_> = (0..size.workers)
        .map(|i| world.worker(i, llm(i), true))
        .collect();
    world.report_baselines().await;

    // The faulty phase: until every system is driven through its generations and every kill
    // happened, or the time is up.
    let chaos_until = Instant::now() + size.chaos_for;
    let mut next_kill = Instant::now() + Duration::from_secs(3);
    let mut kills = 0;
    let mut schedule = Schedule::default();
    let mut last_look = Instant::now();
    loop {
        world.running_systems(size.generations).await;
        schedule.run_if_due(&world, &mut rng, true).await;
        if kills < size.kills && Instant::now() >= next_kill {
            let i = pick(&mut rng, workers.len());
            workers[i].sigkill();
            world.restart(i, &mut workers[i], true);
            kills += 1;
            next_kill =
                Instant::now() + Duration::from_millis(3_000 + pick(&mut rng, 5_000) as u64);
        }
        if last_look.elapsed() >= Duration::from_secs(2) {
            last_look = Instant::now();
            let heads = world.heads().await;
            let resting = heads
                .values()
                .filter(|h| World::at_rest(**h, size.generations))
                .count();
            if resting == heads.len() && kills >= size.kills {
                break;
            }
        }
        if Instant::now() >= chaos_until {
            break;
        }
    }
    let chaos_took = began.elapsed();

    // Faults off: the fleet comes to rest (every system through its generations, every queue
    // empty twice in a row), then the workers drain.
    world.proxy.set_enabled(false);
    let settle_until = Instant::now() + SETTLE_WITHIN;
    let mut quiet = 0;
    while quiet < 2 {
        world.running_systems(size.generations).await;
        schedule.run_if_due(&world, &mut rng, false).await;
        let heads = world.heads().await;
        let restless: Vec<_> = heads
            .iter()
            .filter(|(_, h)| !World::at_rest(**h, size.generations))
            .collect();
        let queued = world.queued().await;
        quiet = if restless.is_empty() && queued == 0 {
            quiet + 1
        } else {
            0
        };
        assert!(
            Instant::now() < settle_until,
            "the fleet did not come to rest within {SETTLE_WITHIN:?} of the faults stopping \
             (seed {}): {} queued, not at rest: {restless:?}\n{}",
            size.seed,
            queued,
            world.worker_logs()
        );
    }
    for worker in &workers {
        worker.sigterm();
    }
    for worker in &mut workers {
        assert!(
            worker.exit_within(Duration::from_secs(30)).await,
            "a worker did not drain within 30 s:\n{}",
            worker.log()
        );
    }

    let checked = world.check().await;
    let faults = world.proxy.totals();
    let faulted: u64 = faults.values().sum();
    let duplicates = world.worker_metric(DUPLICATES);
    let retried = world.worker_metric(MESSAGES_RETRIED);
    let (lost, duplicated) = match &checked {
        Ok(c) => (c.lost, c.duplicates),
        Err(v) => (
            v.iter().filter(|m| m.starts_with("message lost")).count(),
            v.iter().filter(|m| m.starts_with("duplicate:")).count(),
        ),
    };
    let fault_kinds: Vec<String> = Fault::ALL
        .iter()
        .map(|f| format!("{} {}", f.as_str(), faults.get(f).copied().unwrap_or(0)))
        .collect();
    println!(
        "chaos figures: seed {}, {} systems, {} workers, worker kills {kills}, generations \
         committed {} (target {} per system), faults injected {faulted} ({}), redeliveries {} \
         (pipeline duplicates {duplicates}, retried {retried}, topic {}), ticks {} ({} failed), \
         sweeps {} ({} failed), Converse requests at the stub {}, {}, messages lost: {lost}, duplicates: {duplicated}, \
         chaos {:.0} s, total {:.0} s",
        size.seed,
        size.systems,
        size.workers,
        checked.as_ref().map_or(0, |c| c.generations),
        size.generations,
        fault_kinds.join(", "),
        duplicates + retried + checked.as_ref().map_or(0, |c| c.topic_redeliveries),
        checked.as_ref().map_or(0, |c| c.topic_redeliveries),
        schedule.ticks,
        schedule.tick_failures,
        schedule.sweeps,
        schedule.sweep_failures,
        world.stub.request_count(),
        checked.as_ref().map_or_else(
            |_| "invariants violated".to_owned(),
            |c| format!(
                "heads {:?}, events {}, decisions {}, outboxes {} ({} messages, {} delivered \
                 but not marked sent), LLM calls settled {} ({} nano-USD), holds of killed calls \
                 reclaimed {}, dead letters {}, alerts {}",
                c.statuses,
                c.events,
                c.decisions,
                c.outboxes,
                c.outbox_messages,
                c.unmarked_outboxes,
                c.settled_calls,
                c.spent_nano,
                c.reclaimed_holds,
                c.dead_letters,
                c.alerts
            )
        ),
        chaos_took.as_secs_f64(),
        began.elapsed().as_secs_f64(),
    );
    println!(
        "chaos faults per operation: {}",
        world.proxy.summary().join("; ")
    );
    // `CHAOS_WORKER_LOGS=1`: the tail of every worker's log, to see what the faults did.
    if std::env::var_os("CHAOS_WORKER_LOGS").is_some() {
        println!("{}", world.worker_logs());
    }
    if let Ok(c) = &checked {
        println!("chaos LLM calls: {:?}", c.llm_calls);
    }

    if let Err(violations) = &checked {
        panic!(
            "{} invariant violation(s) (replay with CHAOS_SEED={} CHAOS_SYSTEMS={} \
             CHAOS_GENERATIONS={}):\n{}",
            violations.len(),
            size.seed,
            size.systems,
            size.generations,
            violations.join("\n")
        );
    }
    let checked = checked.expect("checked");
    // The run was a real one: it was faulty, workers died, money moved, and the fleet evolved.
    assert_eq!(kills, size.kills, "every planned kill happened");
    assert!(faulted > 0, "no fault was injected");
    assert!(
        checked.settled_calls > 0 || size.workers < 2,
        "no Bedrock call was settled"
    );
    assert!(
        checked.generations >= size.generations * size.systems as u64,
        "the fleet did not evolve: {} generations",
        checked.generations
    );
}

/// The scheduler's two jobs, each invoked through its function's handler every
/// [`SCHEDULE_EVERY`], on successive simulated minutes. A failed run is not retried: the next
/// minute's finds the same systems still due (the tick is level-triggered).
#[derive(Debug, Default)]
struct Schedule {
    last: Option<Instant>,
    minute: i64,
    ticks: usize,
    tick_failures: usize,
    sweeps: usize,
    sweep_failures: usize,
}

impl Schedule {
    async fn run_if_due(&mut self, world: &World, rng: &mut rand_chacha::ChaCha8Rng, chaos: bool) {
        if self.last.is_some_and(|l| l.elapsed() < SCHEDULE_EVERY) {
            return;
        }
        self.last = Some(Instant::now());
        let at = minute(self.minute);
        let ticked = world.tick(at).await;
        let swept = world.sweep(at).await;
        if ticked {
            self.ticks += 1;
        } else {
            self.tick_failures += 1;
        }
        if swept {
            self.sweeps += 1;
        } else {
            self.sweep_failures += 1;
        }
        // The next minute's run comes whether this one failed or not.
        self.minute += 1;
        // Now and then, while the run is faulty, the stub throttles on its own, behind the proxy.
        if chaos && pick(rng, 10) == 0 {
            world.throttle_stub(1);
        }
    }
}
