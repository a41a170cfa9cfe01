//! `evolve worker --store aws`: the flags become a `WorkerConfig`, the SDK clients are built
//! once, and `shared::worker` runs until SIGTERM or Ctrl-C.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_config::BehaviorVersion;
use shared::cost::Budgets;
use shared::domain::{Queue, Topic};
use shared::lambda::config::{ApprovalGate, LlmEngine, LlmSettings};
use shared::stages::PipelineConfig;
use shared::worker::{Clients, Timing, Worker, WorkerConfig, WorkerError, stop_signal};

use crate::args::{Cli, Llm, StoreKind, WorkerArgs};
use crate::output::bad_input;

pub async fn run(cli: &Cli, args: &WorkerArgs) -> anyhow::Result<()> {
    if cli.store != StoreKind::Aws {
        return Err(bad_input(
            "`worker` consumes a deployed stack's queues: use --store aws (or EVOLVE_STORE=aws)",
        ));
    }
    let config = config(cli, args)?;
    let sdk = aws_config::load_defaults(BehaviorVersion::latest()).await;
    let clients = Clients {
        dynamo: aws_sdk_dynamodb::Client::new(&sdk),
        // Path-style addressing works with every S3 endpoint, local stand-ins included.
        s3: aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&sdk)
                .force_path_style(true)
                .build(),
        ),
        sqs: aws_sdk_sqs::Client::new(&sdk),
        sns: aws_sdk_sns::Client::new(&sdk),
        bedrock: aws_sdk_bedrockruntime::config::Builder::from(&sdk),
    };
    let worker = Worker::on_aws(&config, clients).map_err(|e| match e {
        WorkerError::Config(e) => bad_input(e.to_string()),
        other @ WorkerError::Queue { .. } => other.into(),
    })?;
    let report = worker.run(stop_signal()).await?;
    eprintln!(
        "worker stopped: {} deleted, {} left for redelivery, {} abandoned in flight",
        report.deleted, report.retried, report.abandoned
    );
    Ok(())
}

fn config(cli: &Cli, args: &WorkerArgs) -> anyhow::Result<WorkerConfig> {
    let required = |value: &Option<String>, flag: &str, var: &str| {
        value.clone().ok_or_else(|| {
            bad_input(format!(
                "`worker` needs {flag} (or {var}); the stack's outputs list it"
            ))
        })
    };
    let table_name = required(&cli.table, "--table", "EVOLVE_TABLE_NAME")?;
    let bucket_name = required(&cli.bucket, "--bucket", "EVOLVE_BUCKET_NAME")?;
    let consumes = WorkerConfig::parse_queues(&args.queues)
        .map_err(|e| bad_input(format!("--queues: {e}")))?;
    let (queue_urls, dead_letters) = queue_urls(cli, args);
    let topics = topic_arns(args);
    // The template passes "" for an omitted budget.
    let nano = |value: &Option<String>, flag: &str| -> anyhow::Result<Option<u64>> {
        match value.as_deref().map(str::trim).filter(|v| !v.is_empty()) {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| bad_input(format!("{flag}: expected a whole number of nano-USD"))),
        }
    };
    Ok(WorkerConfig {
        table_name,
        bucket_name,
        consumes,
        queue_urls,
        dead_letters,
        topics,
        budgets: Budgets {
            global_daily: nano(&args.daily_budget_nano_usd, "--daily-budget-nano-usd")?,
            global_monthly: nano(&args.monthly_budget_nano_usd, "--monthly-budget-nano-usd")?,
            ..PipelineConfig::default().budgets
        },
        llm: LlmSettings {
            engine: match args.llm {
                Llm::Bedrock => LlmEngine::Bedrock,
                Llm::Local => LlmEngine::Local,
            },
            model_catalog: args.model_catalog.clone(),
            response_cache_ttl_seconds: Some(args.response_cache_ttl_seconds),
        },
        gate: ApprovalGate {
            threshold: match args.approval_threshold {
                Some(t) if !(0.0..=1.0).contains(&t) => {
                    return Err(bad_input(format!(
                        "--approval-threshold {t}: expected a risk between 0 and 1"
                    )));
                }
                t => t,
            },
            ttl_seconds: if args.approval_ttl_seconds == 0 {
                return Err(bad_input("--approval-ttl-seconds must be at least 1"));
            } else {
                args.approval_ttl_seconds
            },
        },
        timing: Timing {
            concurrency: args.concurrency,
            visibility: Duration::from_secs(args.visibility_timeout),
            message_timeout: Duration::from_secs(args.message_timeout),
            drain_timeout: Duration::from_secs(args.drain_timeout),
            ..Timing::default()
        },
    })
}

/// The queue URLs given, and the dead-letter queue URLs given, by queue; a blank flag counts as
/// not given.
fn queue_urls(cli: &Cli, args: &WorkerArgs) -> (BTreeMap<Queue, String>, BTreeMap<Queue, String>) {
    let given = |pairs: [(Queue, &Option<String>); 6]| -> BTreeMap<Queue, String> {
        pairs
            .into_iter()
            .filter_map(|(q, v)| {
                v.as_deref()
                    .map(str::trim)
                    .filter(|v| !v.is_empty())
                    .map(|v| (q, v.to_owned()))
            })
            .collect()
    };
    // Each queue with its URL and its dead-letter queue's URL.
    let queues = [
        (
            Queue::Analyze,
            &args.analyze_queue_url,
            &args.analyze_dlq_url,
        ),
        (
            Queue::Strategize,
            &args.strategize_queue_url,
            &args.strategize_dlq_url,
        ),
        (Queue::Decide, &cli.decide_queue_url, &args.decide_dlq_url),
        (
            Queue::Snapshot,
            &cli.snapshot_queue_url,
            &args.snapshot_dlq_url,
        ),
        (
            Queue::Fitness,
            &args.fitness_queue_url,
            &args.fitness_dlq_url,
        ),
        (
            Queue::CostGuard,
            &args.cost_guard_queue_url,
            &args.cost_guard_dlq_url,
        ),
    ];
    (
        given(queues.map(|(q, url, _)| (q, url))),
        given(queues.map(|(q, _, dlq)| (q, dlq))),
    )
}

/// The topic ARNs given, by topic.
fn topic_arns(args: &WorkerArgs) -> BTreeMap<Topic, String> {
    [
        (Topic::EvolutionEvents, &args.events_topic_arn),
        (Topic::Alerts, &args.alerts_topic_arn),
    ]
    .into_iter()
    .filter_map(|(t, v)| {
        v.as_deref()
            .filter(|v| !v.trim().is_empty())
            .map(|v| (t, v.to_owned()))
    })
    .collect()
}
