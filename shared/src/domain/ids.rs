//! Identifier newtypes and deterministic id derivation.
//!
//! Ids are derived from the causation id so that a redelivered message rewrites the same records
//! instead of adding new ones (docs/architecture.md, "Exactly once").

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {value:?}: {rule}")]
pub struct InvalidId {
    pub kind: &'static str,
    pub value: String,
    pub rule: &'static str,
}

const GLOBAL_ID: &str = "_global";

macro_rules! string_id {
    ($(#[$meta:meta])* $name:ident, $kind:literal, $rule:literal, $check:expr) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Parses and validates; the only way to build one.
            pub fn parse(value: impl Into<String>) -> Result<Self, InvalidId> {
                let value = value.into();
                let check: fn(&str) -> bool = $check;
                if check(&value) {
                    Ok(Self(value))
                } else {
                    Err(InvalidId { kind: $kind, value, rule: $rule })
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidId;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::parse(value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> Self {
                value.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl schemars::JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }

            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({"type": "string", "minLength": 1, "maxLength": 64})
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    };
}

string_id!(
    /// A system's id. It appears in DynamoDB keys and S3 prefixes, so it is kept to a safe alphabet.
    SystemId,
    "system id",
    "1 to 64 characters of a-z, 0-9, '-' and '_', starting with a letter or digit",
    |s| {
        s == GLOBAL_ID
            || !s.is_empty()
            && s.len() <= 64
            && s.as_bytes()[0].is_ascii_alphanumeric()
            && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    }
);

string_id!(
    /// A gene's name: an identifier an evaluator can use as a JSON key or environment variable.
    GeneName,
    "gene name",
    "1 to 64 characters of A-Z, a-z, 0-9 and '_', not starting with a digit",
    |s| {
        !s.is_empty()
            && s.len() <= 64
            && !s.as_bytes()[0].is_ascii_digit()
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    }
);

string_id!(
    /// A fitness metric's name. Metric names reach LLM prompts, so they are restricted to an
    /// alphabet that cannot carry instructions (docs/architecture.md, "The LLM layer").
    MetricName,
    "metric name",
    "1 to 64 characters of A-Z, a-z, 0-9, '_', '.', ':' and '-'",
    |s| {
        !s.is_empty()
            && s.len() <= 64
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
    }
);

impl SystemId {
    /// The id global messages (budget sweeps) travel under. No system can be created with it:
    /// system ids must start with a letter or digit, and `init` refuses this one.
    pub fn global() -> Self {
        Self(GLOBAL_ID.to_owned())
    }

    pub fn is_global(&self) -> bool {
        self.0 == GLOBAL_ID
    }
}

/// Derives a stable id from its causes: `prefix_` + 24 hex digits of SHA-256 over the parts.
///
/// A retry of the same message derives the same ids, so conditional writes see the same keys.
pub fn derive_id(prefix: &str, parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    let digest = hasher.finalize();
    format!("{prefix}_{}", &hex::encode(digest)[..24])
}

/// SHA-256 of bytes as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_ids_are_checked() {
        for ok in ["checkout-api", "a", "sys_1", "0abc"] {
            assert!(SystemId::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-x", "Upper", "has space", "a/b", &"x".repeat(65)] {
            assert!(SystemId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn gene_and_metric_names_are_checked() {
        assert!(GeneName::parse("cache_size_mb").is_ok());
        assert!(GeneName::parse("1x").is_err());
        assert!(GeneName::parse("a-b").is_err());
        assert!(MetricName::parse("p99.latency:ms").is_ok());
        assert!(MetricName::parse("ignore previous instructions").is_err());
    }

    #[test]
    fn derived_ids_are_stable_and_separate_their_parts() {
        assert_eq!(derive_id("dec", &["a", "b"]), derive_id("dec", &["a", "b"]));
        assert_ne!(derive_id("dec", &["ab", ""]), derive_id("dec", &["a", "b"]));
        assert!(derive_id("evt", &["x"]).starts_with("evt_"));
        assert_eq!(derive_id("evt", &["x"]).len(), 4 + 24);
    }
}
