//! Types and rules of the evolution domain. No I/O here.

pub mod analysis;
pub mod canary;
pub mod conflict;
pub mod decision;
pub mod dna;
pub mod event;
pub mod fitness;
pub mod gene;
pub mod ids;
pub mod judging;
pub mod message;
pub mod mutation;
pub mod risk;
pub mod task;
pub mod trace;

pub use analysis::*;
pub use canary::{CanaryRollout, CanaryVerdict, CanaryWindow, Cohort};
pub use conflict::*;
pub use decision::*;
pub use dna::*;
pub use event::*;
pub use fitness::*;
pub use gene::*;
pub use ids::*;
pub use judging::{Breach, Direction, Guardrail, Objective};
pub use message::*;
pub use mutation::*;
pub use task::*;
pub use trace::{TraceContext, TraceParseError};
