//! Command-line arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use shared::worker::config as worker;

#[derive(Debug, Parser)]
#[command(
    name = "evolve",
    version,
    about = "LLM-guided evolution of a system's tunable parameters"
)]
pub struct Cli {
    /// Where the embedded store lives (`<DIR>/evolution.db`).
    #[arg(
        long,
        global = true,
        env = "EVOLVE_STATE_DIR",
        default_value = ".evolve"
    )]
    pub state: PathBuf,
    /// The system to act on; may be left out when the store holds exactly one.
    #[arg(long, global = true, env = "EVOLVE_SYSTEM")]
    pub system: Option<String>,
    /// Where the records live: the embedded SQLite store, or a deployed stack's DynamoDB table
    /// and S3 bucket.
    #[arg(long, global = true, value_enum, env = "EVOLVE_STORE", default_value_t = StoreKind::Local)]
    pub store: StoreKind,
    /// With `--store aws`: the stack's DynamoDB table (output `TableName`).
    #[arg(long, global = true, env = "EVOLVE_TABLE_NAME")]
    pub table: Option<String>,
    /// With `--store aws`: the stack's S3 bucket (output `BucketName`).
    #[arg(long, global = true, env = "EVOLVE_BUCKET_NAME")]
    pub bucket: Option<String>,
    /// With `--store aws`: the snapshot queue operators send rollbacks to (output
    /// `SnapshotQueueUrl`).
    #[arg(long, global = true, env = "EVOLVE_SNAPSHOT_QUEUE_URL")]
    pub snapshot_queue_url: Option<String>,
    /// With `--store aws`: the decide queue operators send approvals and resumes to (output
    /// `DecideQueueUrl`).
    #[arg(long, global = true, env = "EVOLVE_DECIDE_QUEUE_URL")]
    pub decide_queue_url: Option<String>,
    /// With `--store aws`: the events topic `init` publishes generation 0 on (output
    /// `EvolutionEventsTopicArn`).
    #[arg(long, global = true, env = "EVOLVE_EVENTS_TOPIC_ARN")]
    pub events_topic_arn: Option<String>,
    /// More logging on stderr (-v info, -vv debug). `RUST_LOG` overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    /// `<state>/evolution.db`, run in this process.
    Local,
    /// A deployed stack (standard AWS credential chain; `AWS_ENDPOINT_URL` honoured).
    Aws,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Re-create the built-in simulated system and evolve it (init + run with a built-in evaluator).
    Demo(DemoArgs),
    /// Create a system from a DNA file and publish generation 0 (`DnaUpdated`); generation 0 is
    /// measured first.
    Init(InitArgs),
    /// Show a system's settings, or change them (audited): samples, window, cycle interval.
    Settings(SettingsArgs),
    /// Evolve a system, measuring each generation with an evaluator command.
    Run(RunArgs),
    /// At a glance: generation and status, fitness and trend, budget mode and spend against
    /// budget, pending approvals, the last decision.
    Status(StatusArgs),
    /// Closed evaluations, newest last.
    ///
    /// With `--type`, `--id` or `--events`: the evolution events instead (the seed's history
    /// query), by type, id and time range, each with where it is stored.
    History(HistoryArgs),
    /// The decision audit trail.
    Decisions(ListArgs),
    /// A cycle's timeline from the store: the events, LLM calls and decisions of one trace in
    /// time order, each with its message id and trace id (to search the logs by).
    Trace(TraceArgs),
    /// LLM spend: today, this month, by model, and the budget mode. With `--reconcile`: each
    /// past day's spend as the ledger counted it against what AWS billed for it.
    Cost(CostArgs),
    /// Roll back to an earlier generation (committed as a new generation, then re-measured).
    Rollback(RollbackArgs),
    /// With `--store aws`: consume the stack's queues and run the pipeline, as the functions do,
    /// until SIGTERM or Ctrl-C (then finish the messages in flight).
    Worker(Box<WorkerArgs>),
    /// Approve a decision held for approval (`PENDING_APPROVAL`); the mutation is then applied.
    Approve(VerdictArgs),
    /// Reject a decision held for approval; the plan moves on to its next step.
    Reject(VerdictArgs),
    /// Resume a paused system: its head goes back to stable and the next tick schedules a
    /// cycle.
    Resume(ResumeArgs),
    /// Write a self-contained HTML report: fitness, genes, decisions, spend, budget mode and
    /// predictions, with inline charts.
    Report(ReportArgs),
    /// What if: ask the recorded analyses, plans and decisions again under another engine,
    /// model catalog, budget or approval gate, against the DNA and history of their time, and
    /// compare. Reads the store and changes nothing in it; spends a budget of its own.
    Replay(ReplayArgs),
    /// With `--store aws`: move the writer to a replica region. Fences this region, waits until
    /// the replica holds every head, its generation and the recent events with their bodies,
    /// then makes the replica the writer; audited. `--status` only reports.
    Failover(FailoverArgs),
    /// With `--store aws`, run against the region that writes now: move the writer back to the
    /// stack's home region, the same way.
    Failback(MoveArgs),
}

