//! Typed configuration of each function, read once at cold start from its environment.
//!
//! Each function reads only what it needs: its table and bucket, the URL of every queue and the
//! ARN of every topic its stage can send to, the dead-letter queue of every queue it consumes,
//! and, where it spends or polices money, the budgets and the LLM engine. `VARIABLES` lists
//! exactly the names a type reads (a test holds `from_map` to it), so the deployment template
//! can be checked against it.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;

use super::QueueSources;
use crate::bus::aws::Destinations;
use crate::cost::Budgets;
use crate::domain::{Queue, Topic};
use crate::stages::PipelineConfig;

pub const TABLE_NAME: &str = "TABLE_NAME";
pub const BUCKET_NAME: &str = "BUCKET_NAME";
pub const ANALYZE_QUEUE_URL: &str = "ANALYZE_QUEUE_URL";
pub const STRATEGIZE_QUEUE_URL: &str = "STRATEGIZE_QUEUE_URL";
pub const DECIDE_QUEUE_URL: &str = "DECIDE_QUEUE_URL";
pub const SNAPSHOT_QUEUE_URL: &str = "SNAPSHOT_QUEUE_URL";
pub const FITNESS_QUEUE_URL: &str = "FITNESS_QUEUE_URL";
pub const COST_GUARD_QUEUE_URL: &str = "COST_GUARD_QUEUE_URL";
pub const ANALYZE_DLQ_URL: &str = "ANALYZE_DLQ_URL";
pub const STRATEGIZE_DLQ_URL: &str = "STRATEGIZE_DLQ_URL";
pub const DECIDE_DLQ_URL: &str = "DECIDE_DLQ_URL";
pub const SNAPSHOT_DLQ_URL: &str = "SNAPSHOT_DLQ_URL";
pub const FITNESS_DLQ_URL: &str = "FITNESS_DLQ_URL";
pub const COST_GUARD_DLQ_URL: &str = "COST_GUARD_DLQ_URL";
/// The snapshot function consumes two queues and tells their records apart by source ARN.
pub const SNAPSHOT_QUEUE_ARN: &str = "SNAPSHOT_QUEUE_ARN";
pub const FITNESS_QUEUE_ARN: &str = "FITNESS_QUEUE_ARN";
pub const EVENTS_TOPIC_ARN: &str = "EVENTS_TOPIC_ARN";
pub const ALERTS_TOPIC_ARN: &str = "ALERTS_TOPIC_ARN";
/// Optional global budgets, in integer nano-USD.
pub const DAILY_BUDGET_NANO_USD: &str = "DAILY_BUDGET_NANO_USD";
pub const MONTHLY_BUDGET_NANO_USD: &str = "MONTHLY_BUDGET_NANO_USD";
/// `bedrock` (default) or `local`.
pub const LLM: &str = "LLM";
/// Optional path of a model catalog file replacing the embedded one.
pub const MODEL_CATALOG: &str = "MODEL_CATALOG";
/// Optional risk (0..1) above which an approval is held for a human; unset turns the gate off.
pub const APPROVAL_RISK_THRESHOLD: &str = "APPROVAL_RISK_THRESHOLD";
/// Optional seconds a pending approval waits before it is rejected (default 86400).
pub const APPROVAL_TTL_SECONDS: &str = "APPROVAL_TTL_SECONDS";
/// Seconds a validated LLM answer is reused for an identical request; `0` turns the response
/// cache off; unset or blank means the default (15 minutes).
pub const RESPONSE_CACHE_TTL_SECONDS: &str = "RESPONSE_CACHE_TTL_SECONDS";
/// The notify function's dead-letter queue.
pub const NOTIFY_DLQ_URL: &str = "NOTIFY_DLQ_URL";
/// The ARN of the Secrets Manager secret holding the webhook URLs (never the URLs themselves).
pub const WEBHOOK_SECRET_ARN: &str = "WEBHOOK_SECRET_ARN";
/// The lowest alert level posted: `info`, `warning` (default) or `critical`.
pub const NOTIFY_MIN_LEVEL: &str = "NOTIFY_MIN_LEVEL";
/// Comma-separated alert kinds to post; empty posts every kind.
pub const NOTIFY_KINDS: &str = "NOTIFY_KINDS";
/// How long the webhook secret is cached, in seconds (default 300).
pub const WEBHOOK_SECRET_TTL_SECONDS: &str = "WEBHOOK_SECRET_TTL_SECONDS";
/// The longest one webhook post may take, in milliseconds (default 5000).
pub const WEBHOOK_TIMEOUT_MS: &str = "WEBHOOK_TIMEOUT_MS";

