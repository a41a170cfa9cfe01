//! `make bench`: the local engine against a safe random local search on the three benchmark
//! landscapes, and the pipeline's stage throughput with the in-memory and SQLite adapters.

use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use criterion::{Criterion, Throughput};
use shared::engine::LocalEngine;
use shared::local::{LocalHome, RunOptions, Silent, init_system};
use shared::sim::{Landscape, compare_on, demo_system};
use shared::stages::PipelineConfig;
use shared::store::SystemSettings;
use shared::store::memory::MemoryStore;
use shared::store::sqlite::SqliteStore;

const GENERATIONS: u32 = 30;

fn start() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
        .expect("valid time")
        .with_timezone(&Utc)
}

/// One 30-generation demo run; returns the messages the bus carried.
async fn demo_run<S>(store: Arc<S>) -> u64
where
    S: shared::store::EvolutionStore
        + shared::store::ControlState
        + shared::store::CostLedger
        + 'static,
{
    let system = demo_system();
    let (id, schema, genes) = system.dna();
    let home = LocalHome::new(
        store,
        Arc::new(LocalEngine::new(7)),
        start(),
        PipelineConfig::default(),
    );
    init_system(
        &home.deps,
        home.bus.as_ref(),
        &id,
        schema,
        genes,
        SystemSettings::default(),
    )
    .await
    .expect("init");
    let opts = RunOptions {
        generations: GENERATIONS,
        ..RunOptions::default()
    };
    let report = home
        .runner(&system)
        .run(&id, &opts, &Silent)
        .await
        .expect("run");
    assert_eq!(report.generations, GENERATIONS);
    home.bus.sent_count()
}

fn engine_quality() {
    let seeds: Vec<u64> = (1..=20).collect();
    println!(
        "local engine vs safe random local search (mean gain over {} seeds, 30 evaluations each):",
        seeds.len()
    );
    for landscape in Landscape::BENCHMARKS {
        match compare_on(landscape, &seeds, 30) {
            Ok(c) => println!("  {c}"),
            Err(e) => println!("  {landscape}: comparison failed: {e}"),
        }
    }
}

fn throughput(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let messages = runtime.block_on(demo_run(Arc::new(MemoryStore::new())));
    // A direct figure for the notes, besides criterion's own.
    let runs = 20;
    let began = Instant::now();
    for _ in 0..runs {
        runtime.block_on(demo_run(Arc::new(MemoryStore::new())));
    }
    let secs = began.elapsed().as_secs_f64();
    println!(
        "stage throughput, in-memory adapters: {:.0} messages/s ({messages} messages per {GENERATIONS}-generation run, {:.2} ms per run)",
        (messages * runs) as f64 / secs,
        secs * 1000.0 / runs as f64
    );
    let began = Instant::now();
    for _ in 0..5 {
        let store = SqliteStore::open_in_memory().expect("sqlite");
        runtime.block_on(demo_run(Arc::new(store)));
    }
    let secs = began.elapsed().as_secs_f64();
    println!(
        "stage throughput, SQLite adapter (in-memory database): {:.0} messages/s",
        (messages * 5) as f64 / secs
    );

    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(messages));
    group.sample_size(20);
    group.bench_function("demo_30_generations/memory", |b| {
        b.iter(|| runtime.block_on(demo_run(Arc::new(MemoryStore::new()))));
    });
    group.bench_function("demo_30_generations/sqlite", |b| {
        b.iter(|| {
            let store = SqliteStore::open_in_memory().expect("sqlite");
            runtime.block_on(demo_run(Arc::new(store)))
        });
    });
    group.finish();
}

fn main() {
    engine_quality();
    let mut criterion = Criterion::default().configure_from_args();
    throughput(&mut criterion);
    criterion.final_summary();
}