#[derive(Debug, Args)]
pub struct FailoverArgs {
    /// The replica region to move the writer to.
    #[arg(long, required_unless_present = "status")]
    pub to: Option<String>,
    /// Show who writes, and with `--to`, how far that region's replica is behind; change
    /// nothing.
    #[arg(long)]
    pub status: bool,
    /// The old writer's region cannot be reached: promote the target without fencing or
    /// checking (writes that did not replicate are lost; the old region is fenced when
    /// replication reaches it again).
    #[arg(long, conflicts_with = "status")]
    pub force: bool,
    #[command(flatten)]
    pub moving: MoveArgs,
}

#[derive(Debug, Args)]
pub struct MoveArgs {
    /// The target region's bucket (the replication destination; for `failback`, the home
    /// bucket).
    #[arg(long, env = "EVOLVE_TARGET_BUCKET_NAME")]
    pub to_bucket: Option<String>,
    /// Event index items from this time on must have arrived with their bodies: RFC 3339, a
    /// date, or an age (`6h`, `2d`).
    #[arg(long, value_parser = parse_since, default_value = "1d")]
    pub since: chrono::DateTime<chrono::Utc>,
    /// Seconds to wait for the target to catch up before lifting the fence again.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// Print JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct VerdictArgs {
    /// The pending decision's id (`evolve status` and the approval alert name it).
    pub decision_id: String,
    /// Why, for the audit trail.
    #[arg(long)]
    pub note: Option<String>,
    /// Locally, the engine that plays the LLM roles for what follows a rejection.
    #[command(flatten)]
    pub engine: EngineArgs,
}

#[derive(Debug, Args)]
pub struct ResumeArgs {
    /// Why, for the audit trail.
    #[arg(long)]
    pub note: Option<String>,
}

/// What an unattended local run does with a decision held for approval; without either flag it
/// stops there.
#[derive(Debug, Args)]
pub struct PendingArgs {
    /// Approve every decision held for approval, in the OS user's name.
    #[arg(long, conflicts_with = "reject_pending")]
    pub approve_all: bool,
    /// Reject every decision held for approval, in the OS user's name.
    #[arg(long)]
    pub reject_pending: bool,
}

#[derive(Debug, Args)]
pub struct JsonFlag {
    /// Print JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CostArgs {
    /// Print JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// The bill's daily reconciliations (what AWS billed for Bedrock against the ledger, per day
    /// and model) instead of the spend.
    #[arg(long)]
    pub reconcile: bool,
    /// With `--reconcile --store aws`: reconcile this past UTC day (YYYY-MM-DD) now, from Cost
    /// Explorer, unless it is reconciled already; prints that day's record.
    #[arg(long, requires = "reconcile", value_parser = parse_day)]
    pub day: Option<chrono::NaiveDate>,
    /// With `--day`: the difference that raises an alert, in basis points of the bill.
    #[arg(long, env = "EVOLVE_RECONCILE_THRESHOLD_BP", default_value_t = shared::cost::reconcile::DEFAULT_THRESHOLD_BP)]
    pub threshold_bp: u32,
}

