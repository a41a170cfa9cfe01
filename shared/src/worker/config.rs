//! What the worker reads: the stack's table and bucket, the URL and dead-letter queue of every
//! queue it consumes, the destinations of the stages it runs, the LLM engine and budgets, and
//! its own timing. Variables carry the `EVOLVE_` prefix of the CLI's other `--store aws`
//! settings; `VARIABLES` lists them all, so the deployment template can be checked against it.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::bus::aws::Destinations;
use crate::cost::Budgets;
use crate::domain::{Queue, Topic};
use crate::lambda::config::{ApprovalGate, Common, LlmSettings};
use crate::stages::PipelineConfig;
use crate::topology::consumer_of;

crate::deployment_variables!("EVOLVE_");

pub const QUEUES: &str = "EVOLVE_WORKER_QUEUES";
pub const CONCURRENCY: &str = "EVOLVE_WORKER_CONCURRENCY";
pub const VISIBILITY_TIMEOUT: &str = "EVOLVE_WORKER_VISIBILITY_TIMEOUT";
pub const MESSAGE_TIMEOUT: &str = "EVOLVE_WORKER_MESSAGE_TIMEOUT";
pub const DRAIN_TIMEOUT: &str = "EVOLVE_WORKER_DRAIN_TIMEOUT";

/// Every variable the worker reads.
pub const VARIABLES: &[&str] = &[
    TABLE_NAME,
    BUCKET_NAME,
    ANALYZE_QUEUE_URL,
    STRATEGIZE_QUEUE_URL,
    DECIDE_QUEUE_URL,
    SNAPSHOT_QUEUE_URL,
    FITNESS_QUEUE_URL,
    COST_GUARD_QUEUE_URL,
    ANALYZE_DLQ_URL,
    STRATEGIZE_DLQ_URL,
    DECIDE_DLQ_URL,
    SNAPSHOT_DLQ_URL,
    FITNESS_DLQ_URL,
    COST_GUARD_DLQ_URL,
    EVENTS_TOPIC_ARN,
    ALERTS_TOPIC_ARN,
    LLM,
    MODEL_CATALOG,
    DAILY_BUDGET_NANO_USD,
    MONTHLY_BUDGET_NANO_USD,
    APPROVAL_RISK_THRESHOLD,
    APPROVAL_TTL_SECONDS,
    RESPONSE_CACHE_TTL_SECONDS,
    QUEUES,
    CONCURRENCY,
    VISIBILITY_TIMEOUT,
    MESSAGE_TIMEOUT,
    DRAIN_TIMEOUT,
];

/// How the worker paces itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Messages of one queue processed at once (each queue has its own bound, as each event
    /// source mapping has its own `MaximumConcurrency`).
    pub concurrency: usize,
    /// How long a received message stays hidden: set on receive and renewed by the heartbeat,
    /// so a worker that dies gives its messages back within this time.
    pub visibility: Duration,
    /// One message's processing bound; it is also the idempotency claim's expiry, so a message
    /// whose worker died can be claimed again once it has passed.
    pub message_timeout: Duration,
    /// After a stop signal, how long in-flight messages may take to finish.
    pub drain_timeout: Duration,
    /// The long poll of `ReceiveMessage`.
    pub wait: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            concurrency: 2,
            visibility: Duration::from_secs(60),
            message_timeout: Duration::from_secs(300),
            drain_timeout: Duration::from_secs(25),
            wait: Duration::from_secs(20),
        }
    }
}

impl Timing {
    /// The heartbeat renews the visibility three times per period, so one lost call does not
    /// let the message reappear.
    pub fn heartbeat(&self) -> Duration {
        (self.visibility / 3).max(Duration::from_millis(200))
    }
}