/// The environment variable holding the URL of `queue`.
pub const fn queue_url_variable(queue: Queue) -> &'static str {
    match queue {
        Queue::Analyze => ANALYZE_QUEUE_URL,
        Queue::Strategize => STRATEGIZE_QUEUE_URL,
        Queue::Decide => DECIDE_QUEUE_URL,
        Queue::Snapshot => SNAPSHOT_QUEUE_URL,
        Queue::Fitness => FITNESS_QUEUE_URL,
        Queue::CostGuard => COST_GUARD_QUEUE_URL,
    }
}

/// The environment variable holding the URL of `queue`'s dead-letter queue.
pub const fn dlq_url_variable(queue: Queue) -> &'static str {
    match queue {
        Queue::Analyze => ANALYZE_DLQ_URL,
        Queue::Strategize => STRATEGIZE_DLQ_URL,
        Queue::Decide => DECIDE_DLQ_URL,
        Queue::Snapshot => SNAPSHOT_DLQ_URL,
        Queue::Fitness => FITNESS_DLQ_URL,
        Queue::CostGuard => COST_GUARD_DLQ_URL,
    }
}

/// The environment variable holding the ARN of `topic`.
pub const fn topic_arn_variable(topic: Topic) -> &'static str {
    match topic {
        Topic::EvolutionEvents => EVENTS_TOPIC_ARN,
        Topic::Alerts => ALERTS_TOPIC_ARN,
    }
}

/// A configuration that cannot run; names the variable, never echoes its value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("environment variable {0} is required but not set")]
    Missing(&'static str),
    #[error("environment variable {name} is invalid: {reason}")]
    Invalid { name: &'static str, reason: String },
}

/// Which engine plays the LLM roles.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LlmEngine {
    /// Amazon Bedrock, with the local engine as the fallback.
    #[default]
    Bedrock,
    /// The deterministic local engine only (no Bedrock calls, no spend).
    Local,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LlmSettings {
    pub engine: LlmEngine,
    pub model_catalog: Option<PathBuf>,
    /// The response cache's TTL in seconds; `None` keeps the adapter's default.
    pub response_cache_ttl_seconds: Option<u32>,
}

/// What every function reads: its store and where it sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Common {
    pub table_name: String,
    pub bucket_name: String,
    /// The queues and topics the function's stage sends to.
    pub destinations: Destinations,
    /// The dead-letter queue URL of each queue the function consumes.
    pub dead_letters: BTreeMap<Queue, String>,
}

/// What a function sends to and consumes.
struct Routes {
    sends: &'static [Queue],
    publishes: &'static [Topic],
    consumes: &'static [Queue],
}

/// The analyze function: its queue and the tick. Sends analyses to strategize, plan steps to
/// decide, the tick's `CycleRequested` to itself and `EvaluationDue` to snapshot, budget
/// crossings to cost-guard, and security alerts (a denied Bedrock call) to the alerts topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnalyzeConfig {
    pub common: Common,
    pub budgets: Budgets,
    pub llm: LlmSettings,
}

/// The strategize function: plans to decide, empty plans back to analyze, budget crossings to
/// cost-guard, security alerts to the alerts topic. Budgets only bound its LLM calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StrategizeConfig {
    pub common: Common,
    pub budgets: Budgets,
    pub llm: LlmSettings,
}

/// The decide function: approvals and operator rollbacks to snapshot, rejections to analyze,
/// deferrals to itself, budget crossings to cost-guard, escalations to the alerts topic.
#[derive(Debug, Clone, PartialEq)]
pub struct DecideConfig {
    pub common: Common,
    pub budgets: Budgets,
    pub llm: LlmSettings,
    pub gate: ApprovalGate,
}

