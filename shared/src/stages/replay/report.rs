//! What a replay found: each recorded decision beside its replayed twin, the analyses and plans
//! it asked for again, the spend of both by day and model, and the budget modes the replay's
//! own budget would have called for. Serialisable, so `evolve replay --json` output can be kept
//! and embedded in the HTML report later.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::{BudgetMode, DecidedBy, Recommendation, Role, SystemId};

/// The whole comparison.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReplayReport {
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// Which engine answered the replayed calls (`local` or `bedrock`).
    pub engine: String,
    pub decisions: Vec<DecisionPair>,
    /// Analyses and plans asked for again.
    pub calls: Vec<CallPair>,
    pub agreement: Agreement,
    pub spend: Vec<SpendRow>,
    pub recorded_nano_usd: u64,
    pub replayed_nano_usd: u64,
    /// Budget modes the replay's budget called for, in the order they would have changed.
    pub mode_changes: Vec<ModeChange>,
    /// Recorded records the replay could not ask again, with why.
    pub skipped: Vec<Skipped>,
}

/// One side of a decision: what was decided, by whom, and at what cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Side {
    pub decision: Recommendation,
    pub decided_by: Option<DecidedBy>,
    pub model: String,
    pub reasoning: String,
    pub cost_nano_usd: u64,
}

/// A recorded decision and its replay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionPair {
    pub decision_id: String,
    pub system_id: SystemId,
    pub mutation_id: String,
    pub at: DateTime<Utc>,
    pub recorded: Side,
    pub replayed: Side,
    /// The replay's budget mode when it decided.
    pub budget_mode: BudgetMode,
}

impl DecisionPair {
    /// Whether both sides reached the same verdict.
    pub fn agrees(&self) -> bool {
        self.recorded.decision == self.replayed.decision
    }
}

/// A recorded analysis or plan and its replay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallPair {
    pub role: Role,
    pub system_id: SystemId,
    pub at: DateTime<Utc>,
    pub recorded_model: String,
    pub recorded_nano_usd: u64,
    pub replayed_model: String,
    pub replayed_nano_usd: u64,
    /// Why the local engine answered in place of the routed model, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replayed_fallback: Option<String>,
    /// A line on each answer: the focus areas of an analysis, the genes of a plan's steps.
    pub recorded_gist: String,
    pub replayed_gist: String,
}

/// How many decisions agree.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Agreement {
    pub compared: u32,
    pub agreed: u32,
}

impl Agreement {
    /// Agreement in basis points (10 000 when nothing was compared: nothing disagreed).
    pub fn basis_points(&self) -> u32 {
        if self.compared == 0 {
            10_000
        } else {
            (u64::from(self.agreed) * 10_000 / u64::from(self.compared)) as u32
        }
    }

    /// `97.5%`.
    pub fn percent_text(&self) -> String {
        let bp = self.basis_points();
        format!("{}.{}%", bp / 100, (bp % 100) / 10)
    }
}

/// Spend of one model on one UTC day, recorded and replayed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpendRow {
    pub day: NaiveDate,
    pub model: String,
    pub recorded_nano_usd: u64,
    pub replayed_nano_usd: u64,
    pub recorded_calls: u32,
    pub replayed_calls: u32,
}

/// A budget-mode change the replay's budget would have made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModeChange {
    pub at: DateTime<Utc>,
    pub from: BudgetMode,
    pub to: BudgetMode,
    pub reason: String,
}

/// A record left out of the replay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Skipped {
    pub kind: String,
    pub id: String,
    pub at: DateTime<Utc>,
    pub reason: String,
    /// What it cost when recorded (counted in neither total).
    pub recorded_nano_usd: u64,
}

impl ReplayReport {
    /// Decisions whose verdict differs.
    pub fn flips(&self) -> impl Iterator<Item = &DecisionPair> {
        self.decisions.iter().filter(|d| !d.agrees())
    }

    /// Adds a recorded or replayed charge to the day's and model's row.
    pub(super) fn charge(&mut self, spend: &mut SpendBook, charge: Charge<'_>) {
        let row = spend
            .entry((charge.at.date_naive(), charge.model.to_owned()))
            .or_default();
        if charge.recorded {
            row.0 += charge.nano;
            row.2 += 1;
            self.recorded_nano_usd += charge.nano;
        } else {
            row.1 += charge.nano;
            row.3 += 1;
            self.replayed_nano_usd += charge.nano;
        }
    }

    /// Fills the rows and the agreement once every item is in.
    pub(super) fn finish(&mut self, spend: SpendBook) {
        self.spend = spend
            .into_iter()
            .map(
                |((day, model), (rec, rep, rec_calls, rep_calls))| SpendRow {
                    day,
                    model,
                    recorded_nano_usd: rec,
                    replayed_nano_usd: rep,
                    recorded_calls: rec_calls,
                    replayed_calls: rep_calls,
                },
            )
            .collect();
        let compared = self.decisions.len() as u32;
        let agreed = self.decisions.iter().filter(|d| d.agrees()).count() as u32;
        self.agreement = Agreement { compared, agreed };
    }
}

/// Spend by (day, model): recorded, replayed, recorded calls, replayed calls.
pub(super) type SpendBook = BTreeMap<(NaiveDate, String), (u64, u64, u32, u32)>;

/// One charge to the book.
#[derive(Clone, Copy)]
pub(super) struct Charge<'a> {
    pub at: DateTime<Utc>,
    pub model: &'a str,
    pub nano: u64,
    pub recorded: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agreement_is_counted_in_basis_points_without_floats() {
        let a = Agreement {
            compared: 3,
            agreed: 2,
        };
        assert_eq!(a.basis_points(), 6_666);
        assert_eq!(a.percent_text(), "66.6%");
        assert_eq!(Agreement::default().percent_text(), "100.0%");
    }

    #[test]
    fn charges_land_on_their_day_and_model() {
        let mut report = ReplayReport::default();
        let mut book = SpendBook::new();
        let at = "2026-12-01T10:00:00Z".parse().expect("time");
        for (model, nano, recorded) in [("a", 5, true), ("a", 2, false), ("b", 1, false)] {
            report.charge(
                &mut book,
                Charge {
                    at,
                    model,
                    nano,
                    recorded,
                },
            );
        }
        report.finish(book);
        assert_eq!((report.recorded_nano_usd, report.replayed_nano_usd), (5, 3));
        assert_eq!(report.spend.len(), 2);
        assert_eq!(
            (
                report.spend[0].recorded_nano_usd,
                report.spend[0].replayed_calls
            ),
            (5, 1)
        );
    }
}
