//! The message topology in one table: for each function, the queues it consumes, the queues
//! it sends to, the topics it publishes on, whether its stage calls an LLM and what it reads
//! beyond that. The functions' configurations, the worker and the deployment template's tests
//! all read it, so a new route is written once (see `docs/architecture.md`, "Message flow").

use crate::domain::{Queue, Topic};

/// What a function's configuration reads besides its routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extra {
    /// The global budgets (a stage that spends or polices money).
    Budgets,
    /// decide's approval gate.
    ApprovalGate,
    /// snapshot consumes two queues and tells their records apart by source ARN.
    SourceArns,
    /// cost-guard's daily reconciliation of the ledger against the bill: its threshold and hour.
    Reconcile,
}

/// One function of the pipeline: what it consumes, where it sends, and what it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Consumer {
    /// The Lambda function (package and binary), and the `Function` dimension of the metrics
    /// the worker emits for it, so dashboards count a stage's work wherever it runs.
    pub function: &'static str,
    pub consumes: &'static [Queue],
    pub sends: &'static [Queue],
    pub publishes: &'static [Topic],
    /// Its stage asks a language model: it gets the configured engine (Bedrock or local), its
    /// variables and permissions, and its event source takes one message at a time.
    pub calls_llm: bool,
    pub extras: &'static [Extra],
}

pub const ANALYZE: Consumer = Consumer {
    function: "analyze",
    consumes: &[Queue::Analyze],
    // Analyses to strategize, plan steps to decide, the tick's `CycleRequested` to itself
    // and `EvaluationDue` to snapshot, budget crossings to cost-guard.
    sends: &[
        Queue::Analyze,
        Queue::Strategize,
        Queue::Decide,
        Queue::Snapshot,
        Queue::CostGuard,
    ],
    // Security alerts (a denied Bedrock call).
    publishes: &[Topic::Alerts],
    calls_llm: true,
    extras: &[Extra::Budgets],
};

pub const STRATEGIZE: Consumer = Consumer {
    function: "strategize",
    consumes: &[Queue::Strategize],
    // Plans to decide, empty plans back to analyze, budget crossings to cost-guard.
    sends: &[Queue::Analyze, Queue::Decide, Queue::CostGuard],
    publishes: &[Topic::Alerts],
    calls_llm: true,
    extras: &[Extra::Budgets],
};

pub const DECIDE: Consumer = Consumer {
    function: "decide",
    consumes: &[Queue::Decide],
    // Approvals and operator rollbacks to snapshot, rejections to analyze, deferrals to
    // itself, budget crossings to cost-guard; escalations to the alerts topic.
    sends: &[
        Queue::Analyze,
        Queue::Decide,
        Queue::Snapshot,
        Queue::CostGuard,
    ],
    publishes: &[Topic::Alerts],
    calls_llm: true,
    extras: &[Extra::Budgets, Extra::ApprovalGate],
};

pub const SNAPSHOT: Consumer = Consumer {
    function: "snapshot",
    consumes: &[Queue::Snapshot, Queue::Fitness],
    // The next cycle to analyze, conflicts to decide; DNA changes and alerts published.
    sends: &[Queue::Analyze, Queue::Decide],
    publishes: &[Topic::EvolutionEvents, Topic::Alerts],
    calls_llm: false,
    extras: &[Extra::SourceArns],
};

pub const COST_GUARD: Consumer = Consumer {
    function: "cost-guard",
    consumes: &[Queue::CostGuard],
    sends: &[],
    publishes: &[Topic::Alerts],
    calls_llm: false,
    extras: &[Extra::Budgets, Extra::Reconcile],
};

/// The pipeline's five functions. notify consumes the alerts topic, not a queue, and has its
/// own configuration.
pub const CONSUMERS: [Consumer; 5] = [ANALYZE, STRATEGIZE, DECIDE, SNAPSHOT, COST_GUARD];

/// The function that consumes `queue`.
pub fn consumer_of(queue: Queue) -> &'static Consumer {
    CONSUMERS
        .iter()
        .find(|c| c.consumes.contains(&queue))
        .unwrap_or_else(|| unreachable!("every queue has a consumer in CONSUMERS"))
}

/// The function named `function`, if it is one of the pipeline's.
pub fn consumer(function: &str) -> Option<&'static Consumer> {
    CONSUMERS.iter().find(|c| c.function == function)
}

impl Consumer {
    pub fn has(&self, extra: Extra) -> bool {
        self.extras.contains(&extra)
    }
}

