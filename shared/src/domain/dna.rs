//! System DNA: the gene schema, immutable generations and the head pointer.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::gene::{GeneDefError, GeneEntry, GeneSchema, Genes, QUOTE_CHARS, json_quote};
use super::ids::{GeneName, InvalidId, SystemId, sha256_hex};
use super::mutation::{Mutation, PlanStepRef};

/// SHA-256 over the RFC 8785 canonical JSON of the gene values, as hex.
///
/// Subscribers receive the same value map in `DnaUpdated` and can recompute this to verify it.
pub fn checksum(genes: &Genes) -> String {
    let bytes = serde_json_canonicalizer::to_vec(genes).unwrap_or_default();
    sha256_hex(&bytes)
}

/// A snapshot id in the seed's format (`snap_<yyyymmdd>_<hhmmss>_<micros>`), made unique per
/// system and generation by a short suffix so two systems committing in the same microsecond differ.
pub fn snapshot_id(system: &SystemId, generation: u64, at: DateTime<Utc>) -> String {
    let suffix = &sha256_hex(format!("{system}/{generation}").as_bytes())[..8];
    format!("snap_{}_{suffix}", at.format("%Y%m%d_%H%M%S_%6f"))
}

/// How a generation came to be.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Origin {
    /// Generation 0, from the DNA file.
    Initial,
    /// An approved mutation applied to the parent.
    Mutation {
        decision_id: String,
        mutation: Mutation,
    },
    /// The genes of `restored` committed again: history is never rewritten.
    Rollback {
        restored: u64,
        rolled_back: u64,
        reason: String,
    },
}

/// One immutable generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Generation {
    pub system_id: SystemId,
    pub generation: u64,
    pub parent: Option<u64>,
    pub genes: Genes,
    pub checksum: String,
    pub snapshot_id: String,
    pub origin: Origin,
    pub created_at: DateTime<Utc>,
}

impl Generation {
    pub fn new(
        system_id: SystemId,
        generation: u64,
        parent: Option<u64>,
        genes: Genes,
        origin: Origin,
        created_at: DateTime<Utc>,
    ) -> Self {
        let checksum = checksum(&genes);
        let snapshot_id = snapshot_id(&system_id, generation, created_at);
        Self {
            system_id,
            generation,
            parent,
            genes,
            checksum,
            snapshot_id,
            origin,
            created_at,
        }
    }

    pub fn plan_step(&self) -> Option<&PlanStepRef> {
        match &self.origin {
            Origin::Mutation { mutation, .. } => mutation.plan_step.as_ref(),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeadStatus {
    Stable,
    Evaluating,
    Paused,
    /// An approved mutation is held for a human (`Head::approval` says which); no cycle runs.
    AwaitingApproval,
}

impl HeadStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stable => "stable",
            Self::Evaluating => "evaluating",
            Self::Paused => "paused",
            Self::AwaitingApproval => "awaiting_approval",
        }
    }
}

/// The open evaluation window of the generation under test.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub generation: u64,
    /// The stable generation this one is compared against (none for a baseline).
    pub parent: Option<u64>,
    /// Fitness of the parent; `None` makes this a baseline measurement that is always kept.
    pub baseline_fitness: Option<f64>,
    pub started_at: DateTime<Utc>,
    pub deadline: DateTime<Utc>,
    pub samples_required: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_step: Option<PlanStepRef>,
    #[serde(default)]
    pub predicted_impact: f64,
    /// Reports recorded for this window. Each report moves it on with a condition on the value
    /// it read, so two reports arriving together never each count only themselves.
    #[serde(default)]
    pub samples_seen: u32,
    /// The window was inconclusive once and was extended: the next inconclusive close keeps
    /// the parent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub extended: bool,
    /// Set when the candidate runs as a canary beside a control on the parent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Boxed: most windows have none, and the head travels in every write.
    pub canary: Option<Box<super::CanaryWindow>>,
}

/// The head pointer: which generation is current and what state it is in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Head {
    pub system_id: SystemId,
    pub generation: u64,
    pub status: HeadStatus,
    /// The last generation whose evaluation was kept (or restored by rollback).
    pub stable_generation: u64,
    /// Fitness of `stable_generation`, once measured.
    pub stable_fitness: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluation: Option<Evaluation>,
    /// Consecutive rollbacks, for conflict detection.
    #[serde(default)]
    pub rollback_streak: u32,
    pub updated_at: DateTime<Utc>,
    /// The decision held for a human while the status is `AwaitingApproval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Box<PendingApproval>>,
}

