//! What the local running system measures for a window (docs/architecture.md, "Canary
//! cohorts"): the candidate, and beside a canary the control on the parent's genes.

use crate::domain::{Cohort, Evaluation, FitnessSample, Generation, Genes, SystemId};
use crate::store::StoreError;

use super::{LocalRunner, RunError};

/// One side of what the running system measures for a window: the candidate (as a canary, or
/// on every instance) and, beside a canary, the control on the parent's genes.
pub(super) struct Side {
    pub(super) generation: u64,
    pub(super) checksum: String,
    pub(super) genes: Genes,
    pub(super) cohort: Option<Cohort>,
    /// Reports of this side the window already holds.
    pub(super) reported: u32,
}

impl LocalRunner<'_> {
    pub(super) async fn sides(
        &self,
        system_id: &SystemId,
        eval: &Evaluation,
        generation: Generation,
        genes: Genes,
    ) -> Result<Vec<Side>, RunError> {
        let store = &self.deps.store;
        let count = |samples: Vec<FitnessSample>,
                     cohort: Option<Cohort>,
                     since: chrono::DateTime<chrono::Utc>| {
            u32::try_from(
                samples
                    .iter()
                    .filter(|s| s.cohort == cohort && s.received_at >= since)
                    .count(),
            )
            .unwrap_or(u32::MAX)
        };
        let own = store.list_fitness(system_id, eval.generation).await?;
        let Some(canary) = &eval.canary else {
            return Ok(vec![Side {
                reported: u32::try_from(own.len()).unwrap_or(u32::MAX),
                generation: generation.generation,
                checksum: generation.checksum,
                genes,
                cohort: None,
            }]);
        };
        if let Some(promoted) = canary.promoted_at {
            return Ok(vec![Side {
                reported: count(own, None, promoted),
                generation: generation.generation,
                checksum: generation.checksum,
                genes,
                cohort: None,
            }]);
        }
        let control_generation = canary.rollout.control_generation;
        let control = store
            .get_generation(system_id, control_generation)
            .await?
            .ok_or_else(|| {
                StoreError::Corrupt(format!("generation {control_generation} missing"))
            })?;
        let controls = store.list_fitness(system_id, control_generation).await?;
        Ok(vec![
            Side {
                reported: count(own, Some(Cohort::Canary), eval.started_at),
                generation: generation.generation,
                checksum: generation.checksum,
                genes,
                cohort: Some(Cohort::Canary),
            },
            Side {
                reported: count(controls, Some(Cohort::Control), eval.started_at),
                generation: control.generation,
                checksum: control.checksum,
                genes: control.genes,
                cohort: Some(Cohort::Control),
            },
        ])
    }
}
