use super::*;
use crate::domain::{BudgetMode, Complexity, Role, TaskContext};
use crate::llm::router::{Route, RoutingPolicy, route};
use crate::store::performance::PerformanceSnapshot;

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
const JAMBA_MINI: &str = "ai21.jamba-1-5-mini-v1:0";
const JAMBA_LARGE: &str = "ai21.jamba-1-5-large-v1:0";
const SONNET_35: &str = "anthropic.claude-3-5-sonnet-20241022-v2:0";
const HAIKU_3: &str = "anthropic.claude-3-haiku-20240307-v1:0";
const TITAN_PREMIER: &str = "amazon.titan-text-premier-v1:0";

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
        JAMBA_MINI,
        JAMBA_LARGE,
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
    // The seed's Claude 3.5 model is fine on demand (pinned: alone and unpinned it would leave
    // the catalog without a usable model).
    let mut seed = entry("anthropic.claude-3-5-sonnet-20241022-v2:0");
    assert_eq!(seed.invocation, Invocation::OnDemand);
    seed.pinned = true;
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

// ---- the seed's AI21 model (Jamba) and its legacy models in routing ----

fn task(role: Role, complexity: Complexity) -> TaskContext {
    TaskContext {
        role,
        complexity,
        estimated_tokens: 2_000,
        max_latency_ms: None,
        accuracy_requirements: 0.5,
        cost_sensitivity: 0.5,
        critical: false,
    }
}

/// Routes with no recorded performance, the only geography `geography` when one is given, and
/// critical calls allowed while paused (so every mode ranks something).
fn routed(
    catalog: &ModelCatalog,
    task: &TaskContext,
    mode: BudgetMode,
    geography: Option<&str>,
) -> Route {
    let policy = RoutingPolicy {
        allow_critical_when_paused: true,
        preferred_geography: geography.map(str::to_owned),
        ..RoutingPolicy::default()
    };
    route(
        task,
        catalog,
        &PerformanceSnapshot::default(),
        mode,
        &policy,
    )
}

fn first_in_region(catalog: &ModelCatalog, task: &TaskContext, mode: BudgetMode) -> String {
    let r = routed(catalog, task, mode, Some("regional"));
    r.ranked
        .first()
        .cloned()
        .unwrap_or_else(|| panic!("{}", r.reason))
}