/// An approval held for a human. It lives on the head so that the transition into and out of
/// it is one conditional write, and the tick sees its deadline without another read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingApproval {
    pub decision_id: String,
    pub mutation: Mutation,
    /// The risk that put it above the threshold.
    pub risk: f64,
    pub requested_at: DateTime<Utc>,
    /// After this the tick rejects it.
    pub expires_at: DateTime<Utc>,
}

/// The aggregate view: schema, head and the immutable generations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SystemDna {
    pub system_id: SystemId,
    pub schema: GeneSchema,
    pub head: Head,
    pub generations: Vec<Generation>,
}

impl SystemDna {
    pub fn current(&self) -> Option<&Generation> {
        self.generations
            .iter()
            .find(|g| g.generation == self.head.generation)
    }
}

/// Most genes of one system. Every generation, prompt and `DnaUpdated` message carries them
/// all, and with the per-gene limits of [`super::gene`] this bounds the largest record and
/// message a DNA can produce (see there).
pub const MAX_GENES: usize = 64;

/// The DNA file `evolve init --dna FILE` reads (docs/architecture.md, "Data model").
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DnaFile {
    pub system_id: String,
    pub genes: BTreeMap<String, GeneEntry>,
    /// What the system must keep meeting (`{"p99_latency_ms": "<= 250"}`): shown to the models
    /// that analyse, plan and decide.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub performance_requirements: BTreeMap<String, Value>,
    /// Rules of the business the changes must respect, in words.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub business_constraints: Vec<String>,
    /// Bounds a generation must stay inside whatever its score (`"error_rate <= 0.01"`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub guardrails: Vec<super::Guardrail>,
    /// The metrics the fitness is computed from, when the system has several objectives.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub objectives: Vec<super::Objective>,
    /// The share of instances a mutation first runs on, beside a control on the parent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_share: Option<f64>,
    /// How long a promoted canary bakes on every instance before it is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_bake_seconds: Option<u32>,
}

/// The DNA file's requirements and constraints, kept with the system's settings and put
/// before the models (the seed's decision criteria).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Constraints {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub performance_requirements: BTreeMap<String, Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub business_constraints: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub guardrails: Vec<super::Guardrail>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub objectives: Vec<super::Objective>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_share: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_bake_seconds: Option<u32>,
}

/// Most requirements and most constraints a DNA file may give.
pub const MAX_CONSTRAINTS: usize = 16;
/// Longest requirement name, requirement text and constraint, in characters: they go into
/// every prompt, so they are short by rule.
pub const MAX_CONSTRAINT_CHARS: usize = 200;

impl Constraints {
    pub fn is_empty(&self) -> bool {
        self.performance_requirements.is_empty()
            && self.business_constraints.is_empty()
            && self.guardrails.is_empty()
            && self.objectives.is_empty()
            && self.canary_share.is_none()
            && self.canary_bake_seconds.is_none()
    }

    fn validate(&self) -> Result<(), DnaFileError> {
        let bad = |what: String| Err(DnaFileError::Constraint(what));
        if self.performance_requirements.len() > MAX_CONSTRAINTS
            || self.business_constraints.len() > MAX_CONSTRAINTS
        {
            return bad(format!(
                "at most {MAX_CONSTRAINTS} requirements and {MAX_CONSTRAINTS} constraints"
            ));
        }
        for (name, value) in &self.performance_requirements {
            let text_ok = match value {
                Value::String(s) => s.chars().count() <= MAX_CONSTRAINT_CHARS,
                Value::Number(_) | Value::Bool(_) => true,
                _ => false,
            };
            if name.is_empty() || name.chars().count() > 64 || !text_ok {
                return bad(format!(
                    "performance requirement {}: a name of 1..64 characters and a number, a \
                     bool or a text of at most {MAX_CONSTRAINT_CHARS} characters",
                    json_quote(name)
                ));
            }
        }
        if let Some(c) = self
            .business_constraints
            .iter()
            .find(|c| c.is_empty() || c.chars().count() > MAX_CONSTRAINT_CHARS)
        {
            return bad(format!(
                "business constraint {}: 1..{MAX_CONSTRAINT_CHARS} characters",
                json_quote(c)
            ));
        }
        let most = super::judging::MAX_JUDGING_RULES;
        if self.guardrails.len() > most || self.objectives.len() > most {
            return bad(format!("at most {most} guardrails and {most} objectives"));
        }
        for objective in &self.objectives {
            objective.validate().map_err(DnaFileError::Constraint)?;
        }
        if let Some(share) = self.canary_share {
            super::canary::validate_share(share).map_err(DnaFileError::Constraint)?;
        }
        if self.canary_bake_seconds.is_some() && self.canary_share.is_none() {
            return bad("canary_bake_seconds needs a canary_share".into());
        }
        let mut names: Vec<_> = self.objectives.iter().map(|o| &o.metric).collect();
        names.sort();
        if let Some([twice, _]) = names.windows(2).find(|w| w[0] == w[1]) {
            return bad(format!("objective {twice} is given twice"));
        }
        Ok(())
    }
}

