//! The adapter under test, wired to the Converse stub through the real SDK client, with the
//! in-memory store as ledger and control state, a simulated clock as clock and sleeper, and a
//! small catalog of made-up models whose prices make every cost easy to recompute.

use std::sync::Arc;

use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_bedrockruntime::Client;
use aws_sdk_bedrockruntime::config::Credentials;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use shared::clock::{Clock, SeededRandom, SimClock};
use shared::cost::{Budgets, LedgerScope, PeriodKey, Totals};
use shared::domain::BudgetPeriod;
use shared::engine::LocalEngine;
use shared::llm::bedrock::{BedrockModel, BedrockPorts, BedrockSettings, SdkConverse};
use shared::llm::catalog::ModelCatalog;
use shared::store::CostLedger;
use shared::store::memory::MemoryStore;
use shared::store::{CircuitState, ControlState};
use tests::bedrock_stub::{Recorded, StubOptions, StubServer, Usage as StubUsage};

/// Forced tool use; the cheapest model and the best fit, so it is always routed first, but with
/// the smallest context window.
pub const A: &str = "test.tool-a-v1";
/// Native JSON-schema output; the dearest model, with the largest context window.
pub const B: &str = "test.schema-b-v1";
/// Free text with embedded JSON: text-only models always rank last.
pub const C: &str = "test.text-c-v1";

/// The simulated time every fixture starts at (midday, so a few seconds never change the day).
pub const START: &str = "2026-03-01T12:00:00Z";

/// Seed of the local engine and of the retry jitter.
pub const SEED: u64 = 7;

pub fn start() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(START)
        .expect("valid start time")
        .with_timezone(&Utc)
}

/// Catalog rates of one model, nano-USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rates {
    pub input: u64,
    pub output: u64,
    pub cache_read: u64,
    pub cache_write_5m: u64,
    pub cache_write_1h: u64,
}

/// One catalog entry of the test catalog.
#[derive(Debug, Clone)]
pub struct Spec {
    pub id: &'static str,
    pub family: &'static str,
    pub structured_output: &'static str,
    pub strengths: &'static [&'static str],
    pub context_window: u32,
    pub rates: Rates,
}

pub fn spec(id: &str) -> Spec {
    match id {
        A => Spec {
            id: A,
            family: "claude",
            structured_output: "tool_use",
            strengths: &["reasoning", "speed"],
            context_window: 8_192,
            rates: Rates {
                input: 1_000_000_000,
                output: 2_000_000_000,
                cache_read: 100_000_000,
                cache_write_5m: 1_250_000_000,
                cache_write_1h: 2_000_000_000,
            },
        },
        B => Spec {
            id: B,
            family: "claude",
            structured_output: "json_schema",
            strengths: &[],
            context_window: 200_000,
            rates: Rates {
                input: 3_000_000_000,
                output: 15_000_000_000,
                cache_read: 300_000_000,
                cache_write_5m: 3_750_000_000,
                cache_write_1h: 6_000_000_000,
            },
        },
        C => Spec {
            id: C,
            family: "titan",
            structured_output: "text",
            strengths: &[],
            context_window: 100_000,
            rates: Rates {
                input: 2_000_000_000,
                output: 6_000_000_000,
                cache_read: 200_000_000,
                cache_write_5m: 2_500_000_000,
                cache_write_1h: 4_000_000_000,
            },
        },
        other => panic!("no test model {other}"),
    }
}

/// The catalog document for `specs`, in the format `ModelCatalog::from_json` validates.
pub fn catalog_json(specs: &[Spec]) -> String {
    let models: Vec<Value> = specs
        .iter()
        .map(|s| {
            json!({
                "id": s.id,
                "name": format!("Test model {}", s.id),
                "family": s.family,
                "provider": "test",
                "invocation": "on_demand",
                "base_model_id": s.id,
                "regions": ["us-east-1"],
                "geography": "regional",
                "strengths": s.strengths,
                "context_window": s.context_window,
                "max_output_tokens": 4_096,
                "typical_latency_ms": 500,
                "structured_output": s.structured_output,
                "lifecycle": "active",
                "prices": [{
                    "endpoint": "regional",
                    "tier": "standard",
                    "input": s.rates.input,
                    "output": s.rates.output,
                    "cache_read": s.rates.cache_read,
                    "cache_write_5m": s.rates.cache_write_5m,
                    "cache_write_1h": s.rates.cache_write_1h,
                    "source": "made up for tests",
                    "as_of": "2026-01-01",
                }],
            })
        })
        .collect();
    json!({"version": 1, "models": models}).to_string()
}

pub fn catalog_of(specs: &[Spec]) -> ModelCatalog {
    ModelCatalog::from_json(&catalog_json(specs)).expect("the test catalog validates")
}

