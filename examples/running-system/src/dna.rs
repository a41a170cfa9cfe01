//! The DNA messages the events topic delivers, and the checksum that proves their genes arrived
//! as committed.

use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Gene values as delivered: name to value (a number, a bool or a string).
pub type Genes = Map<String, Value>;

/// An envelope from the events topic, reduced to what a running system acts on. With raw
/// message delivery the SQS message body is this envelope's JSON.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct DnaMessage {
    pub id: String,
    pub system_id: String,
    /// The cycle's trace (W3C), echoed on the reports so they join it.
    #[serde(default)]
    pub traceparent: Option<String>,
    #[serde(flatten)]
    pub change: DnaChange,
}

/// What the envelope says about the system's genes, by its `type`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type")]
pub enum DnaChange {
    /// A new generation to run and measure (generation 0 when the system is created).
    DnaUpdated {
        generation: u64,
        genes: Genes,
        checksum: String,
        /// Present while the generation runs as a canary on a share of the instances; a
        /// `DnaUpdated` for the same generation without it promotes the canary to all.
        #[serde(default)]
        canary: Option<Canary>,
    },
    /// A new generation whose genes are those of `restored_generation`. The product's own
    /// rollback of a worse generation (`measure: false`) is run but not measured: the restored
    /// genes' fitness is known. An operator's rollback (`measure: true`) is measured afresh.
    DnaRolledBack {
        generation: u64,
        restored_generation: u64,
        genes: Genes,
        checksum: String,
        #[serde(default)]
        measure: bool,
    },
    /// Any other type. The subscription's filter policy keeps them away; one that slips through
    /// (a subscription without a filter) is acknowledged and dropped.
    #[serde(other)]
    Other,
}

impl DnaChange {
    /// The generation, genes and checksum the change carries, if it is a DNA change at all.
    pub fn dna(&self) -> Option<(u64, &Genes, &str)> {
        match self {
            Self::DnaUpdated {
                generation,
                genes,
                checksum,
                ..
            }
            | Self::DnaRolledBack {
                generation,
                genes,
                checksum,
                ..
            } => Some((*generation, genes, checksum)),
            Self::Other => None,
        }
    }

    /// The generation whose genes a rollback restores.
    pub fn restored_generation(&self) -> Option<u64> {
        match self {
            Self::DnaRolledBack {
                restored_generation,
                ..
            } => Some(*restored_generation),
            _ => None,
        }
    }

    /// Whether a window waits for reports on this generation: every update, and an operator's
    /// rollback; not the product's own rollback of a worse generation.
    pub fn to_measure(&self) -> bool {
        match self {
            Self::DnaUpdated { .. } => true,
            Self::DnaRolledBack { measure, .. } => *measure,
            Self::Other => false,
        }
    }
}

/// A canary rollout: which instances run the candidate, and what the others keep running.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Canary {
    pub share: f64,
    pub control_generation: u64,
    pub control_checksum: String,
    pub control_genes: Genes,
}

/// Which side of a canary an instance is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cohort {
    Canary,
    Control,
}

/// The cohort rule: an instance is a canary of `generation` when the first 8 bytes of
/// SHA-256 of `"<instance id>/<generation>"`, read big-endian and divided by 2^64, are below
/// the share. Salted with the generation, so each canary lands on other instances.
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

/// SHA-256, as lowercase hex, of the RFC 8785 canonical JSON of the genes: sorted keys, no
/// whitespace, numbers in their shortest form, so any JSON encoder's output of the same values
/// hashes the same.
pub fn checksum(genes: &Genes) -> Result<String, serde_json::Error> {
    let canonical = serde_json_canonicalizer::to_vec(genes)?;
    Ok(hex::encode(Sha256::digest(&canonical)))
}