/// Why a DNA file was refused: every variant names what to fix.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DnaFileError {
    #[error("not valid DNA JSON: {0}")]
    Json(String),
    #[error(transparent)]
    SystemId(InvalidId),
    /// `gene` is the name as an error message quotes it (see [`json_quote`]).
    #[error("gene {gene}: {source}")]
    GeneName { gene: String, source: InvalidId },
    #[error(transparent)]
    Gene(#[from] GeneDefError),
    #[error("the DNA has no genes")]
    NoGenes,
    #[error("{0}")]
    Constraint(String),
    #[error("the DNA has {0} genes; at most {MAX_GENES} are allowed")]
    TooManyGenes(usize),
    #[error(
        "gene {gene:?}, field \"value\": expected a {expected} value, got {}",
        quote_value(got)
    )]
    ValueType {
        gene: String,
        expected: super::gene::GeneKind,
        got: Value,
    },
}

impl DnaFile {
    /// The file's `performance_requirements` and `business_constraints`, checked against their
    /// limits.
    pub fn parse_constraints(text: &str) -> Result<Constraints, DnaFileError> {
        let file: DnaFile =
            serde_json::from_str(text).map_err(|e| DnaFileError::Json(e.to_string()))?;
        let constraints = Constraints {
            performance_requirements: file.performance_requirements,
            business_constraints: file.business_constraints,
            guardrails: file.guardrails,
            objectives: file.objectives,
            canary_share: file.canary_share,
            canary_bake_seconds: file.canary_bake_seconds,
        };
        constraints.validate()?;
        Ok(constraints)
    }

    pub fn parse(text: &str) -> Result<(SystemId, GeneSchema, Genes), DnaFileError> {
        let file: DnaFile =
            serde_json::from_str(text).map_err(|e| DnaFileError::Json(e.to_string()))?;
        file.validate()
    }

    pub fn validate(self) -> Result<(SystemId, GeneSchema, Genes), DnaFileError> {
        let system_id =
            SystemId::parse(self.system_id).map_err(|e| DnaFileError::SystemId(shortened(e)))?;
        if system_id.is_global() {
            return Err(DnaFileError::SystemId(InvalidId {
                kind: "system id",
                value: system_id.to_string(),
                rule: "is reserved",
            }));
        }
        if self.genes.is_empty() {
            return Err(DnaFileError::NoGenes);
        }
        if self.genes.len() > MAX_GENES {
            return Err(DnaFileError::TooManyGenes(self.genes.len()));
        }
        let mut schema = GeneSchema::new();
        let mut genes = Genes::new();
        for (raw_name, entry) in self.genes {
            let name =
                GeneName::parse(raw_name.clone()).map_err(|source| DnaFileError::GeneName {
                    gene: json_quote(&raw_name),
                    source: shortened(source),
                })?;
            let value = entry
                .def
                .spec
                .value_from_json(&entry.value)
                .ok_or_else(|| DnaFileError::ValueType {
                    gene: raw_name.clone(),
                    expected: entry.def.spec.kind(),
                    got: entry.value.clone(),
                })?;
            entry.def.validate(&raw_name, &value)?;
            schema.insert(name.clone(), entry.def);
            genes.insert(name, value);
        }
        Ok((system_id, schema, genes))
    }