/// `--day`: a UTC calendar day.
fn parse_day(text: &str) -> Result<chrono::NaiveDate, String> {
    chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .map_err(|_| format!("{text:?} is not a day like 2026-12-04"))
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// The global daily budget to show spend against, in US dollars.
    #[arg(long, env = "EVOLVE_DAILY_BUDGET_USD")]
    pub daily_budget_usd: Option<String>,
    /// The global monthly budget to show spend against, in US dollars.
    #[arg(long, env = "EVOLVE_MONTHLY_BUDGET_USD")]
    pub monthly_budget_usd: Option<String>,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Show at most this many rows (the newest); 20 by default, every row with `--format jsonl`
    /// (an export).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Only rows at or after this time: RFC 3339 (`2026-11-27T09:00:00Z`), a date
    /// (`2026-11-27`), or an age (`90m`, `6h`, `2d`).
    #[arg(long, value_parser = parse_since)]
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Only rows before this time (same forms as `--since`).
    #[arg(long, value_parser = parse_since)]
    pub until: Option<chrono::DateTime<chrono::Utc>>,
    /// Same as `--format json`.
    #[arg(long, conflicts_with = "format")]
    pub json: bool,
    /// `table` for people, `json` (one array) or `jsonl` (one object per line, for exports
    /// and log pipelines).
    #[arg(long, value_enum)]
    pub format: Option<Format>,
}

impl ListArgs {
    pub fn format(&self) -> Format {
        match (self.json, self.format) {
            (true, _) => Format::Json,
            (false, format) => format.unwrap_or(Format::Table),
        }
    }

    pub fn limit(&self) -> usize {
        self.limit.unwrap_or(match self.format() {
            Format::Jsonl => usize::MAX,
            Format::Table | Format::Json => 20,
        })
    }

    /// Whether `at` falls in `[since, until)`.
    pub fn covers(&self, at: chrono::DateTime<chrono::Utc>) -> bool {
        self.since.is_none_or(|s| at >= s) && self.until.is_none_or(|u| at < u)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Jsonl,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    #[command(flatten)]
    pub list: ListArgs,
    /// Events of this type (`mutation_applied`, `mutation_rolled_back`, ...; repeatable).
    #[arg(long = "type", value_parser = parse_event_type)]
    pub types: Vec<shared::domain::EventType>,
    /// The event with this id.
    #[arg(long)]
    pub id: Option<String>,
    /// List evolution events rather than closed evaluations.
    #[arg(long)]
    pub events: bool,
}

fn parse_event_type(text: &str) -> Result<shared::domain::EventType, String> {
    shared::domain::EventType::parse(text)
        .ok_or_else(|| format!("unknown event type {text:?} (e.g. mutation_applied)"))
}

/// Which engine plays the LLM roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Llm {
    /// The deterministic local engine: no AWS account, no cost.
    Local,
    /// Amazon Bedrock through the standard AWS credential chain (honours `AWS_ENDPOINT_URL`
    /// and `AWS_ENDPOINT_URL_BEDROCK_RUNTIME`), with the local engine as fallback.
    Bedrock,
}

