//! The evaluator port: how the local runner measures a generation's fitness.
//!
//! Locally the evaluator plays the running system: it receives `DnaUpdated`, measures the new
//! genes and reports `FitnessReported`. On AWS the user's own system does this.

pub mod command;

use async_trait::async_trait;

use crate::domain::{FitnessScore, Genes};

/// Why one evaluation produced no score. Each is a failed evaluation, never a crash.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EvalError {
    /// The command does not exist (shell exit 127).
    #[error("evaluator command not found: {0}")]
    NotFound(String),
    /// The command exited non-zero.
    #[error("evaluator exited with status {code}: {stderr}")]
    Failed { code: i32, stderr: String },
    /// The command ran past its timeout and was killed.
    #[error("evaluator timed out after {0} s")]
    Timeout(u64),
    /// The command's output is not one `{"score": ..., "metrics": {...}}` object.
    #[error("evaluator printed invalid output: {0}")]
    BadOutput(String),
    /// The command could not be started at all.
    #[error("evaluator could not be started: {0}")]
    Spawn(String),
    /// A simulated workload failed (the demo's cliff region).
    #[error("workload failed: {0}")]
    Workload(String),
}

#[async_trait]
pub trait Evaluator: Send + Sync + std::fmt::Debug {
    /// Measures the system running `genes` once.
    async fn evaluate(&self, genes: &Genes) -> Result<FitnessScore, EvalError>;
}