    /// Writes schema and values back in the file format.
    pub fn from_parts(system_id: &SystemId, schema: &GeneSchema, genes: &Genes) -> Self {
        let genes = schema
            .iter()
            .filter_map(|(name, def)| {
                genes.get(name).map(|v| {
                    (
                        name.to_string(),
                        GeneEntry {
                            def: def.clone(),
                            value: v.to_json(),
                        },
                    )
                })
            })
            .collect();
        Self {
            system_id: system_id.to_string(),
            genes,
            performance_requirements: BTreeMap::new(),
            business_constraints: Vec::new(),
            guardrails: Vec::new(),
            objectives: Vec::new(),
            canary_share: None,
            canary_bake_seconds: None,
        }
    }
}

/// An id error that quotes at most the start of a long value: the rule says what is wrong.
fn shortened(mut error: InvalidId) -> InvalidId {
    if error.value.chars().count() > QUOTE_CHARS {
        error.value = error
            .value
            .chars()
            .take(QUOTE_CHARS)
            .chain("...".chars())
            .collect();
    }
    error
}

/// A JSON value as an error message quotes it: its start, when it is long.
fn quote_value(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > QUOTE_CHARS {
        text.chars()
            .take(QUOTE_CHARS)
            .chain("...".chars())
            .collect()
    } else {
        text
    }
}

