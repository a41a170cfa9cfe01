//! Typed configuration of each function, read once at cold start from its environment.
//!
//! Each function reads only what it needs: its table and bucket, the URL of every queue and the
//! ARN of every topic its stage can send to, the dead-letter queue of every queue it consumes,
//! and, where it spends or polices money, the budgets and the LLM engine: all of it as the
//! [`topology`](crate::topology) table says. `variables()` lists exactly the names a type reads
//! (a test holds `from_map` to it), so the deployment template can be checked against it.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;

use super::QueueSources;
use crate::bus::aws::Destinations;
use crate::cost::Budgets;
use crate::cost::reconcile::ReconcileSettings;
use crate::domain::Queue;
use crate::stages::PipelineConfig;
use crate::topology::{self, Consumer, Extra};

crate::deployment_variables!("");

/// The snapshot function consumes two queues and tells their records apart by source ARN.
pub const SNAPSHOT_QUEUE_ARN: &str = "SNAPSHOT_QUEUE_ARN";
pub const FITNESS_QUEUE_ARN: &str = "FITNESS_QUEUE_ARN";
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
/// cost-guard: the difference between the bill and the ledger that raises an alert, in basis
/// points of the bill (the template's default is 200, 2%). Unset or blank, the bill is not read:
/// reading it needs Cost Explorer, which only a deployment grants.
pub const RECONCILE_THRESHOLD_BP: &str = "RECONCILE_THRESHOLD_BP";
/// cost-guard: the UTC hour (0-23) from which the day's reconciliation runs (default 6).
pub const RECONCILE_HOUR_UTC: &str = "RECONCILE_HOUR_UTC";

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

/// The cost-guard function: its queue and its sweep schedule; publishes alerts. No LLM. Its
/// sweep reconciles the ledger with the bill once a day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CostGuardConfig {
    pub common: Common,
    pub budgets: Budgets,
    /// `None` when the deployment does not ask for the bill to be reconciled.
    pub reconcile: Option<ReconcileSettings>,
}

/// `from_env` (the process environment, read once at cold start) and `from_map` (tests), the
/// same for every function: both read exactly the type's `variables()`.
macro_rules! env_readers {
    ($config:ty) => {
        impl $config {
            pub fn from_env() -> Result<Self, ConfigError> {
                Self::from_map(&env_map(&Self::variables())?)
            }

            pub fn from_map(map: &HashMap<String, String>) -> Result<Self, ConfigError> {
                Self::read(&Vars::new(map))
            }
        }
    };
    ($config:ty, $consumer:expr) => {
        env_readers!($config);

        impl $config {
            /// The function's row of the topology.
            pub const CONSUMER: &'static Consumer = &$consumer;

            /// Every variable the type reads.
            pub fn variables() -> Vec<&'static str> {
                variables(Self::CONSUMER)
            }
        }
    };
}

/// What the wiring needs of a pipeline function's configuration (see
/// [`wiring::from_env`](super::wiring::from_env)).
pub trait FunctionConfig: Sized {
    fn from_env() -> Result<Self, ConfigError>;
    /// The function's row of the topology.
    fn consumer() -> &'static Consumer;
    fn common(&self) -> &Common;
    fn sources(&self) -> QueueSources;
    fn pipeline(&self) -> PipelineConfig;
    /// The engine settings and budgets of a stage that calls an LLM.
    fn llm(&self) -> Option<(&LlmSettings, Budgets)>;
}

/// [`FunctionConfig`] from the type's own readers; `llm` for the stages that call one.
macro_rules! function_config {
    ($config:ty $(, $llm:ident)?) => {
        impl FunctionConfig for $config {
            fn from_env() -> Result<Self, ConfigError> {
                <$config>::from_env()
            }

            fn consumer() -> &'static Consumer {
                Self::CONSUMER
            }

            fn common(&self) -> &Common {
                &self.common
            }

            fn sources(&self) -> QueueSources {
                <$config>::sources(self)
            }

            fn pipeline(&self) -> PipelineConfig {
                <$config>::pipeline(self)
            }

            fn llm(&self) -> Option<(&LlmSettings, Budgets)> {
                function_config!(@llm self $(, $llm)?)
            }
        }
    };
    (@llm $self:ident) => {
        None
    };
    (@llm $self:ident, llm) => {
        Some((&$self.llm, $self.budgets))
    };
}