#[derive(Debug, Args)]
pub struct EngineArgs {
    /// Seed of the local engine and of the simulated system's noise.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Print the run summary as one JSON object on the last stdout line.
    #[arg(long)]
    pub json: bool,
    /// Which engine plays the LLM roles.
    #[arg(long, value_enum, default_value_t = Llm::Local, env = "EVOLVE_LLM")]
    pub llm: Llm,
    /// A model catalog JSON file replacing the built-in one.
    #[arg(long, env = "EVOLVE_MODEL_CATALOG")]
    pub model_catalog: Option<PathBuf>,
    /// Global daily LLM budget in US dollars (e.g. 5 or 0.25); unlimited when absent.
    #[arg(long, env = "EVOLVE_DAILY_BUDGET_USD")]
    pub daily_budget_usd: Option<String>,
    /// Global monthly LLM budget in US dollars; unlimited when absent.
    #[arg(long, env = "EVOLVE_MONTHLY_BUDGET_USD")]
    pub monthly_budget_usd: Option<String>,
    /// Hold approvals whose risk (0..1) is above this for a human (`evolve approve`); no gate
    /// when absent.
    #[arg(long, env = "EVOLVE_APPROVAL_RISK_THRESHOLD")]
    pub approval_threshold: Option<f64>,
    /// Seconds a held approval waits before it is rejected.
    #[arg(long, env = "EVOLVE_APPROVAL_TTL_SECONDS", default_value_t = 86_400)]
    pub approval_ttl_seconds: u32,
    /// Seconds a validated Bedrock answer is reused for an identical request, at no cost
    /// (0 turns the response cache off).
    #[arg(long, default_value_t = 900, env = "EVOLVE_RESPONSE_CACHE_TTL_SECONDS")]
    pub response_cache_ttl_seconds: u32,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Mutation generations to evaluate.
    #[arg(long, default_value_t = 30)]
    pub generations: u32,
    /// Continue the demo system where the last demo stopped (after `evolve approve`, say)
    /// instead of re-creating it.
    #[arg(long = "continue")]
    pub resume: bool,
    /// Run the service with load drift over the day and latency spikes, judged by guardrails,
    /// a rank test over three samples and a canary on a fifth of the instances.
    #[arg(long)]
    pub noisy: bool,
    /// Write the run's spans to FILE as OTLP JSON: one trace per cycle, each message's stage,
    /// LLM calls and store transactions under it, timed in the demo's simulated time.
    #[arg(long, value_name = "FILE")]
    pub trace: Option<PathBuf>,
    #[command(flatten)]
    pub engine: EngineArgs,
    #[command(flatten)]
    pub pending: PendingArgs,
}

#[derive(Debug, Args)]
pub struct TraceArgs {
    /// A trace id (32 hex digits), or the id of a decision, an event, an LLM call or a message
    /// of the cycle.
    pub id: String,
    /// One JSON array instead of the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// The DNA file (JSON; see the README).
    #[arg(long)]
    pub dna: PathBuf,
    /// Valid fitness samples per generation; with 2 or more a window is judged by a rank
    /// test against the parent's samples.
    #[arg(long, default_value_t = 1)]
    pub samples: u32,
    /// Confidence in percent (51 to 99) a significance verdict needs.
    #[arg(long, default_value_t = shared::stages::judge::DEFAULT_CONFIDENCE_PERCENT)]
    pub confidence: u32,
    /// Seconds an evaluation window stays open before it closes with what it has.
    #[arg(long, default_value_t = 600)]
    pub window: u32,
    /// Seconds between the cycles the tick schedules for an idle system (at least 60).
    #[arg(long, default_value_t = 900)]
    pub interval: u32,
}

#[derive(Debug, Args)]
pub struct SettingsArgs {
    /// Valid fitness samples per generation; with 2 or more a window is judged by a rank
    /// test against the parent's samples.
    #[arg(long)]
    pub samples: Option<u32>,
    /// Confidence in percent (51 to 99) a significance verdict needs.
    #[arg(long)]
    pub confidence: Option<u32>,
    /// Seconds an evaluation window stays open (windows opened from now on).
    #[arg(long)]
    pub window: Option<u32>,
    /// Seconds between scheduled cycles (at least 60); a shorter one takes effect at once.
    #[arg(long)]
    pub interval: Option<u32>,
    /// Print the settings as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Evaluator command, run through `sh -c`: genes JSON on stdin, one
    /// `{"score": N, "metrics": {...}}` object on stdout. Higher is better.
    #[arg(long)]
    pub evaluator: String,
    /// Mutation generations to evaluate in this invocation.
    #[arg(long, default_value_t = 10)]
    pub generations: u32,
    /// Evaluations per generation (changes the system's setting).
    #[arg(long)]
    pub samples: Option<u32>,
    /// Seconds one evaluation may take before it is killed and counted as failed.
    #[arg(long, default_value_t = 60)]
    pub eval_timeout: u64,
    #[command(flatten)]
    pub engine: EngineArgs,
    #[command(flatten)]
    pub pending: PendingArgs,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The generation whose genes to restore (default: the one before the current genes).
    #[arg(long)]
    pub to: Option<u64>,
    /// Why, for the audit trail.
    #[arg(long, default_value = "operator request")]
    pub reason: String,
}