/// The names of the variables a deployment sets, with a prefix: the functions read them bare,
/// the worker with `EVOLVE_` like the CLI's other `--store aws` settings. One list, so the two
/// cannot drift apart.
#[macro_export]
macro_rules! deployment_variables {
    ($prefix:literal) => {
        pub const TABLE_NAME: &str = concat!($prefix, "TABLE_NAME");
        pub const BUCKET_NAME: &str = concat!($prefix, "BUCKET_NAME");
        pub const ANALYZE_QUEUE_URL: &str = concat!($prefix, "ANALYZE_QUEUE_URL");
        pub const STRATEGIZE_QUEUE_URL: &str = concat!($prefix, "STRATEGIZE_QUEUE_URL");
        pub const DECIDE_QUEUE_URL: &str = concat!($prefix, "DECIDE_QUEUE_URL");
        pub const SNAPSHOT_QUEUE_URL: &str = concat!($prefix, "SNAPSHOT_QUEUE_URL");
        pub const FITNESS_QUEUE_URL: &str = concat!($prefix, "FITNESS_QUEUE_URL");
        pub const COST_GUARD_QUEUE_URL: &str = concat!($prefix, "COST_GUARD_QUEUE_URL");
        pub const ANALYZE_DLQ_URL: &str = concat!($prefix, "ANALYZE_DLQ_URL");
        pub const STRATEGIZE_DLQ_URL: &str = concat!($prefix, "STRATEGIZE_DLQ_URL");
        pub const DECIDE_DLQ_URL: &str = concat!($prefix, "DECIDE_DLQ_URL");
        pub const SNAPSHOT_DLQ_URL: &str = concat!($prefix, "SNAPSHOT_DLQ_URL");
        pub const FITNESS_DLQ_URL: &str = concat!($prefix, "FITNESS_DLQ_URL");
        pub const COST_GUARD_DLQ_URL: &str = concat!($prefix, "COST_GUARD_DLQ_URL");
        pub const EVENTS_TOPIC_ARN: &str = concat!($prefix, "EVENTS_TOPIC_ARN");
        pub const ALERTS_TOPIC_ARN: &str = concat!($prefix, "ALERTS_TOPIC_ARN");
        /// Optional global budgets, in integer nano-USD.
        pub const DAILY_BUDGET_NANO_USD: &str = concat!($prefix, "DAILY_BUDGET_NANO_USD");
        pub const MONTHLY_BUDGET_NANO_USD: &str = concat!($prefix, "MONTHLY_BUDGET_NANO_USD");
        /// `bedrock` (default) or `local`.
        pub const LLM: &str = concat!($prefix, "LLM");
        /// Optional path of a model catalog file replacing the embedded one.
        pub const MODEL_CATALOG: &str = concat!($prefix, "MODEL_CATALOG");
        /// Optional risk (0..1) above which an approval is held for a human; unset turns the
        /// gate off.
        pub const APPROVAL_RISK_THRESHOLD: &str = concat!($prefix, "APPROVAL_RISK_THRESHOLD");
        /// Optional seconds a pending approval waits before it is rejected (default 86400).
        pub const APPROVAL_TTL_SECONDS: &str = concat!($prefix, "APPROVAL_TTL_SECONDS");
        /// Seconds a validated LLM answer is reused for an identical request; `0` turns the
        /// response cache off; unset or blank means the default (15 minutes).
        pub const RESPONSE_CACHE_TTL_SECONDS: &str = concat!($prefix, "RESPONSE_CACHE_TTL_SECONDS");

        /// The variable holding the URL of `queue`.
        pub const fn queue_url_variable(queue: $crate::domain::Queue) -> &'static str {
            use $crate::domain::Queue;
            match queue {
                Queue::Analyze => ANALYZE_QUEUE_URL,
                Queue::Strategize => STRATEGIZE_QUEUE_URL,
                Queue::Decide => DECIDE_QUEUE_URL,
                Queue::Snapshot => SNAPSHOT_QUEUE_URL,
                Queue::Fitness => FITNESS_QUEUE_URL,
                Queue::CostGuard => COST_GUARD_QUEUE_URL,
            }
        }

        /// The variable holding the URL of `queue`'s dead-letter queue.
        pub const fn dlq_url_variable(queue: $crate::domain::Queue) -> &'static str {
            use $crate::domain::Queue;
            match queue {
                Queue::Analyze => ANALYZE_DLQ_URL,
                Queue::Strategize => STRATEGIZE_DLQ_URL,
                Queue::Decide => DECIDE_DLQ_URL,
                Queue::Snapshot => SNAPSHOT_DLQ_URL,
                Queue::Fitness => FITNESS_DLQ_URL,
                Queue::CostGuard => COST_GUARD_DLQ_URL,
            }
        }

        /// The variable holding the ARN of `topic`.
        pub const fn topic_arn_variable(topic: $crate::domain::Topic) -> &'static str {
            use $crate::domain::Topic;
            match topic {
                Topic::EvolutionEvents => EVENTS_TOPIC_ARN,
                Topic::Alerts => ALERTS_TOPIC_ARN,
            }
        }

        /// The variables of the LLM engine, read by every stage that calls one.
        pub const LLM_VARIABLES: [&str; 3] = [LLM, MODEL_CATALOG, RESPONSE_CACHE_TTL_SECONDS];
        pub const BUDGET_VARIABLES: [&str; 2] = [DAILY_BUDGET_NANO_USD, MONTHLY_BUDGET_NANO_USD];
        pub const GATE_VARIABLES: [&str; 2] = [APPROVAL_RISK_THRESHOLD, APPROVAL_TTL_SECONDS];
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_queue_has_exactly_one_consumer() {
        for queue in Queue::ALL {
            let consumers: Vec<_> = CONSUMERS
                .iter()
                .filter(|c| c.consumes.contains(&queue))
                .map(|c| c.function)
                .collect();
            assert_eq!(consumers.len(), 1, "{queue:?}: {consumers:?}");
            assert_eq!(consumer_of(queue).function, consumers[0]);
        }
    }

    #[test]
    fn every_queue_a_function_sends_to_is_one_a_function_consumes() {
        for consumer in CONSUMERS {
            for queue in consumer.sends {
                assert!(
                    CONSUMERS.iter().any(|c| c.consumes.contains(queue)),
                    "{} sends to {queue:?}, which nothing consumes",
                    consumer.function
                );
            }
        }
    }

    #[test]
    fn the_llm_stages_are_analyze_strategize_and_decide_and_notify_is_no_queue_consumer() {
        let llm: Vec<_> = CONSUMERS
            .iter()
            .filter(|c| c.calls_llm)
            .map(|c| c.function)
            .collect();
        assert_eq!(llm, ["analyze", "strategize", "decide"]);
        assert_eq!(consumer("snapshot").map(|c| c.consumes.len()), Some(2));
        assert!(consumer("notify").is_none());
    }
}
