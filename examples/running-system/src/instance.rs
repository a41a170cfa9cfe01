//! One instance of the service and the contract it keeps with evolve: which DNA messages it
//! applies, and the fitness reports it makes of what it runs.

use std::collections::VecDeque;

use chrono::{DateTime, Utc};

use crate::dna::{Cohort, DnaChange, DnaMessage, Genes, checksum, cohort_of};
use crate::report::{FitnessReport, ReportKind, report_id};
use crate::service::{SimulatedService, measurement_seed};

/// How many applied changes an instance remembers, for its logs and its tests.
const RECENT: usize = 256;

/// Who this instance is and how much it measures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceConfig {
    pub system_id: String,
    /// Tells this instance's reports apart from the other instances' of the same system.
    pub instance_id: String,
    /// Reports sent per generation applied by a `DnaUpdated`.
    pub measurements_per_generation: u32,
}

/// The DNA the instance runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Running {
    pub generation: u64,
    pub checksum: String,
    pub genes: Genes,
    /// Set when this generation restores an earlier one's genes.
    pub restored: Option<u64>,
    /// Whether a window waits for this generation's reports.
    pub measured: bool,
    /// The side of a canary this instance is on, reported with every measurement.
    pub cohort: Option<Cohort>,
    /// How many times this generation was announced again after it was applied (a window
    /// extended, a canary promoted, a control asked for): each round is measured afresh.
    pub round: u32,
    /// The message that started this round: a redelivery of it is not a new round.
    pub message_id: String,
    /// That message's `traceparent`, echoed on this round's reports.
    pub traceparent: Option<String>,
}

/// A DNA change the instance applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub generation: u64,
    pub checksum: String,
    /// The generation whose genes a rollback restored; `None` for an update.
    pub restored: Option<u64>,
    /// Updates and an operator's rollbacks are measured; the product's own rollbacks are not
    /// (it ignores reports for them: their genes are the parent's, measured already).
    pub measured: bool,
}

/// What became of one message from the subscription queue. Every outcome acknowledges it: a
/// message refused now is refused again on redelivery.
#[derive(Debug, Clone, PartialEq)]
pub enum Handled {
    Applied(Applied),
    /// The envelope is for another system (a subscription without a `system_id` filter).
    OtherSystem(String),
    /// Not a DNA change (a subscription without a `type` filter).
    OtherType,
    /// Not newer than what runs: an old message delivered late or again.
    Stale {
        generation: u64,
        running: u64,
    },
    Refused(Refusal),
}

/// Why a message was not applied although it was meant for this system.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error(
        "checksum mismatch on generation {generation}: the message says {claimed}, its genes hash \
         to {actual}"
    )]
    ChecksumMismatch {
        generation: u64,
        claimed: String,
        actual: String,
    },
}

/// One instance: the configuration it runs and the service that runs it.
#[derive(Debug, Clone)]
pub struct Instance {
    config: InstanceConfig,
    service: SimulatedService,
    running: Option<Running>,
    applied: VecDeque<Applied>,
}

impl Instance {
    /// A fresh instance runs nothing yet: the first valid DNA message for its system, generation
    /// 0 included, is applied.
    pub fn new(config: InstanceConfig, service: SimulatedService) -> Self {
        Self {
            config,
            service,
            running: None,
            applied: VecDeque::new(),
        }
    }

    pub fn config(&self) -> &InstanceConfig {
        &self.config
    }

    pub fn running(&self) -> Option<&Running> {
        self.running.as_ref()
    }

    /// The changes applied, oldest first (the most recent few hundred).
    pub fn applied(&self) -> impl Iterator<Item = &Applied> {
        self.applied.iter()
    }

    /// Applies the message if it is a valid, newer DNA change for this system.
    pub fn handle(&mut self, body: &str) -> Handled {
        let message: DnaMessage = match serde_json::from_str(body) {
            Ok(message) => message,
            Err(e) => return Handled::Refused(Refusal::Malformed(e.to_string())),
        };
        if message.system_id != self.config.system_id {
            return Handled::OtherSystem(message.system_id);
        }
        let Some((generation, genes, claimed)) = message.change.dna() else {
            return Handled::OtherType;
        };
        if let Err(refusal) = verify(generation, genes, claimed) {
            return Handled::Refused(refusal);
        }
        let target = Target {
            id: &message.id,
            traceparent: message.traceparent.as_deref(),
            change: &message.change,
        };
        // A canary: this instance's cohort says whether it runs the candidate or keeps the
        // control (whose genes the message carries for instances that never ran them).
        if let DnaChange::DnaUpdated {
            canary: Some(canary),
            ..
        } = &message.change
        {
            return match cohort_of(&self.config.instance_id, generation, canary.share) {
                Cohort::Canary => {
                    self.run(target, generation, genes, claimed, Some(Cohort::Canary))
                }
                Cohort::Control => {
                    let (control, sum) = (&canary.control_genes, &canary.control_checksum);
                    if let Err(refusal) = verify(canary.control_generation, control, sum) {
                        return Handled::Refused(refusal);
                    }
                    let generation = canary.control_generation;
                    self.run(target, generation, control, sum, Some(Cohort::Control))
                }
            };
        }
        self.run(target, generation, genes, claimed, None)
    }

