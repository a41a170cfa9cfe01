//! The model catalog, kept as data (`shared/catalog/models.json`, and the AI21 models in
//! `catalog/ai21.json` next to this module) rather than code.
//!
//! Model ids, inference profiles, lifecycles and prices change far more often than the code that
//! uses them, and an operator must be able to correct a price or pin a model without a release.
//! The catalog embedded at build time is the default; a file given with `--model-catalog` (or the
//! [`CATALOG_ENV_VAR`] variable) replaces it whole. Either way it is validated before use, so a
//! typo in a price or a Claude 4.x model configured for on-demand calls is a startup error rather
//! than a wrong bill or a stream of failed calls.
//!
//! # Legacy models
//!
//! The seed's own models (Claude 3.5 Sonnet, Claude 3 Haiku, Titan Text Premier) are listed with
//! the lifecycle Bedrock gives them today, legacy or end of life, and are not routed to unless a
//! catalog pins them (`"pinned": true`); a pinned one is routed like any active model. See
//! [`ModelEntry::skip_reason`] for why such entries are skipped rather than refused.

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

/// The catalog shipped with the build: the main document, then the AI21 models (the seed's
/// "Jurassic", which Bedrock serves as Jamba).
const EMBEDDED: [&str; 2] = [
    include_str!("../../catalog/models.json"),
    include_str!("catalog/ai21.json"),
];

/// The environment variable naming a catalog file that replaces the embedded one.
pub const CATALOG_ENV_VAR: &str = "EVOLVE_MODEL_CATALOG";

/// The newest catalog format this build understands.
pub const CATALOG_VERSION: u32 = 1;

/// The provider family: it decides how a request is shaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    Claude,
    Nova,
    Titan,
    Ai21,
}

/// How Converse reaches a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Invocation {
    /// Through a cross-Region inference profile (`global.` / `us.` / `eu.` ids).
    InferenceProfile,
    /// The foundation model id in one Region.
    OnDemand,
}

/// Where a profile may route requests: a data-residency choice made in configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Geography {
    Global,
    Us,
    Eu,
    Regional,
}

impl Geography {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Global => "global",
            Self::Us => "us",
            Self::Eu => "eu",
            Self::Regional => "regional",
        }
    }
}

/// How a model can be made to answer in our JSON shapes, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StructuredOutput {
    /// Native JSON-schema output: the answer is constrained to the schema.
    JsonSchema,
    /// Forced tool use: the answer arrives as the tool's input.
    ToolUse,
    /// JSON extracted from free text: the most parse failures.
    Text,
}

/// Whether a model may be chosen without an operator's explicit pin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Lifecycle {
    Active,
    Legacy,
    EndOfLife,
}

/// Which endpoint scope a price applies to: global profiles are billed below geographic and
/// in-Region ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    Global,
    Regional,
}

impl Endpoint {
    /// The scope Bedrock bills a call to `id` at: `global.` profiles are global, the rest regional.
    pub fn of_model(id: &str) -> Self {
        if id.starts_with("global.") {
            Self::Global
        } else {
            Self::Regional
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Global => "global",
            Self::Regional => "regional",
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The Bedrock service tier a price belongs to. Calls are made on the standard tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceTier {
    Standard,
    Priority,
    Flex,
}

/// One price list entry. All amounts are integer nano-USD per million tokens, so a call's cost can
/// be computed exactly (see [`crate::llm::pricing`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub endpoint: Endpoint,
    pub tier: ServiceTier,
    pub input: u64,
    pub output: u64,
    pub cache_read: u64,
    pub cache_write_5m: u64,
    pub cache_write_1h: u64,
    /// Where the numbers were read, so a reviewer can check them.
    pub source: String,
    /// When they were read (`YYYY-MM-DD`).
    pub as_of: String,
    /// Required when a cache rate is zero: it must say that the provider really charges nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// One model or inference profile that Converse can be called with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    /// The `modelId` passed to Converse: an inference-profile id or a foundation-model id.
    pub id: String,
    pub name: String,
    pub family: Family,
    pub provider: String,
    pub invocation: Invocation,
    /// The foundation model behind the id (IAM needs its ARN in every routed Region).
    pub base_model_id: String,
    /// The Regions the profile routes to (or the Region of an on-demand model).
    pub regions: Vec<String>,
    pub geography: Geography,
    /// Free-form tags the router matches against task complexity.
    pub strengths: Vec<String>,
    pub context_window: u32,
    pub max_output_tokens: u32,
    pub typical_latency_ms: u32,
    pub structured_output: StructuredOutput,
    pub lifecycle: Lifecycle,
    /// Set by an operator to keep using a legacy or end-of-life model on purpose.
    #[serde(default)]
    pub pinned: bool,
    pub prices: Vec<Price>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Why the router passes over a listed model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SkipReason {
    #[error(
        "legacy on Bedrock and not pinned: it may be withdrawn or lose access at short notice; \
         set \"pinned\": true in a catalog file to route to it"
    )]
    Legacy,
    #[error(
        "end of life on Bedrock and not pinned: calls to it fail; set \"pinned\": true in a \
         catalog file only if the account still has access"
    )]
    EndOfLife,
}

