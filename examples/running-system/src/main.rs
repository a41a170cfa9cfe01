//! `running-system`: one instance of the simulated service, on the stack's queues.

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use running_system::sqs::{SqsFitnessQueue, SqsInbox};
use running_system::{Instance, InstanceConfig, Pace, SimulatedService, run};
use tracing_subscriber::EnvFilter;

/// Runs one instance of a simulated service that applies the DNA evolve publishes for its
/// system and reports its fitness. AWS credentials, region and endpoint come from the usual
/// environment (`AWS_PROFILE`, `AWS_REGION`, `AWS_ENDPOINT_URL`, ...).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The system this instance belongs to; messages for other systems are ignored.
    #[arg(long)]
    system_id: String,
    /// This instance's name, unique among the system's instances (it is part of report ids).
    #[arg(long, default_value = "instance-1")]
    instance_id: String,
    /// The instance's own SQS queue, subscribed to the events topic with raw message delivery.
    #[arg(long)]
    dna_queue_url: String,
    /// The stack's fitness queue (`FitnessQueueUrl`).
    #[arg(long)]
    fitness_queue_url: String,
    /// Reports sent for each generation applied.
    #[arg(long, default_value_t = 3)]
    measurements_per_generation: u32,
    /// Seconds each measurement observes the service.
    #[arg(long, default_value_t = 10.0)]
    measurement_seconds: f64,
    /// The host's memory: a configuration that needs more crashes the service.
    #[arg(long, default_value_t = 1024.0)]
    memory_limit_mb: f64,
    /// Chance (0..1) that a measurement times out whatever the genes.
    #[arg(long, default_value_t = 0.0)]
    timeout_rate: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let measurement = Duration::try_from_secs_f64(args.measurement_seconds)
        .context("--measurement-seconds must be a non-negative number")?;
    let aws = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let sqs = aws_sdk_sqs::Client::new(&aws);
    let instance = Instance::new(
        InstanceConfig {
            system_id: args.system_id,
            instance_id: args.instance_id,
            measurements_per_generation: args.measurements_per_generation,
        },
        SimulatedService {
            memory_limit_mb: args.memory_limit_mb,
            timeout_rate: args.timeout_rate,
        },
    );
    let inbox = SqsInbox::new(sqs.clone(), args.dna_queue_url, 20);
    let fitness = SqsFitnessQueue::new(sqs, args.fitness_queue_url);
    let pace = Pace {
        measurement,
        retry: Duration::from_secs(5),
    };
    let instance = run(instance, &inbox, &fitness, pace, stop_signal()).await;
    tracing::info!(
        running = instance.running().map(|r| r.generation),
        "stopped"
    );
    Ok(())
}

/// Ctrl-C or SIGTERM (how a container is stopped).
async fn stop_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