/// The worker's configuration, checked before anything is received.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerConfig {
    pub table_name: String,
    pub bucket_name: String,
    /// The queues to consume (each at most once).
    pub consumes: Vec<Queue>,
    /// Every queue URL given, consumed or sent to.
    pub queue_urls: BTreeMap<Queue, String>,
    /// The dead-letter queue URL of every queue given.
    pub dead_letters: BTreeMap<Queue, String>,
    pub topics: BTreeMap<Topic, String>,
    pub budgets: Budgets,
    pub llm: LlmSettings,
    /// decide's approval gate, as the decide function has it.
    pub gate: ApprovalGate,
    pub timing: Timing,
}

/// A configuration the worker cannot run with; names the flag and the variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkerConfigError {
    #[error("{what} is required to consume the {queue} queue: set {flag} (or {variable})")]
    Missing {
        what: String,
        queue: &'static str,
        flag: String,
        variable: &'static str,
    },
    #[error("{0}")]
    Invalid(String),
}

/// `--analyze-queue-url` for `EVOLVE_ANALYZE_QUEUE_URL`: the flag of a variable.
pub fn flag_of(variable: &str) -> String {
    let name = variable
        .trim_start_matches("EVOLVE_")
        .trim_start_matches("WORKER_");
    format!("--{}", name.to_lowercase().replace('_', "-"))
}

