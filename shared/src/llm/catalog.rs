//! The model catalog, kept as data (`shared/catalog/models.json`) rather than code.
//!
//! Model ids, inference profiles, lifecycles and prices change far more often than the code that
//! uses them, and an operator must be able to correct a price or pin a model without a release.
//! The catalog embedded at build time is the default; a file given with `--model-catalog` (or the
//! [`CATALOG_ENV_VAR`] variable) replaces it whole. Either way it is validated before use, so a
//! typo in a price or a Claude 4.x model configured for on-demand calls is a startup error rather
//! than a wrong bill or a stream of failed calls.

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

/// The catalog shipped with the build.
const EMBEDDED: &str = include_str!("../../catalog/models.json");

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

impl ModelEntry {
    /// Active models are always usable; legacy and end-of-life ones only when pinned, because
    /// they may disappear or degrade without notice.
    pub fn is_usable(&self) -> bool {
        self.lifecycle == Lifecycle::Active || self.pinned
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
}

/// The catalog: every model the router may choose from, with its prices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelCatalog {
    pub version: u32,
    pub models: Vec<ModelEntry>,
}

impl ModelCatalog {
    /// The catalog compiled into the build, validated.
    pub fn embedded() -> Result<Self, CatalogError> {
        Self::from_json(EMBEDDED)
    }

    /// Parses and validates a catalog document.
    pub fn from_json(json: &str) -> Result<Self, CatalogError> {
        let catalog: Self =
            serde_json::from_str(json).map_err(|e| CatalogError::Parse(e.to_string()))?;
        catalog.validate()?;
        Ok(catalog)
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
        match override_path {
            Some(path) => Self::from_file(path),
            None => Self::embedded(),
        }
    }

    pub fn get(&self, id: &str) -> Option<&ModelEntry> {
        self.models.iter().find(|m| m.id == id)
    }

