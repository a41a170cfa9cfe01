//! An example running system: one instance of a simulated service that keeps the contract of
//! evolve's README ("The running system's side").
//!
//! The instance receives the DNA messages of its system from an SQS queue of its own, subscribed
//! to the events topic; applies a `DnaUpdated` only when its genes match its checksum and its
//! generation is newer than the one running; measures what it applied and sends one
//! `FitnessReported` per measurement to the fitness queue (a failed measurement as an `error`
//! without a score); and applies a `DnaRolledBack` the same way, measuring it only when it says
//! `measure: true` (an operator's rollback; the product's own rollbacks restore genes whose
//! fitness is known). It needs no access to the product's table: the messages carry everything.
//!
//! The contract's logic ([`Instance`], [`dna`], [`report`]) is plain code; the queues are ports
//! ([`Inbox`], [`FitnessQueue`]) with SQS adapters in [`sqs`].

pub mod dna;
mod instance;
pub mod report;
mod run;
pub mod service;
pub mod sqs;

pub use instance::{Applied, Handled, Instance, InstanceConfig, Refusal, Running};
pub use report::FitnessReport;
pub use run::{FitnessQueue, Inbox, Pace, Received, TransportError, run};
pub use service::SimulatedService;

#[cfg(test)]
mod tests;
