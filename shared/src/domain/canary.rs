//! Canary cohorts (docs/architecture.md, "Canary cohorts"): a mutation first runs on a share of
//! the instances while the rest keep the parent, and is judged against that concurrent control
//! rather than against the parent's past; a kept canary is promoted to every instance and baked.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Which side of a canary a fitness report measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cohort {
    /// An instance that runs the candidate.
    Canary,
    /// An instance that keeps the parent while the canary runs.
    Control,
}

/// What a canary's `DnaUpdated` tells the running system besides the candidate's genes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CanaryRollout {
    /// The share of instances that run the candidate, in (0, 1).
    pub share: f64,
    /// How an instance finds its cohort (see [`cohort_of`]), spelt out for running systems
    /// written in other languages.
    pub rule: String,
    /// The generation the control instances keep running, and its checksum: their reports
    /// name it, with `cohort: control`.
    pub control_generation: u64,
    pub control_checksum: String,
    /// The control's genes, so that an instance that joins during a canary can run them.
    pub control_genes: serde_json::Value,
}

/// The rule every running system applies, in words: [`cohort_of`] in code.
pub const COHORT_RULE: &str = "canary when the first 8 bytes of SHA-256(\"<instance id>/<generation>\"), \
     read as a big-endian unsigned integer and divided by 2^64, are below the share";

impl CanaryRollout {
    pub fn new(share: f64, control: &super::Generation) -> Self {
        Self {
            share,
            rule: COHORT_RULE.to_owned(),
            control_generation: control.generation,
            control_checksum: control.checksum.clone(),
            control_genes: serde_json::to_value(&control.genes).unwrap_or_default(),
        }
    }
}

/// The cohort of `instance_id` for the canary of `generation` at `share`. Salted with the
/// generation so that each canary lands on other instances: one unlucky host does not carry
/// every candidate.
pub fn cohort_of(instance_id: &str, generation: u64, share: f64) -> Cohort {
    let digest = Sha256::digest(format!("{instance_id}/{generation}").as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    #[allow(clippy::cast_precision_loss)]
    let position = u64::from_be_bytes(first) as f64 / 18_446_744_073_709_551_616.0;
    if position < share {
        Cohort::Canary
    } else {
        Cohort::Control
    }
}

/// The canary state of an open window: running beside its control, then, once kept, promoted
/// to every instance and baking until the deadline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CanaryWindow {
    pub rollout: CanaryRollout,
    pub bake_seconds: u32,
    /// When the canary was promoted; `None` while it runs beside its control.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promoted_at: Option<DateTime<Utc>>,
    /// The comparison with the control that promoted it, for the history at the bake's end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<CanaryVerdict>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub significance: Option<super::judging::Significance>,
}

impl CanaryWindow {
    /// Whether the canary still runs beside its control (not yet promoted).
    pub fn beside_control(&self) -> bool {
        self.promoted_at.is_none()
    }
}

/// What a canary's comparison with its concurrent control found.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CanaryVerdict {
    pub share: f64,
    pub canary_samples: u32,
    pub control_samples: u32,
    /// The control's mean fitness over the canary's window (what the canary was held to).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_fitness: Option<f64>,
    /// Whether it was promoted to every instance (kept) and then survived the bake.
    pub promoted: bool,
}

/// Checks a DNA file's canary settings.
pub fn validate_share(share: f64) -> Result<(), String> {
    if share.is_finite() && share > 0.0 && share < 1.0 {
        Ok(())
    } else {
        Err(format!("canary_share {share} must be above 0 and below 1"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cohort_rule_is_stable_matches_the_share_and_changes_with_the_generation() {
        let instances: Vec<String> = (0..10_000).map(|i| format!("host-{i}")).collect();
        let canaries = |generation: u64| {
            instances
                .iter()
                .filter(|i| cohort_of(i, generation, 0.1) == Cohort::Canary)
                .count()
        };
        let share = canaries(7);
        assert!((900..1100).contains(&share), "{share} of 10000 at 0.1");
        assert_eq!(cohort_of("host-1", 7, 0.1), cohort_of("host-1", 7, 0.1));
        let same = instances
            .iter()
            .filter(|i| {
                cohort_of(i, 7, 0.1) == Cohort::Canary && cohort_of(i, 8, 0.1) == Cohort::Canary
            })
            .count();
        // Independent draws: about 1% of instances are canaries twice (unsalted, all 10% were).
        assert!(
            (50..150).contains(&same),
            "{same}: the next canary lands elsewhere"
        );
        // Known vectors, for running systems in other languages: "instance-1/3" sits at
        // 0.5373 and "instance-1/4" at 0.7550 of the range.
        assert_eq!(cohort_of("instance-1", 3, 0.54), Cohort::Canary);
        assert_eq!(cohort_of("instance-1", 3, 0.53), Cohort::Control);
        assert_eq!(cohort_of("instance-1", 4, 0.76), Cohort::Canary);
        assert_eq!(cohort_of("instance-1", 4, 0.75), Cohort::Control);
        assert!(validate_share(0.1).is_ok());
        for bad in [0.0, 1.0, -0.1, f64::NAN] {
            assert!(validate_share(bad).is_err(), "{bad}");
        }
    }
}