/// `evolve worker`: queue URLs and topic ARNs are the stack's outputs. The snapshot and decide
/// queues are the global `--snapshot-queue-url` and `--decide-queue-url`.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// The queues to consume, comma separated (analyze, strategize, decide, snapshot, fitness,
    /// cost-guard), or `all`.
    #[arg(long, env = worker::QUEUES, default_value = "all")]
    pub queues: String,
    /// Messages processed at once per queue.
    #[arg(long, env = worker::CONCURRENCY, default_value_t = 2)]
    pub concurrency: usize,
    /// Seconds a received message stays hidden; a heartbeat renews it every third of this.
    #[arg(long, env = worker::VISIBILITY_TIMEOUT, default_value_t = 60)]
    pub visibility_timeout: u64,
    /// Seconds one message may take; after a failure, the message is hidden this long.
    #[arg(long, env = worker::MESSAGE_TIMEOUT, default_value_t = 300)]
    pub message_timeout: u64,
    /// Seconds the messages in flight may take to finish after SIGTERM or Ctrl-C.
    #[arg(long, env = worker::DRAIN_TIMEOUT, default_value_t = 25)]
    pub drain_timeout: u64,
    /// Which engine plays the LLM roles (the functions' default: Bedrock).
    #[arg(long, value_enum, default_value_t = Llm::Bedrock, env = worker::LLM)]
    pub llm: Llm,
    /// A model catalog JSON file replacing the built-in one.
    #[arg(long, env = worker::MODEL_CATALOG)]
    pub model_catalog: Option<PathBuf>,
    /// Global daily LLM budget in whole nano-USD (the stack's `DailyBudgetNanoUsd`); empty or
    /// absent for none.
    #[arg(long, env = worker::DAILY_BUDGET_NANO_USD)]
    pub daily_budget_nano_usd: Option<String>,
    /// Global monthly LLM budget in whole nano-USD; empty or absent for none.
    #[arg(long, env = worker::MONTHLY_BUDGET_NANO_USD)]
    pub monthly_budget_nano_usd: Option<String>,
    /// decide's approval gate: risk (0..1) above which an approval waits for an operator.
    #[arg(long, env = worker::APPROVAL_RISK_THRESHOLD)]
    pub approval_threshold: Option<f64>,
    /// Seconds a held approval waits before the tick rejects it.
    #[arg(long, env = worker::APPROVAL_TTL_SECONDS, default_value_t = 86_400)]
    pub approval_ttl_seconds: u32,
    /// Seconds a validated Bedrock answer is reused for an identical request (0: off).
    #[arg(long, env = worker::RESPONSE_CACHE_TTL_SECONDS, default_value_t = 900)]
    pub response_cache_ttl_seconds: u32,
    /// The analyze queue (output `AnalyzeQueueUrl`).
    #[arg(long, env = worker::ANALYZE_QUEUE_URL)]
    pub analyze_queue_url: Option<String>,
    /// The strategize queue (output `StrategizeQueueUrl`).
    #[arg(long, env = worker::STRATEGIZE_QUEUE_URL)]
    pub strategize_queue_url: Option<String>,
    /// The fitness queue (output `FitnessQueueUrl`).
    #[arg(long, env = worker::FITNESS_QUEUE_URL)]
    pub fitness_queue_url: Option<String>,
    /// The cost-guard queue (output `CostGuardQueueUrl`).
    #[arg(long, env = worker::COST_GUARD_QUEUE_URL)]
    pub cost_guard_queue_url: Option<String>,
    /// The analyze queue's dead-letter queue (output `AnalyzeDeadLetterQueueUrl`).
    #[arg(long, env = worker::ANALYZE_DLQ_URL)]
    pub analyze_dlq_url: Option<String>,
    /// The strategize queue's dead-letter queue (output `StrategizeDeadLetterQueueUrl`).
    #[arg(long, env = worker::STRATEGIZE_DLQ_URL)]
    pub strategize_dlq_url: Option<String>,
    /// The decide queue's dead-letter queue (output `DecideDeadLetterQueueUrl`).
    #[arg(long, env = worker::DECIDE_DLQ_URL)]
    pub decide_dlq_url: Option<String>,
    /// The snapshot queue's dead-letter queue (output `SnapshotDeadLetterQueueUrl`).
    #[arg(long, env = worker::SNAPSHOT_DLQ_URL)]
    pub snapshot_dlq_url: Option<String>,
    /// The fitness queue's dead-letter queue (output `FitnessDeadLetterQueueUrl`).
    #[arg(long, env = worker::FITNESS_DLQ_URL)]
    pub fitness_dlq_url: Option<String>,
    /// The cost-guard queue's dead-letter queue (output `CostGuardDeadLetterQueueUrl`).
    #[arg(long, env = worker::COST_GUARD_DLQ_URL)]
    pub cost_guard_dlq_url: Option<String>,
    /// The `evolution-events` topic (output `EvolutionEventsTopicArn`).
    #[arg(long, env = worker::EVENTS_TOPIC_ARN)]
    pub events_topic_arn: Option<String>,
    /// The `alerts` topic (output `AlertsTopicArn`).
    #[arg(long, env = worker::ALERTS_TOPIC_ARN)]
    pub alerts_topic_arn: Option<String>,
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Replay what was recorded at or after this time: RFC 3339, a date, or an age (`6h`, `7d`).
    #[arg(long, value_parser = parse_since)]
    pub since: chrono::DateTime<chrono::Utc>,
    /// Only what was recorded before this time (same forms as `--since`).
    #[arg(long, value_parser = parse_since)]
    pub until: Option<chrono::DateTime<chrono::Utc>>,
    /// Replay every system in the store (default: `--system`, or the only one).
    #[arg(long)]
    pub all: bool,
    /// The engine, catalog, budgets and approval gate to replay under (`--json` prints the
    /// whole comparison as one JSON object, the input of `evolve report --replay`).
    #[command(flatten)]
    pub engine: EngineArgs,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Where to write the HTML file (default: `<state>/report.html`; with `--store aws`,
    /// `<system>-report.html` in the working directory).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The global daily LLM budget in US dollars, drawn on the spend chart.
    #[arg(long, env = "EVOLVE_DAILY_BUDGET_USD")]
    pub daily_budget_usd: Option<String>,
    /// The two objectives (metric names, `A,B`) to draw the Pareto front of kept generations
    /// for; the DNA file's first two by default.
    #[arg(long, value_delimiter = ',')]
    pub pareto: Vec<String>,
    /// A replay's comparison (`evolve replay --json > FILE`) to add as the report's what-if
    /// section.
    #[arg(long)]
    pub replay: Option<PathBuf>,
}

