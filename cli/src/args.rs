//! Command-line arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

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
    /// Create a system from a DNA file; generation 0 is measured first by `run`.
    Init(InitArgs),
    /// Evolve a system, measuring each generation with an evaluator command.
    Run(RunArgs),
    /// The head, fitness, budget mode and last decision.
    Status(JsonFlag),
    /// Closed evaluations, newest last.
    History(ListArgs),
    /// The decision audit trail.
    Decisions(ListArgs),
    /// LLM spend: today, this month, by model, and the budget mode.
    Cost(JsonFlag),
    /// Roll back to an earlier generation (committed as a new generation, then re-measured).
    Rollback(RollbackArgs),
}

#[derive(Debug, Args)]
pub struct JsonFlag {
    /// Print JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Show at most this many rows (the newest).
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    #[arg(long)]
    pub json: bool,
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
    #[command(flatten)]
    pub engine: EngineArgs,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// The DNA file (JSON; see the README).
    #[arg(long)]
    pub dna: PathBuf,
    /// Valid fitness samples per generation.
    #[arg(long, default_value_t = 1)]
    pub samples: u32,
    /// Seconds an evaluation window stays open before it closes with what it has.
    #[arg(long, default_value_t = 600)]
    pub window: u32,
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
