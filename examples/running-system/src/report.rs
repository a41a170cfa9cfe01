//! The `FitnessReported` message a running system sends to the fitness queue.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

/// The message's `type`; also its `type` message attribute.
pub const REPORT_TYPE: &str = "FitnessReported";

/// One measurement of the generation an instance runs, as the fitness queue takes it.
///
/// `score` is absent when the measurement failed; `error` then says why, and the product counts
/// the report as a failed sample of that generation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FitnessReport {
    /// The idempotency key: the same measurement always carries the same id (see [`report_id`]).
    pub id: String,
    pub system_id: String,
    pub sent_at: DateTime<Utc>,
    #[serde(rename = "type")]
    pub kind: ReportKind,
    pub generation: u64,
    /// The checksum of the genes measured, as the `DnaUpdated` carried it: a report on other
    /// genes than the committed ones is recorded and ignored.
    pub checksum: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    /// Named numbers; names match `^[A-Za-z0-9_.:-]{1,64}$`.
    pub metrics: BTreeMap<String, f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The side of a canary measured (`canary` or `control`); absent outside canaries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cohort: Option<crate::dna::Cohort>,
    /// The announcement's `traceparent`, so the report joins the cycle's trace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// The one type of message a running system sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ReportKind {
    FitnessReported,
}

/// The report id of measurement `measurement` (from 1) of round `round` of `generation` by
/// `instance` (round 0 is the first announcement; later rounds add `-r<round>`).
///
/// Derived, not random: every instance of a system reports under its own ids, and a report
/// sent again after a lost answer is the same report, which the product records once.
pub fn report_id(
    system_id: &str,
    generation: u64,
    instance_id: &str,
    round: u32,
    measurement: u32,
) -> String {
    if round == 0 {
        format!("fitness-{system_id}-{generation}-{instance_id}-{measurement}")
    } else {
        format!("fitness-{system_id}-{generation}-{instance_id}-r{round}-{measurement}")
    }
}

impl FitnessReport {
    /// The message body: the report's JSON.
    pub fn body(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The message attributes the fitness queue's consumers and the subscription filters key on.
    pub fn attributes(&self) -> [(&'static str, &str); 2] {
        [("type", REPORT_TYPE), ("system_id", &self.system_id)]
    }

    pub fn failed(&self) -> bool {
        self.score.is_none()
    }
}
