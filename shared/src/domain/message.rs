//! The message envelope and bodies that chain the stages (docs/architecture.md, "Message flow").

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::conflict::SystemConflict;
use super::ids::{MetricName, SystemId, derive_id};
use super::mutation::{Mutation, PlanStepRef};
use super::trace::TraceContext;

/// The queues of the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Queue {
    Analyze,
    Strategize,
    Decide,
    Snapshot,
    Fitness,
    CostGuard,
}

impl Queue {
    pub const ALL: [Queue; 6] = [
        Self::Analyze,
        Self::Strategize,
        Self::Decide,
        Self::Snapshot,
        Self::Fitness,
        Self::CostGuard,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Analyze => "analyze",
            Self::Strategize => "strategize",
            Self::Decide => "decide",
            Self::Snapshot => "snapshot",
            Self::Fitness => "fitness",
            Self::CostGuard => "cost-guard",
        }
    }
}

/// The SNS topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Topic {
    EvolutionEvents,
    Alerts,
}

impl Topic {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EvolutionEvents => "evolution-events",
            Self::Alerts => "alerts",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", content = "name", rename_all = "snake_case")]
pub enum Destination {
    Queue(Queue),
    Topic(Topic),
}

/// What became of a proposed plan step, fed back to the plan cursor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum StepOutcome {
    Kept {
        actual_impact: f64,
    },
    RolledBack,
    /// `why`, not `reason`: the enclosing `CycleReason` is tagged by `reason`.
    Rejected {
        why: String,
    },
}

/// Why a cycle is requested.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum CycleReason {
    /// The tick found the system due.
    Scheduled,
    /// A plan step finished one way or another.
    Step {
        step: PlanStepRef,
        #[serde(flatten)]
        outcome: StepOutcome,
    },
    /// An operator or a conflict resolution moved the head.
    HeadMoved,
    /// Strategize produced no usable step; try again later.
    PlanEmpty,
    /// A conflict resolution asked to retry later.
    RetryLater,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetScope {
    Global,
    System,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetPeriod {
    Day,
    Month,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetMode {
    Normal,
    Economy,
    Paused,
}

impl BudgetMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "normal",
            Self::Economy => "economy",
            Self::Paused => "paused",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertLevel {
    Info,
    Warning,
    Critical,
}

/// An alert for operators (the `alerts` topic's payload).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub id: String,
    pub level: AlertLevel,
    pub kind: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_id: Option<SystemId>,
    pub at: DateTime<Utc>,
}

/// The message bodies, tagged by `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Body {
    CycleRequested {
        #[serde(flatten)]
        reason: CycleReason,
    },
    AnalysisReady {
        analysis_id: String,
    },
    MutationProposed {
        mutation: Mutation,
        /// How many times this proposal has been deferred.
        #[serde(default)]
        deferrals: u32,
    },
    MutationApproved {
        decision_id: String,
        mutation: Mutation,
    },
    RollbackRequested {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to_generation: Option<u64>,
        requested_by: String,
        reason: String,
    },
    EvaluationDue {
        generation: u64,
    },
    FitnessReported {
        generation: u64,
        checksum: String,
        /// Absent when the evaluation failed; `error` says why.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        score: Option<f64>,
        #[serde(default)]
        metrics: BTreeMap<MetricName, f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        /// The side of a canary the report measured; absent outside canaries.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cohort: Option<super::Cohort>,
    },
    ConflictDetected {
        conflict: SystemConflict,
    },
    DnaUpdated {
        generation: u64,
        genes: Value,
        checksum: String,
        /// Present while the generation runs as a canary: which instances run it and what the
        /// others keep running. A `DnaUpdated` for the same generation without it promotes
        /// the canary to every instance.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        canary: Option<super::CanaryRollout>,
    },
    DnaRolledBack {
        generation: u64,
        restored_generation: u64,
        genes: Value,
        checksum: String,
        /// Whether a window waits for reports on this generation: true for an operator's
        /// rollback (measured afresh), false for the Rollback Manager's (the genes are the
        /// parent's, whose fitness is known).
        #[serde(default)]
        measure: bool,
    },
    BudgetThresholdCrossed {
        scope: BudgetScope,
        period: BudgetPeriod,
        percent: u32,
    },
    BudgetSweep {},
    AlertRaised {
        alert: Alert,
    },
    /// An operator's verdict on a pending approval (`evolve approve` / `evolve reject`).
    ApprovalGiven {
        decision_id: String,
        approve: bool,
        /// The caller's AWS identity, or the OS user locally.
        approver: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<String>,
    },
    /// The tick found a pending approval past its deadline: it is rejected.
    ApprovalExpired {
        decision_id: String,
    },
    /// The tick's per-system half: the registry says the system may need attention this minute
    /// (a cycle due, a window or an approval past its deadline, a budget mode to apply). The
    /// handler reads the head and does what is due in one transaction of its own, so the tick
    /// itself never commits more than its idempotency record, however large the fleet.
    SystemTick {
        scheduled_at: DateTime<Utc>,
    },
    /// The tick's next registry page: each invocation of the tick reads one page (and sends its
    /// `SystemTick`s), then hands the rest of the registry on with this message, so one
    /// invocation's work stays the same whatever the fleet's size.
    TickPage {
        scheduled_at: DateTime<Utc>,
        /// The last system id of the previous page: the next page starts after it.
        after: SystemId,
    },
    /// The sweep found the system over its own budget for a period it was not yet alerted
    /// for: cost-guard records the alert once for that period (`period_key`, `COST#...`).
    SystemOverBudget {
        period: BudgetPeriod,
        period_key: String,
        spent_nano: u64,
        limit_nano: u64,
    },
    /// An operator's resume of a paused head (`evolve resume`). `base_generation` is the
    /// generation the operator saw paused: a head that moved since is not resumed.
    ResumeRequested {
        /// The caller's AWS identity, or the OS user locally.
        requested_by: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<String>,
    },
}