/// `--since`: an instant, a day (UTC midnight) or an age before now.
fn parse_since(text: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    use chrono::{DateTime, Duration, NaiveDate, Utc};
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(d) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc());
    }
    let (number, unit) = text.split_at(text.len().saturating_sub(1));
    let n: i64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a time, a date or an age like 6h"))?;
    let age = match unit {
        "s" => Duration::seconds(n),
        "m" => Duration::minutes(n),
        "h" => Duration::hours(n),
        "d" => Duration::days(n),
        _ => return Err(format!("{text:?}: an age ends in s, m, h or d")),
    };
    Ok(Utc::now() - age)
}

#[cfg(test)]
mod tests {
    use super::parse_since;

    #[test]
    fn since_takes_instants_dates_and_ages() {
        assert_eq!(
            parse_since("2026-11-27T09:30:00Z")
                .expect("instant")
                .to_rfc3339(),
            "2026-11-27T09:30:00+00:00"
        );
        assert_eq!(
            parse_since("2026-11-27").expect("date").to_rfc3339(),
            "2026-11-27T00:00:00+00:00"
        );
        let six_hours = chrono::Utc::now() - parse_since("6h").expect("age");
        assert!((six_hours.num_minutes() - 360).abs() <= 1);
        assert!(parse_since("6x").is_err());
        assert!(parse_since("yesterday").is_err());
    }
}