/// The test catalog with the named models.
pub fn catalog(ids: &[&'static str]) -> ModelCatalog {
    catalog_of(&ids.iter().map(|id| spec(id)).collect::<Vec<_>>())
}

/// What one answered request costs: every token kind at its rate, cache writes at the 5-minute
/// rate, summed exactly and rounded half up once.
pub fn cost_of(rates: &Rates, usage: &StubUsage) -> i128 {
    let exact = i128::from(usage.input) * i128::from(rates.input)
        + i128::from(usage.output) * i128::from(rates.output)
        + i128::from(usage.cache_read) * i128::from(rates.cache_read)
        + i128::from(usage.cache_write) * i128::from(rates.cache_write_5m);
    let million = 1_000_000_i128;
    let (whole, rest) = (exact / million, exact % million);
    if rest * 2 >= million {
        whole + 1
    } else {
        whole
    }
}

/// The same as [`cost_of`], as the `u64` the adapter reports.
pub fn cost_u64(rates: &Rates, usage: &StubUsage) -> u64 {
    u64::try_from(cost_of(rates, usage)).expect("test costs fit in u64")
}

/// The store's `Usage` for a stub usage.
pub fn store_usage(u: &StubUsage) -> shared::store::Usage {
    shared::store::Usage {
        input_tokens: u.input,
        output_tokens: u.output,
        cache_read_tokens: u.cache_read,
        cache_write_tokens: u.cache_write,
    }
}

/// A real Converse client for the stub: static credentials, `us-east-1`, and the SDK's own
/// retries off, because the adapter retries by itself.
pub fn client(url: &str) -> Client {
    let config = aws_sdk_bedrockruntime::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(url)
        .credentials_provider(Credentials::new("test", "test", None, None, "static"))
        .retry_config(RetryConfig::disabled())
        .build();
    Client::from_conf(config)
}

/// The adapter over `url`, paying into `store` and living on `clock`.
pub fn bedrock_model(
    url: &str,
    store: &Arc<MemoryStore>,
    clock: &Arc<SimClock>,
    settings: BedrockSettings,
) -> BedrockModel {
    let ports = BedrockPorts {
        ledger: store.clone(),
        control: store.clone(),
        clock: clock.clone(),
        sleeper: clock.clone(),
        random: Arc::new(SeededRandom::new(SEED)),
    };
    BedrockModel::new(
        SdkConverse::new(client(url)),
        settings,
        ports,
        LocalEngine::new(SEED),
    )
}

/// One adapter with its stub, store and clock.
#[derive(Debug)]
pub struct Fixture {
    pub stub: StubServer,
    pub store: Arc<MemoryStore>,
    pub clock: Arc<SimClock>,
    pub settings: BedrockSettings,
    pub model: BedrockModel,
}

impl Fixture {
    /// The named test models, no budgets, the adapter's default settings.
    pub async fn new(ids: &[&'static str]) -> Self {
        Self::with(catalog(ids), Budgets::default(), |_| {}).await
    }

    /// `catalog` and `budgets`, with `tweak` applied to the settings.
    pub async fn with(
        catalog: ModelCatalog,
        budgets: Budgets,
        tweak: impl FnOnce(&mut BedrockSettings),
    ) -> Self {
        Self::on(StubServer::start().await, catalog, budgets, tweak)
    }

    /// Like [`Fixture::with`], on a stub started with `options`.
    pub async fn with_stub(
        options: StubOptions,
        catalog: ModelCatalog,
        budgets: Budgets,
        tweak: impl FnOnce(&mut BedrockSettings),
    ) -> Self {
        let stub = StubServer::start_with(options)
            .await
            .expect("bind the stub on 127.0.0.1");
        Self::on(stub, catalog, budgets, tweak)
    }

    fn on(
        stub: StubServer,
        catalog: ModelCatalog,
        budgets: Budgets,
        tweak: impl FnOnce(&mut BedrockSettings),
    ) -> Self {
        let store = Arc::new(MemoryStore::new());
        let clock = Arc::new(SimClock::new(start()));
        let mut settings = BedrockSettings::new(catalog, budgets);
        // The other themes send the same request again on purpose and count what it costs;
        // `cache` turns the response cache on.
        settings.response_cache_ttl = chrono::Duration::zero();
        tweak(&mut settings);
        let model = bedrock_model(&stub.url(), &store, &clock, settings.clone());
        Self {
            stub,
            store,
            clock,
            settings,
            model,
        }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.stub.requests()
    }

    /// The model of every request so far, in order.
    pub fn models_called(&self) -> Vec<String> {
        self.requests().into_iter().map(|r| r.model_id).collect()
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    pub async fn circuit(&self, model_id: &str) -> Option<CircuitState> {
        self.store.circuit(model_id).await.expect("memory store")
    }

    /// Today's ledger counters of `scope`.
    pub async fn today(&self, scope: &LedgerScope) -> Totals {
        self.store
            .totals(PeriodKey::of(BudgetPeriod::Day, self.now()), scope)
            .await
            .expect("memory store")
    }
}

/// `id` repeated `n` times, for request-log assertions.
pub fn times(id: &str, n: usize) -> Vec<String> {
    vec![id.to_owned(); n]
}

/// The request's forced tool (`toolConfig.toolChoice.tool.name`).
pub fn forced_tool(r: &Recorded) -> Option<&str> {
    r.body["toolConfig"]["toolChoice"]["tool"]["name"].as_str()
}

/// The request's system prompt.
pub fn system_text(r: &Recorded) -> Option<&str> {
    r.body["system"][0]["text"].as_str()
}

/// The text of the request's last user message.
pub fn user_text(r: &Recorded) -> &str {
    r.body["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["content"][0]["text"].as_str())
        .expect("a user message with a text block")
}

/// The JSON data document a tool-use or JSON-schema request carries.
pub fn data_document(r: &Recorded) -> Value {
    serde_json::from_str(user_text(r)).expect("the user message is one JSON document")
}

/// How many history entries the request's data document carries.
pub fn history_len(r: &Recorded) -> usize {
    data_document(r)["history"]
        .as_array()
        .expect("a history array")
        .len()
}