/// The built-in catalog written to a file with `pinned: true` set on `ids`, as an operator would
/// edit a copy of it, and loaded back the way `--model-catalog` loads it.
fn file_pinning(ids: &[&str]) -> ModelCatalog {
    let mut document = serde_json::to_value(embedded()).expect("encode");
    for model in document["models"].as_array_mut().expect("models") {
        if ids.iter().any(|id| model["id"] == *id) {
            model["pinned"] = true.into();
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("models.json");
    std::fs::write(&path, document.to_string()).expect("write");
    ModelCatalog::load(Some(&path)).expect("a catalog file with pinned legacy models loads")
}

#[test]
fn jamba_is_built_in_at_its_list_prices() {
    let catalog = embedded();
    for (id, name, input, output) in [
        (JAMBA_MINI, "Jamba 1.5 Mini", 200_000_000, 400_000_000),
        (JAMBA_LARGE, "Jamba 1.5 Large", 2_000_000_000, 8_000_000_000),
    ] {
        let model = catalog.get(id).expect(id);
        assert_eq!(model.name, name);
        assert_eq!(
            (model.family, model.provider.as_str()),
            (Family::Ai21, "ai21")
        );
        assert_eq!(model.invocation, Invocation::OnDemand);
        assert_eq!(model.base_model_id, id);
        assert_eq!(model.regions, ["us-east-1"]);
        assert_eq!(model.geography, Geography::Regional);
        assert_eq!(model.context_window, 256_000);
        assert_eq!(model.lifecycle, Lifecycle::Active);
        assert!(model.is_usable() && model.skip_reason().is_none());
        // Converse documents no forced tool choice for Jamba: its answers are read from text.
        assert_eq!(model.structured_output, StructuredOutput::Text);
        let price = model.price().expect("a price for its regional endpoint");
        assert_eq!(price.endpoint, Endpoint::Regional);
        assert_eq!(price.tier, ServiceTier::Standard);
        assert_eq!((price.input, price.output), (input, output), "{id}");
        // No prompt caching: a cache token, should one be reported, costs the input rate.
        assert_eq!(
            [price.cache_read, price.cache_write_5m, price.cache_write_1h],
            [input; 3]
        );
    }
    let (mini, large) = (entry(JAMBA_MINI), entry(JAMBA_LARGE));
    assert!(mini.has_strength("speed") && mini.has_strength("simple_tasks"));
    assert!(large.has_strength("reasoning") && large.has_strength("complex_decisions"));
}

#[test]
fn jamba_is_routed_for_every_role() {
    let catalog = embedded();
    for role in Role::ALL {
        for complexity in [Complexity::Low, Complexity::Medium, Complexity::High] {
            let r = routed(&catalog, &task(role, complexity), BudgetMode::Normal, None);
            for id in [JAMBA_MINI, JAMBA_LARGE] {
                assert!(r.ranked.iter().any(|m| m == id), "{role:?}: {id} in {r:?}");
            }
        }
        // In-Region on demand, Jamba is what the built-in catalog has: Mini for routine tasks
        // and whenever Economy ranks by price, Large for hard ones.
        let low = task(role, Complexity::Low);
        let high = task(role, Complexity::High);
        assert_eq!(
            first_in_region(&catalog, &low, BudgetMode::Normal),
            JAMBA_MINI
        );
        assert_eq!(
            first_in_region(&catalog, &high, BudgetMode::Normal),
            JAMBA_LARGE
        );
        assert_eq!(
            first_in_region(&catalog, &high, BudgetMode::Economy),
            JAMBA_MINI
        );
    }
}

#[test]
fn legacy_models_are_never_routed_from_the_built_in_catalog() {
    let catalog = embedded();
    let skipped: Vec<(&str, SkipReason)> = catalog
        .skipped()
        .map(|(m, reason)| (m.id.as_str(), reason))
        .collect();
    assert_eq!(
        skipped,
        [
            (SONNET_35, SkipReason::EndOfLife),
            (HAIKU_3, SkipReason::Legacy),
            (TITAN_PREMIER, SkipReason::Legacy),
        ]
    );
    for (_, reason) in &skipped {
        assert!(reason.to_string().contains("\"pinned\": true"), "{reason}");
    }
    let geographies = [
        None,
        Some("global"),
        Some("us"),
        Some("eu"),
        Some("regional"),
    ];
    for role in Role::ALL {
        for complexity in [Complexity::Low, Complexity::Medium, Complexity::High] {
            for mode in [BudgetMode::Normal, BudgetMode::Economy, BudgetMode::Paused] {
                for geography in geographies {
                    let mut t = task(role, complexity);
                    t.critical = true;
                    let r = routed(&catalog, &t, mode, geography);
                    // The built-in catalog has no EU model: there the local engine answers.
                    assert_eq!(r.use_bedrock, geography != Some("eu"), "{}", r.reason);
                    assert!(
                        r.ranked.iter().all(|id| catalog
                            .get(id)
                            .is_some_and(|m| { m.lifecycle == Lifecycle::Active })),
                        "{r:?}"
                    );
                }
            }
        }
    }
}

#[test]
fn a_legacy_model_pinned_in_a_catalog_file_is_routed_like_any_other() {
    let built_in = embedded();
    let pinned = file_pinning(&[HAIKU_3]);
    assert!(pinned.get(HAIKU_3).is_some_and(ModelEntry::is_usable));
    assert_eq!(pinned.skipped().count(), 2);
    for role in Role::ALL {
        let low = task(role, Complexity::Low);
        for mode in [BudgetMode::Normal, BudgetMode::Economy] {
            // Built in, the legacy Haiku is skipped and Jamba Mini answers in-Region.
            assert_eq!(first_in_region(&built_in, &low, mode), JAMBA_MINI);
            // Pinned, Haiku fits (a fast model with forced tool use, which ranks above text
            // answers) and is chosen, every time.
            let r = routed(&pinned, &low, mode, Some("regional"));
            assert_eq!(r.ranked, [HAIKU_3, JAMBA_MINI, JAMBA_LARGE], "{}", r.reason);
            assert_eq!(r, routed(&pinned, &low, mode, Some("regional")));
            assert_eq!(
                r,
                routed(&file_pinning(&[HAIKU_3]), &low, mode, Some("regional"))
            );
        }
    }
}

#[test]
fn a_pinned_legacy_model_ranks_exactly_as_an_active_one_would() {
    let pinned = file_pinning(&[SONNET_35, HAIKU_3, TITAN_PREMIER]);
    let mut active = pinned.clone();
    for model in &mut active.models {
        model.lifecycle = Lifecycle::Active;
        model.pinned = false;
    }
    // Among the text-answering models Economy ranks by price: Titan Premier falls between the
    // two Jambas like any other model would.
    let economy = routed(
        &pinned,
        &task(Role::Analyze, Complexity::High),
        BudgetMode::Economy,
        Some("regional"),
    );
    assert_eq!(
        economy.ranked[economy.ranked.len() - 3..],
        [JAMBA_MINI, TITAN_PREMIER, JAMBA_LARGE]
    );
    for role in Role::ALL {
        for complexity in [Complexity::Low, Complexity::Medium, Complexity::High] {
            for mode in [BudgetMode::Normal, BudgetMode::Economy] {
                for geography in [None, Some("regional")] {
                    let t = task(role, complexity);
                    assert_eq!(
                        routed(&pinned, &t, mode, geography),
                        routed(&active, &t, mode, geography)
                    );
                }
            }
        }
    }
}

#[test]
fn a_catalog_without_a_usable_model_is_rejected() {
    let mut catalog = embedded();
    catalog.models.retain(|m| !m.is_usable());
    assert_eq!(catalog.models.len(), 3);
    assert_eq!(catalog.validate(), Err(CatalogError::NoUsableModel));
    let json = serde_json::to_string(&catalog).expect("encode");
    assert_eq!(
        ModelCatalog::from_json(&json),
        Err(CatalogError::NoUsableModel)
    );
    catalog.models[0].pinned = true;
    catalog.validate().expect("one pinned model is enough");
}
