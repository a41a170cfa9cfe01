//! Genes: the typed, bounded parameters that make up a system's DNA, and the rules for changing them.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::ids::GeneName;

/// A gene's current value. Serialized as a bare JSON value; reading one back needs the gene's
/// spec to know whether `3` is an int or a float (see [`GeneSpec::value_from_json`]); read
/// without one, integers become `Int` and [`GeneSpec::coerce`] widens them for float genes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum GeneValue {
    Int(i64),
    Float(f64),
    Bool(bool),
    Choice(String),
}

impl GeneValue {
    pub fn kind(&self) -> GeneKind {
        match self {
            Self::Int(_) => GeneKind::Int,
            Self::Float(_) => GeneKind::Float,
            Self::Bool(_) => GeneKind::Bool,
            Self::Choice(_) => GeneKind::Choice,
        }
    }

    /// The value on a numeric axis (ints and floats); `None` for bools and choices.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Self::Int(v) => Some(*v as f64),
            Self::Float(v) => Some(*v),
            Self::Bool(_) | Self::Choice(_) => None,
        }
    }

    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

impl fmt::Display for GeneValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Int(v) => write!(f, "{v}"),
            Self::Float(v) => write!(f, "{v}"),
            Self::Bool(v) => write!(f, "{v}"),
            Self::Choice(v) => write!(f, "{v:?}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GeneKind {
    Int,
    Float,
    Bool,
    Choice,
}

impl fmt::Display for GeneKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Int => "int",
            Self::Float => "float",
            Self::Bool => "bool",
            Self::Choice => "choice",
        })
    }
}

/// The type and bounds of a gene.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum GeneSpec {
    Int {
        min: i64,
        max: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_step: Option<i64>,
    },
    Float {
        min: f64,
        max: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_step: Option<f64>,
    },
    Bool,
    Choice {
        choices: Vec<String>,
    },
}

impl GeneSpec {
    pub fn kind(&self) -> GeneKind {
        match self {
            Self::Int { .. } => GeneKind::Int,
            Self::Float { .. } => GeneKind::Float,
            Self::Bool => GeneKind::Bool,
            Self::Choice { .. } => GeneKind::Choice,
        }
    }

    /// Reads a JSON value as a value of this gene's type, without checking bounds.
    pub fn value_from_json(&self, value: &Value) -> Option<GeneValue> {
        match (self, value) {
            (Self::Int { .. }, Value::Number(n)) => n.as_i64().map(GeneValue::Int).or_else(|| {
                // Accept 3.0 for an int (canonical JSON writes integral floats without a point).
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                    .map(|f| GeneValue::Int(f as i64))
            }),
            (Self::Float { .. }, Value::Number(n)) => {
                n.as_f64().filter(|f| f.is_finite()).map(GeneValue::Float)
            }
            (Self::Bool, Value::Bool(b)) => Some(GeneValue::Bool(*b)),
            (Self::Choice { .. }, Value::String(s)) => Some(GeneValue::Choice(s.clone())),
            _ => None,
        }
    }

    /// Widens an integer to a float for float genes (JSON does not tell `3` from `3.0`).
    pub fn coerce(&self, value: &GeneValue) -> GeneValue {
        match (self, value) {
            (Self::Float { .. }, GeneValue::Int(v)) => GeneValue::Float(*v as f64),
            _ => value.clone(),
        }
    }

    /// Checks a value of the right type against the bounds; the reason names the rule broken.
    pub fn check_bounds(&self, value: &GeneValue) -> Result<(), String> {
        match (self, value) {
            (Self::Int { min, max, .. }, GeneValue::Int(v)) if v < min || v > max => {
                Err(format!("{v} is outside [{min}, {max}]"))
            }
            (Self::Float { min, max, .. }, GeneValue::Float(v))
                if !v.is_finite() || v < min || v > max =>
            {
                Err(format!("{v} is outside [{min}, {max}]"))
            }
            (Self::Choice { choices }, GeneValue::Choice(c)) if !choices.contains(c) => {
                let listed: Vec<String> = choices.iter().map(|c| json_quote(c)).collect();
                Err(format!(
                    "{} is not one of [{}]",
                    json_quote(c),
                    listed.join(", ")
                ))
            }
            _ if self.kind() != value.kind() => {
                Err(format!("expected {}, got {}", self.kind(), value.kind()))
            }
            _ => Ok(()),
        }
    }