/// Reads a value map (as sent in messages) against the schema, so ints stay ints.
pub fn genes_from_json(schema: &GeneSchema, values: &Value) -> Option<Genes> {
    let obj = values.as_object()?;
    let mut genes = Genes::new();
    for (name, def) in schema {
        let v = obj.get(name.as_str())?;
        genes.insert(name.clone(), def.spec.value_from_json(v)?);
    }
    Some(genes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"{
      "system_id": "checkout-api",
      "genes": {
        "cache_size_mb": {"type": "int", "value": 256, "min": 16, "max": 4096, "max_step": 512,
                          "risk_weight": 0.3, "description": "in-process LRU size"},
        "timeout_s":     {"type": "float", "value": 2.5, "min": 0.1, "max": 30.0, "max_step": 2.0},
        "compression":   {"type": "choice", "value": "lz4", "choices": ["none", "lz4", "zstd"]},
        "prefetch":      {"type": "bool", "value": false},
        "region":        {"type": "choice", "value": "eu-west-1", "choices": ["eu-west-1"], "frozen": true}
      }
    }"#;

    #[test]
    fn design_example_parses() {
        let (id, schema, genes) = DnaFile::parse(EXAMPLE).expect("valid");
        assert_eq!(id.as_str(), "checkout-api");
        assert_eq!(schema.len(), 5);
        assert!(schema[&GeneName::parse("region").expect("name")].frozen);
        assert_eq!(
            genes[&GeneName::parse("cache_size_mb").expect("name")],
            super::super::gene::GeneValue::Int(256)
        );
    }

    #[test]
    fn errors_name_the_gene_and_field() {
        let bad = EXAMPLE.replace("\"value\": 256", "\"value\": 8");
        let err = DnaFile::parse(&bad).expect_err("out of bounds").to_string();
        assert!(
            err.contains("cache_size_mb") && err.contains("value"),
            "{err}"
        );
        let bad = EXAMPLE.replace("\"value\": 2.5", "\"value\": \"fast\"");
        let err = DnaFile::parse(&bad).expect_err("wrong type").to_string();
        assert!(err.contains("timeout_s"), "{err}");
        let bad = EXAMPLE.replace("\"max_step\": 512", "\"max_step\": -1");
        let err = DnaFile::parse(&bad).expect_err("bad step").to_string();
        assert!(err.contains("max_step"), "{err}");
        let bad = EXAMPLE.replace("\"risk_weight\": 0.3", "\"risk_weight\": 3");
        assert!(
            DnaFile::parse(&bad)
                .expect_err("risk")
                .to_string()
                .contains("risk_weight")
        );
        let bad = EXAMPLE.replace("checkout-api", "Checkout API");
        assert!(
            DnaFile::parse(&bad)
                .expect_err("id")
                .to_string()
                .contains("system id")
        );
        assert!(DnaFile::parse("{").is_err());
    }

    /// A DNA file of `genes` choice genes, each with `choices` choices made by `choice(i)`.
    fn choice_dna(genes: usize, choices: usize, choice: impl Fn(usize) -> String) -> String {
        let choices: Vec<String> = (0..choices).map(choice).collect();
        let genes: serde_json::Map<String, Value> = (0..genes)
            .map(|i| {
                let gene = serde_json::json!({
                    "type": "choice", "value": choices[0], "choices": choices,
                });
                (format!("g{i}"), gene)
            })
            .collect();
        serde_json::json!({"system_id": "limits", "genes": genes}).to_string()
    }

    fn refusal(text: &str) -> String {
        DnaFile::parse(text).expect_err("over a limit").to_string()
    }

    #[test]
    fn each_limit_is_inclusive_and_one_more_is_refused_naming_gene_and_limit() {
        use crate::domain::gene::{MAX_CHOICE_BYTES, MAX_CHOICES};
        let short = |i: usize| format!("c{i}");
        assert!(DnaFile::parse(&choice_dna(MAX_GENES, 2, short)).is_ok());
        let err = refusal(&choice_dna(MAX_GENES + 1, 2, short));
        assert!(
            err.contains(&format!("{} genes", MAX_GENES + 1))
                && err.contains(&format!("at most {MAX_GENES}")),
            "{err}"
        );

        assert!(DnaFile::parse(&choice_dna(1, MAX_CHOICES, short)).is_ok());
        let err = refusal(&choice_dna(1, MAX_CHOICES + 1, short));
        assert!(
            err.contains("\"g0\"")
                && err.contains("choices")
                && err.contains(&format!("at most {MAX_CHOICES}")),
            "{err}"
        );

        // Bytes, not characters: 'é' is two bytes of UTF-8.
        let long = |i: usize| format!("{i:02}{}", "é".repeat((MAX_CHOICE_BYTES - 2) / 2));
        assert!(DnaFile::parse(&choice_dna(1, 3, long)).is_ok());
        let longer = |i: usize| format!("{i:02}{}", "é".repeat(MAX_CHOICE_BYTES / 2));
        let err = refusal(&choice_dna(1, 3, longer));
        assert!(
            err.contains("\"g0\"") && err.contains(&format!("at most {MAX_CHOICE_BYTES} bytes")),
            "{err}"
        );
        // A huge value is quoted only in part.
        let err = refusal(&choice_dna(1, 2, |i| format!("{i}{}", "x".repeat(100_000))));
        assert!(err.len() < 500, "{} bytes of error", err.len());
    }

    #[test]
    fn a_control_character_in_a_choice_is_refused_and_quoted_as_json() {
        let err = refusal(&choice_dna(1, 2, |i| format!("c{i}\u{1b}[2J")));
        assert!(
            err.contains("\"g0\"") && err.contains(r#""c0\u001b[2J""#) && err.contains("control"),
            "{err}"
        );
    }

    #[test]
    fn huge_names_and_values_are_quoted_only_in_part() {
        let huge = "g".repeat(100_000);
        let text = serde_json::json!({
            "system_id": "limits",
            "genes": {huge.clone(): {"type": "bool", "value": true}},
        })
        .to_string();
        let err = refusal(&text);
        assert!(err.contains("64 characters") && err.len() < 500, "{err}");
        let text = serde_json::json!({
            "system_id": "limits",
            "genes": {"n": {"type": "int", "value": huge, "min": 0, "max": 1}},
        })
        .to_string();
        let err = refusal(&text);
        assert!(err.contains("\"n\"") && err.len() < 500, "{err}");
    }

    #[test]
    fn checksum_is_canonical() {
        let (_, schema, genes) = DnaFile::parse(EXAMPLE).expect("valid");
        let sum = checksum(&genes);
        assert_eq!(sum.len(), 64);
        // Canonical JSON: sorted keys, no whitespace, integral floats without a point.
        let canonical = serde_json_canonicalizer::to_string(&genes).expect("json");
        assert_eq!(
            canonical,
            r#"{"cache_size_mb":256,"compression":"lz4","prefetch":false,"region":"eu-west-1","timeout_s":2.5}"#
        );
        assert_eq!(sum, sha256_hex(canonical.as_bytes()));
        let round = genes_from_json(&schema, &serde_json::to_value(&genes).expect("json"))
            .expect("reads back");
        assert_eq!(checksum(&round), sum);
    }
}