    /// Runs `generation` unless it is older than what runs. The same generation announced
    /// again by another message is a new round of measurements; the same message again (a
    /// redelivery) is stale.
    fn run(
        &mut self,
        target: Target<'_>,
        generation: u64,
        genes: &Genes,
        sum: &str,
        cohort: Option<Cohort>,
    ) -> Handled {
        let mut round = 0;
        if let Some(running) = &self.running {
            let again = generation == running.generation
                && target.id != running.message_id
                && target.change.to_measure();
            if generation < running.generation || (generation == running.generation && !again) {
                return Handled::Stale {
                    generation,
                    running: running.generation,
                };
            }
            if again {
                round = running.round + 1;
            }
        }
        Handled::Applied(self.apply(target, generation, genes, sum, (cohort, round)))
    }

    fn apply(
        &mut self,
        target: Target<'_>,
        generation: u64,
        genes: &Genes,
        sum: &str,
        (cohort, round): (Option<Cohort>, u32),
    ) -> Applied {
        let change = target.change;
        let (restored, measured) = (change.restored_generation(), change.to_measure());
        self.running = Some(Running {
            generation,
            checksum: sum.to_owned(),
            genes: genes.clone(),
            restored,
            measured,
            cohort,
            round,
            message_id: target.id.to_owned(),
            traceparent: target.traceparent.map(str::to_owned),
        });
        let applied = Applied {
            generation,
            checksum: sum.to_owned(),
            restored,
            measured,
        };
        if self.applied.len() == RECENT {
            self.applied.pop_front();
        }
        self.applied.push_back(applied.clone());
        applied
    }

    /// Measurement `measurement` (from 1) of the generation running, as a report; `None` when
    /// nothing runs or what runs is a rollback nothing waits a measurement of.
    pub fn measure(&self, measurement: u32, now: DateTime<Utc>) -> Option<FitnessReport> {
        let running = self.running.as_ref().filter(|r| r.measured)?;
        let (system, instance) = (&self.config.system_id, &self.config.instance_id);
        let generation = running.generation.to_string();
        let (measurement_text, round) = (measurement.to_string(), running.round.to_string());
        let mut parts = vec![
            system.as_str(),
            instance.as_str(),
            &generation,
            &running.checksum,
            &measurement_text,
        ];
        // Later rounds measure afresh; the first keeps the seed it always had.
        if running.round > 0 {
            parts.push(&round);
        }
        let seed = measurement_seed(&parts);
        let (score, metrics, error) = match self.service.measure(&running.genes, seed) {
            Ok(measured) => (Some(measured.score), measured.metrics, None),
            Err(failed) => (None, failed.metrics, Some(failed.error)),
        };
        Some(FitnessReport {
            id: report_id(
                system,
                running.generation,
                instance,
                running.round,
                measurement,
            ),
            system_id: system.clone(),
            sent_at: now,
            kind: ReportKind::FitnessReported,
            generation: running.generation,
            checksum: running.checksum.clone(),
            score,
            metrics,
            error,
            cohort: running.cohort,
            traceparent: running.traceparent.clone(),
        })
    }
}

/// The message a change came in: its id tells a new announcement from a redelivery.
#[derive(Clone, Copy)]
struct Target<'a> {
    id: &'a str,
    traceparent: Option<&'a str>,
    change: &'a DnaChange,
}

/// The genes must hash to the checksum the message carries.
fn verify(generation: u64, genes: &Genes, claimed: &str) -> Result<(), Refusal> {
    let actual = checksum(genes).map_err(|e| Refusal::Malformed(e.to_string()))?;
    if actual == claimed {
        Ok(())
    } else {
        Err(Refusal::ChecksumMismatch {
            generation,
            claimed: claimed.to_owned(),
            actual,
        })
    }
}