    /// The step from `from` to `to` and the gene's `max_step`, when the step is larger.
    ///
    /// Int genes compare in integers: `abs_diff` cannot overflow even from `i64::MIN` to
    /// `i64::MAX`, and no tolerance is needed. Float genes keep a relative tolerance, so a step
    /// of exactly `max_step` that picked up a rounding error on the way stays legal.
    pub fn step_beyond_max(&self, from: &GeneValue, to: &GeneValue) -> Option<(Step, Step)> {
        if let (
            Self::Int {
                max_step: Some(max),
                ..
            },
            GeneValue::Int(from),
            GeneValue::Int(to),
        ) = (self, from, to)
        {
            let step = from.abs_diff(*to);
            let max = max.unsigned_abs();
            return (step > max).then_some((Step::Int(step), Step::Int(max)));
        }
        let max = self.max_step()?;
        let step = (to.as_f64()? - from.as_f64()?).abs();
        (step > max * (1.0 + 1e-12)).then_some((Step::Float(step), Step::Float(max)))
    }

    /// The largest allowed change in one mutation on a numeric axis, if bounded. A float, for
    /// the heuristics that scale by it; [`Self::step_beyond_max`] is the exact rule.
    pub fn max_step(&self) -> Option<f64> {
        match self {
            Self::Int { max_step, .. } => max_step.map(|s| s as f64),
            Self::Float { max_step, .. } => *max_step,
            Self::Bool | Self::Choice { .. } => None,
        }
    }

    /// The numeric range `(min, max)` for ints and floats.
    pub fn range(&self) -> Option<(f64, f64)> {
        match self {
            Self::Int { min, max, .. } => Some((*min as f64, *max as f64)),
            Self::Float { min, max, .. } => Some((*min, *max)),
            Self::Bool | Self::Choice { .. } => None,
        }
    }
}

/// How far one mutation moves a numeric gene, measured in the gene's own arithmetic: an int
/// gene's step is exact at any magnitude, where a float cannot tell 2^53 from 2^53 + 1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Step {
    Int(u64),
    Float(f64),
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Int(v) => write!(f, "{v}"),
            Self::Float(v) => write!(f, "{v}"),
        }
    }
}

/// Everything about a gene except its current value: fixed when the system is created.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GeneDef {
    #[serde(flatten)]
    pub spec: GeneSpec,
    #[serde(default = "default_risk_weight")]
    pub risk_weight: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub frozen: bool,
}

fn default_risk_weight() -> f64 {
    0.5
}

/// The gene schema of a system: name to definition, ordered for deterministic output.
pub type GeneSchema = BTreeMap<GeneName, GeneDef>;

/// The gene values of one generation.
pub type Genes = BTreeMap<GeneName, GeneValue>;

// Limits on a gene definition. A system's whole schema is one DynamoDB item (at most 400 KB),
// travels in every prompt, and its values in every `DnaUpdated` message (SNS: at most 256 KB).
// With `MAX_GENES` (in `dna.rs`) genes at every limit, written in the characters that cost
// the most bytes as JSON, the schema's item is about 215 KB, a generation's about 35 KB and the
// message about 13 KB (the domain integration tests measure them), so no DNA that parses can
// fail later on a size limit.

/// Longest description kept; descriptions reach prompts (quoted and capped).
pub const MAX_DESCRIPTION_CHARS: usize = 280;
/// Most choices of one choice gene: a switch among a few known alternatives. It is the bound
/// the schema's size grows fastest with.
pub const MAX_CHOICES: usize = 16;
/// Longest choice value, in bytes of UTF-8 rather than characters, so that the bound on
/// storage holds in any script; enough for the identifiers that configuration values are.
/// Prompts cap choices at this many characters, which no valid value exceeds.
pub const MAX_CHOICE_BYTES: usize = 64;
/// How much of a user's string an error message quotes.
pub(crate) const QUOTE_CHARS: usize = 40;