/// The approval gate's settings (decide only).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ApprovalGate {
    pub threshold: Option<f64>,
    pub ttl_seconds: u32,
}

impl Default for ApprovalGate {
    fn default() -> Self {
        let defaults = PipelineConfig::default();
        Self {
            threshold: defaults.approval_threshold,
            ttl_seconds: defaults.approval_ttl_seconds,
        }
    }
}

impl ApprovalGate {
    fn read(vars: &Vars<'_>) -> Result<Self, ConfigError> {
        let threshold = vars
            .optional(APPROVAL_RISK_THRESHOLD)
            .map(|v| match v.parse::<f64>() {
                Ok(t) if (0.0..=1.0).contains(&t) => Ok(t),
                _ => Err(ConfigError::Invalid {
                    name: APPROVAL_RISK_THRESHOLD,
                    reason: "expected a risk between 0 and 1".into(),
                }),
            })
            .transpose()?;
        let ttl_seconds = vars
            .optional(APPROVAL_TTL_SECONDS)
            .map(|v| match v.parse::<u32>() {
                Ok(t) if t > 0 => Ok(t),
                _ => Err(ConfigError::Invalid {
                    name: APPROVAL_TTL_SECONDS,
                    reason: "expected a positive whole number of seconds".into(),
                }),
            })
            .transpose()?
            .unwrap_or(PipelineConfig::default().approval_ttl_seconds);
        Ok(Self {
            threshold,
            ttl_seconds,
        })
    }

    pub fn apply(self, config: &mut PipelineConfig) {
        config.approval_threshold = self.threshold;
        config.approval_ttl_seconds = self.ttl_seconds;
    }
}

/// The snapshot function: consumes the snapshot and fitness queues; publishes DNA changes and
/// alerts, sends the next cycle to analyze and conflicts to decide. No LLM, no budgets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotConfig {
    pub common: Common,
    pub snapshot_queue_arn: String,
    pub fitness_queue_arn: String,
}

/// The cost-guard function: its queue and its sweep schedule; publishes alerts. No LLM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CostGuardConfig {
    pub common: Common,
    pub budgets: Budgets,
}

/// `from_env` (the process environment, read once at cold start) and `from_map` (tests), the
/// same for every function: both read exactly the type's `VARIABLES`.
macro_rules! env_readers {
    ($config:ty) => {
        impl $config {
            pub fn from_env() -> Result<Self, ConfigError> {
                Self::from_map(&env_map(Self::VARIABLES)?)
            }

            pub fn from_map(map: &HashMap<String, String>) -> Result<Self, ConfigError> {
                Self::read(&Vars::new(map))
            }
        }
    };
}

/// What the three LLM-calling stages share: their store and routes, budgets and engine, and
/// the one queue each consumes.
/// A stage's own settings follow as `field: Type`, each read by `Type::read` and applied to
/// the pipeline config by `Type::apply`.
macro_rules! llm_stage {
    ($config:ident, $queue:expr $(, $field:ident: $extra:ty)*) => {
        env_readers!($config);

        impl $config {
            fn read(vars: &Vars<'_>) -> Result<Self, ConfigError> {
                Ok(Self {
                    common: common(vars, &Self::ROUTES)?,
                    budgets: budgets(vars)?,
                    llm: llm(vars)?,
                    $($field: <$extra>::read(vars)?,)*
                })
            }

            pub fn sources(&self) -> QueueSources {
                QueueSources::Only($queue)
            }

            pub fn pipeline(&self) -> PipelineConfig {
                #[allow(unused_mut)]
                let mut config = pipeline(self.budgets);
                $(self.$field.apply(&mut config);)*
                config
            }
        }
    };
}