impl Body {
    /// The `type` tag, for logs, metrics and message attributes.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::CycleRequested { .. } => "CycleRequested",
            Self::AnalysisReady { .. } => "AnalysisReady",
            Self::MutationProposed { .. } => "MutationProposed",
            Self::MutationApproved { .. } => "MutationApproved",
            Self::RollbackRequested { .. } => "RollbackRequested",
            Self::EvaluationDue { .. } => "EvaluationDue",
            Self::FitnessReported { .. } => "FitnessReported",
            Self::ConflictDetected { .. } => "ConflictDetected",
            Self::DnaUpdated { .. } => "DnaUpdated",
            Self::DnaRolledBack { .. } => "DnaRolledBack",
            Self::BudgetThresholdCrossed { .. } => "BudgetThresholdCrossed",
            Self::BudgetSweep {} => "BudgetSweep",
            Self::AlertRaised { .. } => "AlertRaised",
            Self::ApprovalGiven { .. } => "ApprovalGiven",
            Self::ApprovalExpired { .. } => "ApprovalExpired",
            Self::SystemTick { .. } => "SystemTick",
            Self::TickPage { .. } => "TickPage",
            Self::SystemOverBudget { .. } => "SystemOverBudget",
            Self::ResumeRequested { .. } => "ResumeRequested",
        }
    }

    /// Where a message of this type goes. One fixed route per type.
    pub fn destination(&self) -> Destination {
        match self {
            Self::CycleRequested { .. } | Self::SystemTick { .. } | Self::TickPage { .. } => {
                Destination::Queue(Queue::Analyze)
            }
            Self::AnalysisReady { .. } => Destination::Queue(Queue::Strategize),
            Self::MutationProposed { .. }
            | Self::ConflictDetected { .. }
            | Self::ApprovalGiven { .. }
            | Self::ApprovalExpired { .. }
            | Self::ResumeRequested { .. } => Destination::Queue(Queue::Decide),
            Self::MutationApproved { .. }
            | Self::RollbackRequested { .. }
            | Self::EvaluationDue { .. } => Destination::Queue(Queue::Snapshot),
            Self::FitnessReported { .. } => Destination::Queue(Queue::Fitness),
            Self::BudgetThresholdCrossed { .. }
            | Self::BudgetSweep {}
            | Self::SystemOverBudget { .. } => Destination::Queue(Queue::CostGuard),
            Self::DnaUpdated { .. } | Self::DnaRolledBack { .. } => {
                Destination::Topic(Topic::EvolutionEvents)
            }
            Self::AlertRaised { .. } => Destination::Topic(Topic::Alerts),
        }
    }
}