/// `text` as a JSON string for an error message: JSON quoting shows control characters as
/// escapes, and past [`QUOTE_CHARS`] characters a huge value is cut, not repeated whole.
pub(crate) fn json_quote(text: &str) -> String {
    let shown: String = text.chars().take(QUOTE_CHARS).collect();
    let cut = shown.len() < text.len();
    let quoted = Value::String(shown).to_string();
    if cut { format!("{quoted}...") } else { quoted }
}

/// Why a gene definition in a DNA file was refused. Names the gene and the field, because users
/// write these files by hand.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("gene {gene:?}, field {field:?}: {reason}")]
pub struct GeneDefError {
    pub gene: String,
    pub field: &'static str,
    pub reason: String,
}

impl GeneDef {
    /// Validates a definition and its initial value.
    pub fn validate(&self, name: &str, value: &GeneValue) -> Result<(), GeneDefError> {
        let err = |field: &'static str, reason: String| GeneDefError {
            gene: name.to_owned(),
            field,
            reason,
        };
        match &self.spec {
            GeneSpec::Int { min, max, max_step } => {
                if min > max {
                    return Err(err("min", format!("min {min} is greater than max {max}")));
                }
                if let Some(step) = max_step {
                    if *step <= 0 {
                        return Err(err("max_step", format!("must be positive, got {step}")));
                    }
                }
            }
            GeneSpec::Float { min, max, max_step } => {
                if !min.is_finite() || !max.is_finite() || min > max {
                    return Err(err(
                        "min",
                        format!("need finite min <= max, got [{min}, {max}]"),
                    ));
                }
                if let Some(step) = max_step {
                    if !step.is_finite() || *step <= 0.0 {
                        return Err(err("max_step", format!("must be positive, got {step}")));
                    }
                }
            }
            GeneSpec::Bool => {}
            GeneSpec::Choice { choices } => {
                if choices.is_empty() {
                    return Err(err("choices", "must not be empty".into()));
                }
                if choices.len() > MAX_CHOICES {
                    return Err(err(
                        "choices",
                        format!(
                            "has {} choices; at most {MAX_CHOICES} are allowed",
                            choices.len()
                        ),
                    ));
                }
                for choice in choices {
                    if choice.len() > MAX_CHOICE_BYTES {
                        return Err(err(
                            "choices",
                            format!(
                                "choice {} is {} bytes long; at most {MAX_CHOICE_BYTES} bytes \
                                 (UTF-8) are allowed",
                                json_quote(choice),
                                choice.len()
                            ),
                        ));
                    }
                    // Prompts strip control characters, so a model would see another value.
                    if choice.chars().any(char::is_control) {
                        return Err(err(
                            "choices",
                            format!("choice {} contains a control character", json_quote(choice)),
                        ));
                    }
                }
                let mut sorted = choices.clone();
                sorted.sort();
                sorted.dedup();
                if sorted.len() != choices.len() {
                    return Err(err("choices", "must not repeat a choice".into()));
                }
            }
        }
        if !(0.0..=1.0).contains(&self.risk_weight) {
            return Err(err(
                "risk_weight",
                format!("must be within 0..1, got {}", self.risk_weight),
            ));
        }
        if let Some(d) = &self.description {
            let chars = d.chars().count();
            if chars > MAX_DESCRIPTION_CHARS {
                return Err(err(
                    "description",
                    format!(
                        "is {chars} characters long; at most {MAX_DESCRIPTION_CHARS} are allowed"
                    ),
                ));
            }
        }
        self.spec
            .check_bounds(value)
            .map_err(|reason| err("value", reason))
    }
}

/// One gene as written in a DNA file: definition and value side by side.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GeneEntry {
    #[serde(flatten)]
    pub def: GeneDef,
    pub value: Value,
}