    /// Entries the router may choose: see [`ModelEntry::is_usable`].
    pub fn usable(&self) -> impl Iterator<Item = &ModelEntry> {
        self.models.iter().filter(|m| m.is_usable())
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
mod tests {
    use super::*;

    fn embedded() -> ModelCatalog {
        ModelCatalog::embedded().expect("embedded catalog")
    }

    fn entry(id: &str) -> ModelEntry {
        embedded().get(id).expect("model in catalog").clone()
    }

    fn with_model(model: ModelEntry) -> ModelCatalog {
        ModelCatalog {
            version: CATALOG_VERSION,
            models: vec![model],
        }
    }

    const SONNET_45_GLOBAL: &str = "global.anthropic.claude-sonnet-4-5-20250929-v1:0";
    const SONNET_45_US: &str = "us.anthropic.claude-sonnet-4-5-20250929-v1:0";

    #[test]
    fn embedded_catalog_validates_and_holds_the_required_models() {
        let catalog = embedded();
        catalog.validate().expect("valid");
        for id in [
            "anthropic.claude-3-5-sonnet-20241022-v2:0",
            "anthropic.claude-3-haiku-20240307-v1:0",
            "amazon.titan-text-premier-v1:0",
            SONNET_45_GLOBAL,
            SONNET_45_US,
            "global.anthropic.claude-haiku-4-5-20251001-v1:0",
            "us.anthropic.claude-haiku-4-5-20251001-v1:0",
            "us.amazon.nova-micro-v1:0",
            "us.amazon.nova-lite-v1:0",
            "us.amazon.nova-pro-v1:0",
        ] {
            let model = catalog.get(id).expect(id);
            assert!(model.price().is_some(), "{id} has a price for its endpoint");
        }
        assert!(catalog.usable().all(|m| m.lifecycle == Lifecycle::Active));
        assert!(catalog.usable().count() >= 7);
    }

    #[test]
    fn claude_45_entries_are_profiles_with_native_schema_output() {
        for model in embedded().models {
            if needs_profile(&model.id) {
                assert_eq!(
                    model.invocation,
                    Invocation::InferenceProfile,
                    "{}",
                    model.id
                );
                assert_eq!(model.structured_output, StructuredOutput::JsonSchema);
            }
        }
    }

    #[test]
    fn global_ids_are_priced_at_the_global_endpoint() {
        let catalog = embedded();
        assert_eq!(Endpoint::of_model(SONNET_45_GLOBAL), Endpoint::Global);
        assert_eq!(Endpoint::of_model(SONNET_45_US), Endpoint::Regional);
        assert!(
            catalog
                .price_for(SONNET_45_GLOBAL, Endpoint::Global)
                .is_some()
        );
        assert!(
            catalog
                .price_for(SONNET_45_US, Endpoint::Regional)
                .is_some()
        );
        assert!(
            catalog
                .price_for(SONNET_45_GLOBAL, Endpoint::Regional)
                .is_none()
        );
        assert!(
            catalog
                .price_for("no-such-model", Endpoint::Global)
                .is_none()
        );
    }

    #[test]
    fn claude_generation_is_read_from_both_naming_schemes() {
        assert!(needs_profile("anthropic.claude-sonnet-4-5-20250929-v1:0"));
        assert!(needs_profile("us.anthropic.claude-opus-4-1-20250805-v1:0"));
        assert!(needs_profile("anthropic.claude-sonnet-4-20250514-v1:0"));
        assert!(!needs_profile("anthropic.claude-3-5-sonnet-20241022-v2:0"));
        assert!(!needs_profile("anthropic.claude-3-haiku-20240307-v1:0"));
        assert!(!needs_profile("amazon.nova-micro-v1:0"));
    }

    #[test]
    fn pinned_legacy_and_end_of_life_models_become_usable() {
        let mut catalog = embedded();
        let before = catalog.usable().count();
        for model in &mut catalog.models {
            if model.id.starts_with("anthropic.claude-3") {
                model.pinned = true;
            }
        }
        assert_eq!(catalog.usable().count(), before + 2);
        assert!(
            catalog
                .usable()
                .all(|m| m.id != "amazon.titan-text-premier-v1:0")
        );
    }

    #[test]
    fn duplicate_ids_are_rejected() {
        let model = entry(SONNET_45_GLOBAL);
        let catalog = ModelCatalog {
            version: CATALOG_VERSION,
            models: vec![model.clone(), model],
        };
        assert_eq!(
            catalog.validate(),
            Err(CatalogError::DuplicateId(SONNET_45_GLOBAL.to_owned()))
        );
    }

    #[test]
    fn an_entry_without_a_price_for_its_endpoint_is_rejected() {
        let mut model = entry(SONNET_45_GLOBAL);
        model.prices[0].endpoint = Endpoint::Regional;
        assert_eq!(
            with_model(model).validate(),
            Err(CatalogError::MissingPrice {
                id: SONNET_45_GLOBAL.to_owned(),
                endpoint: Endpoint::Global,
            })
        );
    }

    #[test]
    fn zero_input_or_output_prices_are_rejected() {
        let mut model = entry(SONNET_45_US);
        model.prices[0].input = 0;
        assert!(matches!(
            with_model(model).validate(),
            Err(CatalogError::ZeroPrice { field: "input", .. })
        ));
        let mut model = entry(SONNET_45_US);
        model.prices[0].output = 0;
        assert!(matches!(
            with_model(model).validate(),
            Err(CatalogError::ZeroPrice {
                field: "output",
                ..
            })
        ));
    }

    #[test]
    fn a_free_cache_rate_needs_a_note() {
        let mut model = entry(SONNET_45_GLOBAL);
        model.prices[0].cache_read = 0;
        assert!(matches!(
            with_model(model.clone()).validate(),
            Err(CatalogError::UnexplainedFreeCache {
                field: "cache_read",
                ..
            })
        ));
        model.prices[0].note = Some("the provider does not charge for cache reads".into());
        with_model(model).validate().expect("explained");
    }

    #[test]
    fn malformed_price_dates_are_rejected() {
        for bad in ["2025-13-01", "2025-1-5", "yesterday", "", "2025-02-30"] {
            let mut model = entry(SONNET_45_GLOBAL);
            model.prices[0].as_of = bad.to_owned();
            assert!(
                matches!(
                    with_model(model).validate(),
                    Err(CatalogError::BadAsOf { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn claude_4_configured_on_demand_is_a_configuration_error() {
        let mut model = entry(SONNET_45_US);
        model.id = "anthropic.claude-sonnet-4-5-20250929-v1:0".to_owned();
        model.invocation = Invocation::OnDemand;
        assert_eq!(
            with_model(model).validate(),
            Err(CatalogError::ProfileRequired(
                "anthropic.claude-sonnet-4-5-20250929-v1:0".to_owned()
            ))
        );
        // The seed's Claude 3.5 model is fine on demand.
        let seed = entry("anthropic.claude-3-5-sonnet-20241022-v2:0");
        assert_eq!(seed.invocation, Invocation::OnDemand);
        with_model(seed).validate().expect("claude 3.5 on demand");
    }

    #[test]
    fn a_profile_without_regions_is_rejected() {
        let mut model = entry("us.amazon.nova-micro-v1:0");
        model.regions.clear();
        assert_eq!(
            with_model(model).validate(),
            Err(CatalogError::EmptyRegions(
                "us.amazon.nova-micro-v1:0".to_owned()
            ))
        );
    }

    #[test]
    fn empty_newer_and_malformed_catalogs_are_rejected() {
        assert_eq!(
            ModelCatalog::from_json(r#"{"version": 1, "models": []}"#),
            Err(CatalogError::Empty)
        );
        let mut newer = embedded();
        newer.version = CATALOG_VERSION + 1;
        assert!(matches!(
            newer.validate(),
            Err(CatalogError::UnsupportedVersion { .. })
        ));
        assert!(matches!(
            ModelCatalog::from_json(r#"{"version": 1, "models": [{"id": "x"}]}"#),
            Err(CatalogError::Parse(_))
        ));
    }

    #[test]
    fn a_catalog_file_replaces_the_embedded_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("models.json");
        let mut custom = embedded();
        custom.models.retain(|m| m.id == SONNET_45_GLOBAL);
        custom.models[0].prices[0].input = 1_234;
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&custom).expect("encode"),
        )
        .expect("write");

        let loaded = ModelCatalog::load(Some(&path)).expect("load file");
        assert_eq!(loaded, custom);
        assert_eq!(
            loaded
                .price_for(SONNET_45_GLOBAL, Endpoint::Global)
                .map(|p| p.input),
            Some(1_234)
        );
        assert_eq!(ModelCatalog::load(None).expect("embedded"), embedded());

        let missing = dir.path().join("absent.json");
        assert!(matches!(
            ModelCatalog::load(Some(&missing)),
            Err(CatalogError::Io { .. })
        ));
        std::fs::write(&path, "{").expect("write");
        assert!(matches!(
            ModelCatalog::load(Some(&path)),
            Err(CatalogError::Parse(_))
        ));
    }

    #[test]
    fn catalog_round_trips_through_json() {
        let catalog = embedded();
        let json = serde_json::to_string(&catalog).expect("encode");
        assert_eq!(ModelCatalog::from_json(&json).expect("decode"), catalog);
    }
}