impl WorkerConfig {
    /// Parses a comma-separated list of queue names (`all` for every queue).
    pub fn parse_queues(text: &str) -> Result<Vec<Queue>, WorkerConfigError> {
        let mut queues = Vec::new();
        for name in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if name == "all" {
                return Ok(Queue::ALL.to_vec());
            }
            let queue = Queue::ALL
                .into_iter()
                .find(|q| q.as_str() == name)
                .ok_or_else(|| {
                    WorkerConfigError::Invalid(format!(
                        "unknown queue {name:?} (expected a comma-separated list of {} or all)",
                        Queue::ALL.map(Queue::as_str).join(", ")
                    ))
                })?;
            if !queues.contains(&queue) {
                queues.push(queue);
            }
        }
        if queues.is_empty() {
            return Err(WorkerConfigError::Invalid("no queue to consume".to_owned()));
        }
        Ok(queues)
    }

    /// Checks that every consumed queue has its URL and dead-letter queue, and that every
    /// destination of the stages it feeds is known: a stage whose message cannot be routed would
    /// otherwise fail permanently and send good messages to a dead-letter queue.
    pub fn check(&self) -> Result<(), WorkerConfigError> {
        let missing =
            |what: String, queue: Queue, variable: &'static str| WorkerConfigError::Missing {
                what,
                queue: queue.as_str(),
                flag: flag_of(variable),
                variable,
            };
        if self.consumes.is_empty() {
            return Err(WorkerConfigError::Invalid("no queue to consume".to_owned()));
        }
        let t = &self.timing;
        if t.concurrency == 0 {
            return Err(WorkerConfigError::Invalid(
                "the concurrency must be at least 1".to_owned(),
            ));
        }
        if t.visibility < Duration::from_secs(1) || t.visibility > Duration::from_secs(43_200) {
            return Err(WorkerConfigError::Invalid(
                "the visibility timeout must be between 1 s and 12 h (SQS limits)".to_owned(),
            ));
        }
        if t.wait > Duration::from_secs(20) {
            return Err(WorkerConfigError::Invalid(
                "the long poll waits at most 20 s (SQS limit)".to_owned(),
            ));
        }
        for &queue in &self.consumes {
            if !self.queue_urls.contains_key(&queue) {
                return Err(missing("its URL".into(), queue, queue_url_variable(queue)));
            }
            if !self.dead_letters.contains_key(&queue) {
                return Err(missing(
                    "its dead-letter queue URL".into(),
                    queue,
                    dlq_url_variable(queue),
                ));
            }
            let consumer = consumer_of(queue);
            let (sends, publishes) = (consumer.sends, consumer.publishes);
            for &to in sends {
                if !self.queue_urls.contains_key(&to) {
                    return Err(missing(
                        format!("the URL of the {} queue", to.as_str()),
                        queue,
                        queue_url_variable(to),
                    ));
                }
            }
            for &topic in publishes {
                if !self.topics.contains_key(&topic) {
                    return Err(missing(
                        format!("the ARN of the {} topic", topic.as_str()),
                        queue,
                        topic_arn_variable(topic),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The store and routes in the shape the Lambda wiring takes.
    pub fn common(&self) -> Common {
        Common {
            table_name: self.table_name.clone(),
            bucket_name: self.bucket_name.clone(),
            destinations: Destinations {
                queues: self.queue_urls.clone(),
                topics: self.topics.clone(),
            },
            dead_letters: self.dead_letters.clone(),
        }
    }

    pub fn pipeline(&self) -> PipelineConfig {
        let mut config = PipelineConfig {
            budgets: self.budgets,
            ..PipelineConfig::default()
        };
        self.gate.apply(&mut config);
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(name: &str) -> String {
        format!("https://sqs.eu-west-1.amazonaws.com/123456789012/{name}")
    }

    fn config(consumes: Vec<Queue>) -> WorkerConfig {
        WorkerConfig {
            table_name: "t".into(),
            bucket_name: "b".into(),
            consumes,
            queue_urls: Queue::ALL.map(|q| (q, url(q.as_str()))).into(),
            dead_letters: Queue::ALL
                .map(|q| (q, url(&format!("{}-dlq", q.as_str()))))
                .into(),
            topics: [Topic::EvolutionEvents, Topic::Alerts]
                .map(|t| {
                    (
                        t,
                        format!("arn:aws:sns:eu-west-1:123456789012:{}", t.as_str()),
                    )
                })
                .into(),
            budgets: Budgets::default(),
            llm: LlmSettings::default(),
            gate: ApprovalGate::default(),
            timing: Timing::default(),
        }
    }

    #[test]
    fn queue_lists_parse_with_all_and_reject_unknown_names() {
        assert_eq!(WorkerConfig::parse_queues("all"), Ok(Queue::ALL.to_vec()));
        assert_eq!(
            WorkerConfig::parse_queues(" fitness,snapshot ,fitness"),
            Ok(vec![Queue::Fitness, Queue::Snapshot])
        );
        assert!(WorkerConfig::parse_queues("analyse").is_err());
        assert!(WorkerConfig::parse_queues(" , ").is_err());
    }

    #[test]
    fn a_complete_configuration_passes() {
        assert_eq!(config(Queue::ALL.to_vec()).check(), Ok(()));
    }

    #[test]
    fn a_missing_destination_of_a_consumed_stage_is_named_with_its_flag() {
        let mut c = config(vec![Queue::Fitness]);
        c.topics.remove(&Topic::EvolutionEvents);
        let err = c.check().expect_err("snapshot publishes DNA changes");
        assert!(
            err.to_string().contains("--events-topic-arn")
                && err.to_string().contains(EVENTS_TOPIC_ARN),
            "{err}"
        );
        // Cost-guard alone needs no queue to send to.
        let mut c = config(vec![Queue::CostGuard]);
        c.queue_urls.retain(|q, _| *q == Queue::CostGuard);
        assert_eq!(c.check(), Ok(()));
        c.dead_letters.clear();
        assert!(matches!(
            c.check(),
            Err(WorkerConfigError::Missing {
                variable: COST_GUARD_DLQ_URL,
                ..
            })
        ));
    }

    #[test]
    fn flags_are_derived_from_variables() {
        assert_eq!(flag_of(ANALYZE_QUEUE_URL), "--analyze-queue-url");
        assert_eq!(flag_of(COST_GUARD_DLQ_URL), "--cost-guard-dlq-url");
        assert_eq!(flag_of(VISIBILITY_TIMEOUT), "--visibility-timeout");
    }

    #[test]
    fn the_heartbeat_renews_three_times_per_visibility_period() {
        let t = Timing {
            visibility: Duration::from_secs(30),
            ..Timing::default()
        };
        assert_eq!(t.heartbeat(), Duration::from_secs(10));
    }
}