impl AnalyzeConfig {
    pub const VARIABLES: &'static [&'static str] = &[
        TABLE_NAME,
        BUCKET_NAME,
        ANALYZE_QUEUE_URL,
        STRATEGIZE_QUEUE_URL,
        DECIDE_QUEUE_URL,
        SNAPSHOT_QUEUE_URL,
        COST_GUARD_QUEUE_URL,
        ALERTS_TOPIC_ARN,
        ANALYZE_DLQ_URL,
        DAILY_BUDGET_NANO_USD,
        MONTHLY_BUDGET_NANO_USD,
        LLM,
        MODEL_CATALOG,
        RESPONSE_CACHE_TTL_SECONDS,
    ];
    const ROUTES: Routes = Routes {
        sends: &[
            Queue::Analyze,
            Queue::Strategize,
            Queue::Decide,
            Queue::Snapshot,
            Queue::CostGuard,
        ],
        publishes: &[Topic::Alerts],
        consumes: &[Queue::Analyze],
    };
}

llm_stage!(AnalyzeConfig, Queue::Analyze);

impl StrategizeConfig {
    pub const VARIABLES: &'static [&'static str] = &[
        TABLE_NAME,
        BUCKET_NAME,
        ANALYZE_QUEUE_URL,
        DECIDE_QUEUE_URL,
        COST_GUARD_QUEUE_URL,
        ALERTS_TOPIC_ARN,
        STRATEGIZE_DLQ_URL,
        DAILY_BUDGET_NANO_USD,
        MONTHLY_BUDGET_NANO_USD,
        LLM,
        MODEL_CATALOG,
        RESPONSE_CACHE_TTL_SECONDS,
    ];
    const ROUTES: Routes = Routes {
        sends: &[Queue::Analyze, Queue::Decide, Queue::CostGuard],
        publishes: &[Topic::Alerts],
        consumes: &[Queue::Strategize],
    };
}

llm_stage!(StrategizeConfig, Queue::Strategize);

impl DecideConfig {
    pub const VARIABLES: &'static [&'static str] = &[
        TABLE_NAME,
        BUCKET_NAME,
        ANALYZE_QUEUE_URL,
        DECIDE_QUEUE_URL,
        SNAPSHOT_QUEUE_URL,
        COST_GUARD_QUEUE_URL,
        ALERTS_TOPIC_ARN,
        DECIDE_DLQ_URL,
        DAILY_BUDGET_NANO_USD,
        MONTHLY_BUDGET_NANO_USD,
        LLM,
        MODEL_CATALOG,
        APPROVAL_RISK_THRESHOLD,
        APPROVAL_TTL_SECONDS,
        RESPONSE_CACHE_TTL_SECONDS,
    ];
    const ROUTES: Routes = Routes {
        sends: &[
            Queue::Analyze,
            Queue::Decide,
            Queue::Snapshot,
            Queue::CostGuard,
        ],
        publishes: &[Topic::Alerts],
        consumes: &[Queue::Decide],
    };
}

llm_stage!(DecideConfig, Queue::Decide, gate: ApprovalGate);

env_readers!(SnapshotConfig);

impl SnapshotConfig {
    pub const VARIABLES: &'static [&'static str] = &[
        TABLE_NAME,
        BUCKET_NAME,
        ANALYZE_QUEUE_URL,
        DECIDE_QUEUE_URL,
        EVENTS_TOPIC_ARN,
        ALERTS_TOPIC_ARN,
        SNAPSHOT_DLQ_URL,
        FITNESS_DLQ_URL,
        SNAPSHOT_QUEUE_ARN,
        FITNESS_QUEUE_ARN,
    ];
    const ROUTES: Routes = Routes {
        sends: &[Queue::Analyze, Queue::Decide],
        publishes: &[Topic::EvolutionEvents, Topic::Alerts],
        consumes: &[Queue::Snapshot, Queue::Fitness],
    };

    fn read(vars: &Vars<'_>) -> Result<Self, ConfigError> {
        Ok(Self {
            common: common(vars, &Self::ROUTES)?,
            snapshot_queue_arn: vars.arn(SNAPSHOT_QUEUE_ARN)?,
            fitness_queue_arn: vars.arn(FITNESS_QUEUE_ARN)?,
        })
    }

    /// The two consumed queues, told apart by the records' event source ARN.
    pub fn sources(&self) -> QueueSources {
        QueueSources::ByArn(BTreeMap::from([
            (self.snapshot_queue_arn.clone(), Queue::Snapshot),
            (self.fitness_queue_arn.clone(), Queue::Fitness),
        ]))
    }

    /// Snapshot spends nothing: the budgets belong to the functions that do.
    pub fn pipeline(&self) -> PipelineConfig {
        PipelineConfig::default()
    }
}