/// The JSON envelope every message travels in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Idempotency key: a redelivery carries the same id.
    pub id: String,
    /// The id of the message (or tick) that caused this one.
    #[serde(default)]
    pub causation_id: String,
    pub system_id: SystemId,
    /// The head generation the sender saw; state transitions are conditioned on it.
    #[serde(default)]
    pub base_generation: u64,
    pub sent_at: DateTime<Utc>,
    /// The W3C `traceparent` of the cycle this message belongs to (docs/architecture.md,
    /// "Tracing"). Absent on messages from before tracing and from running systems that do not
    /// trace: such a message starts a trace of its own, derived from its id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    #[serde(flatten)]
    pub body: Body,
}

impl Envelope {
    /// A message caused by `cause`, with an id derived from the cause, the stage and an index.
    ///
    /// It continues the cause's trace (`trace`, the cause's [`Envelope::trace`]), except a
    /// `CycleRequested`, which starts the trace of a new cycle: one trace per cycle
    /// (docs/architecture.md, "Tracing").
    #[allow(clippy::too_many_arguments)]
    pub fn caused_by(
        cause: &str,
        trace: Option<&TraceContext>,
        stage: &str,
        index: usize,
        system_id: SystemId,
        base_generation: u64,
        sent_at: DateTime<Utc>,
        body: Body,
    ) -> Self {
        let id = derive_id("msg", &[cause, stage, &index.to_string()]);
        let context = match (trace, &body) {
            (Some(trace), b) if !matches!(b, Body::CycleRequested { .. }) => trace.sent_from(cause),
            _ => TraceContext::start(&id),
        };
        Self {
            causation_id: cause.to_owned(),
            system_id,
            base_generation,
            sent_at,
            traceparent: Some(context.traceparent()),
            body,
            id,
        }
    }

    /// The trace this message belongs to: its `traceparent`, or a trace it starts (derived from
    /// its id) when it has none or an unreadable one. The same for every delivery.
    pub fn trace(&self) -> TraceContext {
        self.traceparent
            .as_deref()
            .and_then(|t| TraceContext::parse_traceparent(t).ok())
            .unwrap_or_else(|| TraceContext::start(&self.id))
    }
}

/// A message to send once the stage's changes are committed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outgoing {
    pub destination: Destination,
    pub envelope: Envelope,
    /// SQS per-message delay (at most 900 s on SQS); ignored for topics.
    #[serde(default)]
    pub delay_seconds: u32,
}

impl Outgoing {
    pub fn new(envelope: Envelope) -> Self {
        Self {
            destination: envelope.body.destination(),
            envelope,
            delay_seconds: 0,
        }
    }

    #[must_use]
    pub fn delayed(mut self, seconds: u32) -> Self {
        self.delay_seconds = seconds.min(900);
        self
    }
}

/// Which alerts are posted: at least `min_level`, and of one of `kinds` when that is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertFilter {
    pub min_level: AlertLevel,
    /// `None`: every kind, including kinds added after this was deployed.
    pub kinds: Option<std::collections::BTreeSet<String>>,
}

/// Warnings and criticals of every kind: an economy or paused budget, a conflict, a security
/// event, an approval waiting. `info` alerts (a budget back to normal) stay in the store.
impl Default for AlertFilter {
    fn default() -> Self {
        Self {
            min_level: AlertLevel::Warning,
            kinds: None,
        }
    }
}

impl AlertFilter {
    pub fn admits(&self, alert: &Alert) -> bool {
        alert.level >= self.min_level
            && self
                .kinds
                .as_ref()
                .is_none_or(|kinds| kinds.contains(&alert.kind))
    }
}