impl ModelEntry {
    /// Active models are always usable; legacy and end-of-life ones only when pinned, because
    /// they may disappear or degrade without notice.
    pub fn is_usable(&self) -> bool {
        self.skip_reason().is_none()
    }

    /// Why the router will not choose this entry, if it will not.
    ///
    /// An unpinned legacy or end-of-life entry is skipped, not refused: the catalog also prices
    /// what was already spent (a checkpointed answer read back after a crash, a batched answer,
    /// a ledger recomputation), so an entry must stay listed after its model stops being routed
    /// to, and a catalog file copied from the built-in one must load as it is. Loading logs each
    /// skipped entry with this reason, and a catalog in which nothing is usable is refused
    /// ([`CatalogError::NoUsableModel`]), so a skipped model never goes unexplained.
    pub fn skip_reason(&self) -> Option<SkipReason> {
        match self.lifecycle {
            _ if self.pinned => None,
            Lifecycle::Active => None,
            Lifecycle::Legacy => Some(SkipReason::Legacy),
            Lifecycle::EndOfLife => Some(SkipReason::EndOfLife),
        }
    }

    /// The endpoint scope this entry's calls are billed at.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint::of_model(&self.id)
    }

    /// The standard-tier price for `endpoint`.
    pub fn price_at(&self, endpoint: Endpoint) -> Option<&Price> {
        self.prices
            .iter()
            .find(|p| p.endpoint == endpoint && p.tier == ServiceTier::Standard)
    }

    /// The price of a call to this entry (its own endpoint, standard tier).
    pub fn price(&self) -> Option<&Price> {
        self.price_at(self.endpoint())
    }

    pub fn has_strength(&self, strength: &str) -> bool {
        self.strengths.iter().any(|s| s == strength)
    }
}

/// Why a catalog cannot be used. All of these are configuration errors: retrying cannot help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    #[error("cannot read model catalog {path}: {reason}")]
    Io { path: String, reason: String },
    #[error("model catalog is not valid JSON for the catalog format: {0}")]
    Parse(String),
    #[error("model catalog version {found} is newer than this build understands ({supported})")]
    UnsupportedVersion { found: u32, supported: u32 },
    #[error("model catalog is empty")]
    Empty,
    #[error("model {0} is listed more than once")]
    DuplicateId(String),
    #[error("model {id} has no standard-tier price for its {endpoint} endpoint")]
    MissingPrice { id: String, endpoint: Endpoint },
    #[error("model {id}: {field} price for the {endpoint} endpoint is zero")]
    ZeroPrice {
        id: String,
        endpoint: Endpoint,
        field: &'static str,
    },
    #[error(
        "model {id}: {field} price for the {endpoint} endpoint is zero without a note saying the \
         provider charges nothing"
    )]
    UnexplainedFreeCache {
        id: String,
        endpoint: Endpoint,
        field: &'static str,
    },
    #[error("model {id}: price date {as_of:?} is not YYYY-MM-DD")]
    BadAsOf { id: String, as_of: String },
    #[error(
        "model {0} is a Claude 4 or later model configured as on_demand: it is reachable only \
         through an inference profile (configuration error)"
    )]
    ProfileRequired(String),
    #[error("inference profile {0} lists no regions (IAM needs them)")]
    EmptyRegions(String),
    #[error(
        "model catalog has no usable model: every entry is legacy or end of life and none is \
         pinned, so every call would fall back to the local engine"
    )]
    NoUsableModel,
}