env_readers!(CostGuardConfig);

impl CostGuardConfig {
    pub const VARIABLES: &'static [&'static str] = &[
        TABLE_NAME,
        BUCKET_NAME,
        ALERTS_TOPIC_ARN,
        COST_GUARD_DLQ_URL,
        DAILY_BUDGET_NANO_USD,
        MONTHLY_BUDGET_NANO_USD,
    ];
    const ROUTES: Routes = Routes {
        sends: &[],
        publishes: &[Topic::Alerts],
        consumes: &[Queue::CostGuard],
    };

    fn read(vars: &Vars<'_>) -> Result<Self, ConfigError> {
        Ok(Self {
            common: common(vars, &Self::ROUTES)?,
            budgets: budgets(vars)?,
        })
    }

    pub fn sources(&self) -> QueueSources {
        QueueSources::Only(Queue::CostGuard)
    }

    pub fn pipeline(&self) -> PipelineConfig {
        pipeline(self.budgets)
    }
}

mod notify;
pub use notify::NotifyConfig;

/// Every function by package name with the variables it reads, for checks of the deployment
/// template.
pub const FUNCTIONS: [(&str, &[&str]); 6] = [
    ("analyze", AnalyzeConfig::VARIABLES),
    ("strategize", StrategizeConfig::VARIABLES),
    ("decide", DecideConfig::VARIABLES),
    ("snapshot", SnapshotConfig::VARIABLES),
    ("cost-guard", CostGuardConfig::VARIABLES),
    ("notify", NotifyConfig::VARIABLES),
];

/// The queues and topics the stage that consumes `queue` may send to: the worker runs the same
/// stages outside Lambda and must be configured with the same destinations.
pub fn consumer_routes(queue: Queue) -> (&'static [Queue], &'static [Topic]) {
    let routes = match queue {
        Queue::Analyze => &AnalyzeConfig::ROUTES,
        Queue::Strategize => &StrategizeConfig::ROUTES,
        Queue::Decide => &DecideConfig::ROUTES,
        Queue::Snapshot | Queue::Fitness => &SnapshotConfig::ROUTES,
        Queue::CostGuard => &CostGuardConfig::ROUTES,
    };
    (routes.sends, routes.publishes)
}

/// The function that consumes `queue` on Lambda: the `Function` dimension of the metrics the
/// worker emits for it, so dashboards count a stage's work wherever it runs.
pub const fn consumer_function(queue: Queue) -> &'static str {
    match queue {
        Queue::Analyze => "analyze",
        Queue::Strategize => "strategize",
        Queue::Decide => "decide",
        Queue::Snapshot | Queue::Fitness => "snapshot",
        Queue::CostGuard => "cost-guard",
    }
}

/// Reads `names` from the process environment; unset ones are simply absent.
fn env_map(names: &[&'static str]) -> Result<HashMap<String, String>, ConfigError> {
    let mut map = HashMap::new();
    for &name in names {
        match std::env::var(name) {
            Ok(value) => {
                map.insert(name.to_owned(), value);
            }
            Err(std::env::VarError::NotPresent) => {}
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(ConfigError::Invalid {
                    name,
                    reason: "not valid UTF-8".into(),
                });
            }
        }
    }
    Ok(map)
}

/// A view of the variables that remembers which names were read.
struct Vars<'a> {
    map: &'a HashMap<String, String>,
    read: RefCell<BTreeSet<&'static str>>,
}

impl<'a> Vars<'a> {
    fn new(map: &'a HashMap<String, String>) -> Self {
        Self {
            map,
            read: RefCell::default(),
        }
    }