/// What the three LLM-calling stages share: their store and routes, budgets and engine, and
/// the one queue each consumes.
/// A stage's own settings follow as `field: Type`, each read by `Type::read` and applied to
/// the pipeline config by `Type::apply`.
macro_rules! llm_stage {
    ($config:ident, $consumer:expr $(, $field:ident: $extra:ty)*) => {
        env_readers!($config, $consumer);
        function_config!($config, llm);

        impl $config {
            fn read(vars: &Vars<'_>) -> Result<Self, ConfigError> {
                Ok(Self {
                    common: common(vars, Self::CONSUMER)?,
                    budgets: budgets(vars)?,
                    llm: llm(vars)?,
                    $($field: <$extra>::read(vars)?,)*
                })
            }

            pub fn sources(&self) -> QueueSources {
                QueueSources::Only(Self::CONSUMER.consumes[0])
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

llm_stage!(AnalyzeConfig, topology::ANALYZE);

llm_stage!(StrategizeConfig, topology::STRATEGIZE);

llm_stage!(DecideConfig, topology::DECIDE, gate: ApprovalGate);

env_readers!(SnapshotConfig, topology::SNAPSHOT);
function_config!(SnapshotConfig);

impl SnapshotConfig {
    fn read(vars: &Vars<'_>) -> Result<Self, ConfigError> {
        Ok(Self {
            common: common(vars, Self::CONSUMER)?,
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

env_readers!(CostGuardConfig, topology::COST_GUARD);
function_config!(CostGuardConfig);

impl CostGuardConfig {
    fn read(vars: &Vars<'_>) -> Result<Self, ConfigError> {
        Ok(Self {
            common: common(vars, Self::CONSUMER)?,
            budgets: budgets(vars)?,
            reconcile: reconcile(vars)?,
        })
    }

    pub fn sources(&self) -> QueueSources {
        QueueSources::Only(Self::CONSUMER.consumes[0])
    }

    /// The budgets, and the bill's reconciliation in the sweep.
    pub fn pipeline(&self) -> PipelineConfig {
        pipeline(Budgets {
            reconcile: self.reconcile,
            ..self.budgets
        })
    }
}

mod notify;
pub use notify::NotifyConfig;

/// Every function by package name with the variables it reads, for checks of the deployment
/// template.
pub fn functions() -> Vec<(&'static str, Vec<&'static str>)> {
    topology::CONSUMERS
        .iter()
        .map(|c| (c.function, variables(c)))
        .chain([("notify", NotifyConfig::VARIABLES.to_vec())])
        .collect()
}

/// The variables a pipeline function reads: its store, where its stage sends, the dead-letter
/// queues of what it consumes, and what its extras and LLM engine need.
pub fn variables(consumer: &Consumer) -> Vec<&'static str> {
    let mut names = vec![TABLE_NAME, BUCKET_NAME];
    names.extend(consumer.sends.iter().map(|&q| queue_url_variable(q)));
    names.extend(consumer.publishes.iter().map(|&t| topic_arn_variable(t)));
    names.extend(consumer.consumes.iter().map(|&q| dlq_url_variable(q)));
    if consumer.has(Extra::Budgets) {
        names.extend(BUDGET_VARIABLES);
    }
    if consumer.calls_llm {
        names.extend(LLM_VARIABLES);
    }
    if consumer.has(Extra::ApprovalGate) {
        names.extend(GATE_VARIABLES);
    }
    if consumer.has(Extra::SourceArns) {
        names.extend([SNAPSHOT_QUEUE_ARN, FITNESS_QUEUE_ARN]);
    }
    if consumer.has(Extra::Reconcile) {
        names.extend([RECONCILE_THRESHOLD_BP, RECONCILE_HOUR_UTC]);
    }
    names
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

fn common(vars: &Vars<'_>, routes: &Consumer) -> Result<Common, ConfigError> {
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

/// The reconciliation's threshold (any whole number of basis points) and hour (0-23, default 6);
/// `None` without a threshold, which turns the reconciliation off.
fn reconcile(vars: &Vars<'_>) -> Result<Option<ReconcileSettings>, ConfigError> {
    let hour_utc = match vars.optional(RECONCILE_HOUR_UTC) {
        None => ReconcileSettings::default().hour_utc,
        Some(v) => v
            .parse::<u32>()
            .ok()
            .filter(|hour| *hour < 24)
            .ok_or_else(|| ConfigError::Invalid {
                name: RECONCILE_HOUR_UTC,
                reason: "expected a UTC hour from 0 to 23".into(),
            })?,
    };
    vars.optional(RECONCILE_THRESHOLD_BP)
        .map(|v| {
            let threshold_bp = v.parse::<u32>().map_err(|_| ConfigError::Invalid {
                name: RECONCILE_THRESHOLD_BP,
                reason: "expected a whole number of basis points (200 is 2%)".into(),
            })?;
            Ok(ReconcileSettings {
                threshold_bp,
                hour_utc,
            })
        })
        .transpose()
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