/// The catalog: every model the router may choose from, with its prices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelCatalog {
    pub version: u32,
    pub models: Vec<ModelEntry>,
}

impl ModelCatalog {
    /// The catalog compiled into the build, its documents in order, validated as one.
    pub fn embedded() -> Result<Self, CatalogError> {
        let mut documents = EMBEDDED.iter().map(|json| Self::parse(json));
        let mut catalog = documents.next().ok_or(CatalogError::Empty)??;
        for document in documents {
            let document = document?;
            catalog.version = catalog.version.max(document.version);
            catalog.models.extend(document.models);
        }
        catalog.validate()?;
        Ok(catalog)
    }

    /// Parses and validates a catalog document.
    pub fn from_json(json: &str) -> Result<Self, CatalogError> {
        let catalog = Self::parse(json)?;
        catalog.validate()?;
        Ok(catalog)
    }

    fn parse(json: &str) -> Result<Self, CatalogError> {
        serde_json::from_str(json).map_err(|e| CatalogError::Parse(e.to_string()))
    }

    /// Reads, parses and validates a catalog file.
    pub fn from_file(path: &Path) -> Result<Self, CatalogError> {
        let text = std::fs::read_to_string(path).map_err(|e| CatalogError::Io {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::from_json(&text)
    }

    /// The catalog to run with: the file when one is given (it replaces the embedded catalog
    /// whole, so an operator sees exactly what is in effect), otherwise the embedded one.
    pub fn load(override_path: Option<&Path>) -> Result<Self, CatalogError> {
        let catalog = match override_path {
            Some(path) => Self::from_file(path)?,
            None => Self::embedded()?,
        };
        for (model, reason) in catalog.skipped() {
            tracing::info!(model = %model.id, %reason, "model catalog: not routed to");
        }
        Ok(catalog)
    }

    pub fn get(&self, id: &str) -> Option<&ModelEntry> {
        self.models.iter().find(|m| m.id == id)
    }

    /// Entries the router may choose: see [`ModelEntry::is_usable`].
    pub fn usable(&self) -> impl Iterator<Item = &ModelEntry> {
        self.models.iter().filter(|m| m.is_usable())
    }

    /// Entries the router passes over, each with its reason.
    pub fn skipped(&self) -> impl Iterator<Item = (&ModelEntry, SkipReason)> {
        self.models
            .iter()
            .filter_map(|m| m.skip_reason().map(|reason| (m, reason)))
    }

    /// The standard-tier price of `id` at `endpoint`. Use [`Endpoint::of_model`] for the endpoint
    /// a call to `id` is billed at.
    pub fn price_for(&self, id: &str, endpoint: Endpoint) -> Option<&Price> {
        self.get(id)?.price_at(endpoint)
    }

    /// Checks the rules a catalog must meet before any call is priced or routed with it.
    pub fn validate(&self) -> Result<(), CatalogError> {
        if self.version > CATALOG_VERSION {
            return Err(CatalogError::UnsupportedVersion {
                found: self.version,
                supported: CATALOG_VERSION,
            });
        }
        if self.models.is_empty() {
            return Err(CatalogError::Empty);
        }
        let mut seen = BTreeSet::new();
        for model in &self.models {
            if !seen.insert(model.id.as_str()) {
                return Err(CatalogError::DuplicateId(model.id.clone()));
            }
            validate_entry(model)?;
        }
        if self.usable().next().is_none() {
            return Err(CatalogError::NoUsableModel);
        }
        Ok(())
    }
}

fn validate_entry(model: &ModelEntry) -> Result<(), CatalogError> {
    let id = &model.id;
    if model.invocation == Invocation::OnDemand
        && model.family == Family::Claude
        && (needs_profile(id) || needs_profile(&model.base_model_id))
    {
        return Err(CatalogError::ProfileRequired(id.clone()));
    }
    if model.invocation == Invocation::InferenceProfile && model.regions.is_empty() {
        return Err(CatalogError::EmptyRegions(id.clone()));
    }
    let endpoint = model.endpoint();
    if model.price_at(endpoint).is_none() {
        return Err(CatalogError::MissingPrice {
            id: id.clone(),
            endpoint,
        });
    }
    for price in &model.prices {
        validate_price(id, price)?;
    }
    Ok(())
}

fn validate_price(id: &str, price: &Price) -> Result<(), CatalogError> {
    let zero = |field| CatalogError::ZeroPrice {
        id: id.to_owned(),
        endpoint: price.endpoint,
        field,
    };
    if price.input == 0 {
        return Err(zero("input"));
    }
    if price.output == 0 {
        return Err(zero("output"));
    }
    // A free cache token is possible but rare; it must be stated, not left as a silent zero.
    let explained = price.note.as_deref().is_some_and(|n| !n.trim().is_empty());
    for (field, value) in [
        ("cache_read", price.cache_read),
        ("cache_write_5m", price.cache_write_5m),
        ("cache_write_1h", price.cache_write_1h),
    ] {
        if value == 0 && !explained {
            return Err(CatalogError::UnexplainedFreeCache {
                id: id.to_owned(),
                endpoint: price.endpoint,
                field,
            });
        }
    }
    let well_formed =
        price.as_of.len() == 10 && NaiveDate::parse_from_str(&price.as_of, "%Y-%m-%d").is_ok();
    if !well_formed {
        return Err(CatalogError::BadAsOf {
            id: id.to_owned(),
            as_of: price.as_of.clone(),
        });
    }
    Ok(())
}

/// Whether an Anthropic model id names Claude 4 or later, which Bedrock serves only through
/// inference profiles. Handles both naming schemes: `claude-3-5-sonnet-…` (version first) and
/// `claude-sonnet-4-5-…` (tier first), with or without a profile prefix.
fn needs_profile(id: &str) -> bool {
    let Some((_, rest)) = id.split_once("anthropic.claude-") else {
        return false;
    };
    let mut parts = rest.split('-');
    let major = match parts.next() {
        Some(first) if first.bytes().all(|b| b.is_ascii_digit()) => first.parse::<u32>().ok(),
        Some(_) => parts.next().and_then(|second| second.parse::<u32>().ok()),
        None => None,
    };
    major.is_some_and(|m| m >= 4)
}

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use crate::cost::billing::ModelMap;

/// The bill's model map is built from the catalog here, so that `cost` does not depend on
/// `llm` (docs/architecture.md, "Layers and ports").
impl ModelMap {
    pub fn from_catalog(catalog: &ModelCatalog) -> ModelMap {
        let mut by_name: BTreeMap<String, Option<String>> = BTreeMap::new();
        let mut bases = BTreeMap::new();
        for model in &catalog.models {
            bases.insert(model.id.clone(), model.base_model_id.clone());
            let name = crate::cost::billing::catalog_name(&model.name);
            let entry = by_name
                .entry(name)
                .or_insert_with(|| Some(model.base_model_id.clone()));
            if entry.as_deref() != Some(model.base_model_id.as_str()) {
                *entry = None;
            }
        }
        ModelMap {
            by_name: by_name
                .into_iter()
                .filter_map(|(name, base)| Some((name, base?)))
                .collect(),
            bases,
        }
    }

    /// The map of the catalog compiled into the build; empty (every cost in [`OTHER`]) if that
    /// catalog cannot be read, which its own tests rule out.
    pub fn builtin() -> ModelMap {
        match ModelCatalog::embedded() {
            Ok(catalog) => ModelMap::from_catalog(&catalog),
            Err(error) => {
                tracing::warn!(%error, "the built-in model catalog cannot be read: bills are not split by model");
                ModelMap::default()
            }
        }
    }
}