    /// A set, non-blank value (blank counts as unset: templates pass "" for omitted parameters).
    fn optional(&self, name: &'static str) -> Option<&'a str> {
        self.read.borrow_mut().insert(name);
        self.map
            .get(name)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    }

    fn required(&self, name: &'static str) -> Result<&'a str, ConfigError> {
        self.optional(name).ok_or(ConfigError::Missing(name))
    }

    fn url(&self, name: &'static str) -> Result<String, ConfigError> {
        let value = self.required(name)?;
        if value.starts_with("https://") || value.starts_with("http://") {
            Ok(value.to_owned())
        } else {
            Err(ConfigError::Invalid {
                name,
                reason: "expected an http(s) URL".into(),
            })
        }
    }

    fn arn(&self, name: &'static str) -> Result<String, ConfigError> {
        let value = self.required(name)?;
        if value.starts_with("arn:") && value.split(':').count() >= 6 {
            Ok(value.to_owned())
        } else {
            Err(ConfigError::Invalid {
                name,
                reason: "expected an ARN (arn:partition:service:region:account:resource)".into(),
            })
        }
    }

    /// An optional whole number above zero, `default` when unset.
    fn positive(&self, name: &'static str, default: u64) -> Result<u64, ConfigError> {
        self.optional(name).map_or(Ok(default), |v| {
            v.parse::<u64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| ConfigError::Invalid {
                    name,
                    reason: "expected a whole number above zero".into(),
                })
        })
    }

    fn nano_usd(&self, name: &'static str) -> Result<Option<u64>, ConfigError> {
        self.optional(name)
            .map(|v| {
                v.parse::<u64>().map_err(|_| ConfigError::Invalid {
                    name,
                    reason: "expected a whole number of nano-USD".into(),
                })
            })
            .transpose()
    }
}

fn common(vars: &Vars<'_>, routes: &Routes) -> Result<Common, ConfigError> {
    let table_name = vars.required(TABLE_NAME)?.to_owned();
    let bucket_name = vars.required(BUCKET_NAME)?.to_owned();
    let mut destinations = Destinations::default();
    for &queue in routes.sends {
        destinations
            .queues
            .insert(queue, vars.url(queue_url_variable(queue))?);
    }
    for &topic in routes.publishes {
        destinations
            .topics
            .insert(topic, vars.arn(topic_arn_variable(topic))?);
    }
    let mut dead_letters = BTreeMap::new();
    for &queue in routes.consumes {
        dead_letters.insert(queue, vars.url(dlq_url_variable(queue))?);
    }
    Ok(Common {
        table_name,
        bucket_name,
        destinations,
        dead_letters,
    })
}

fn budgets(vars: &Vars<'_>) -> Result<Budgets, ConfigError> {
    Ok(Budgets {
        global_daily: vars.nano_usd(DAILY_BUDGET_NANO_USD)?,
        global_monthly: vars.nano_usd(MONTHLY_BUDGET_NANO_USD)?,
        ..PipelineConfig::default().budgets
    })
}

fn llm(vars: &Vars<'_>) -> Result<LlmSettings, ConfigError> {
    let engine = match vars.optional(LLM) {
        None | Some("bedrock") => LlmEngine::Bedrock,
        Some("local") => LlmEngine::Local,
        Some(_) => {
            return Err(ConfigError::Invalid {
                name: LLM,
                reason: "expected `bedrock` or `local`".into(),
            });
        }
    };
    let response_cache_ttl_seconds = vars
        .optional(RESPONSE_CACHE_TTL_SECONDS)
        .map(|v| {
            v.parse::<u32>().map_err(|_| ConfigError::Invalid {
                name: RESPONSE_CACHE_TTL_SECONDS,
                reason: "expected a whole number of seconds (0 turns the cache off)".into(),
            })
        })
        .transpose()?;
    Ok(LlmSettings {
        engine,
        model_catalog: vars.optional(MODEL_CATALOG).map(PathBuf::from),
        response_cache_ttl_seconds,
    })
}

fn pipeline(budgets: Budgets) -> PipelineConfig {
    PipelineConfig {
        budgets,
        ..PipelineConfig::default()
    }
}

#[cfg(test)]
mod tests;
