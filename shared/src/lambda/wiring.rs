//! Cold-start wiring shared by the function binaries: the store, the pipeline's ports around
//! it, the engine for the LLM roles, and the function's bus and dead-letter queues. The binaries
//! build the SDK clients once and hand them in.

use std::sync::Arc;

use super::config::{Common, ConfigError, FunctionConfig};
use super::{FunctionDeps, QueueSources};
use crate::bus::aws::AwsBus;
use crate::clock::SystemClock;
use crate::consumer::SqsDeadLetters;
use crate::engine::LocalEngine;
use crate::llm::LanguageModel;
use crate::stages::{Deps, PipelineConfig};
use crate::store::CostLedger;
use crate::store::dynamo::DynamoStore;
use crate::store::{ControlState, EvolutionStore};

/// The local engine's seed on Lambda: fixed, so a redelivered envelope replays the same answer.
pub const LOCAL_ENGINE_SEED: u64 = 0;

/// The DynamoDB/S3 store on the function's table and bucket.
pub fn dynamo_store(
    common: &Common,
    dynamo: aws_sdk_dynamodb::Client,
    s3: aws_sdk_s3::Client,
) -> Arc<DynamoStore> {
    Arc::new(DynamoStore::new(
        dynamo,
        s3,
        common.table_name.clone(),
        common.bucket_name.clone(),
    ))
}

/// The pipeline's ports around a store that is also the ledger and the control state, on the
/// wall clock.
pub fn deps<S>(store: Arc<S>, llm: Arc<dyn LanguageModel>, config: PipelineConfig) -> Deps
where
    S: EvolutionStore + ControlState + CostLedger + 'static,
{
    Deps {
        store: store.clone(),
        control: store.clone(),
        ledger: store,
        llm,
        clock: Arc::new(SystemClock),
        money_clock: Arc::new(SystemClock),
        config,
    }
}

/// The engine of functions that never call an LLM (snapshot, cost-guard).
pub fn no_llm() -> Arc<dyn LanguageModel> {
    Arc::new(LocalEngine::new(LOCAL_ENGINE_SEED))
}

/// The engine for the LLM roles: Bedrock with the local engine behind it, or the local engine
/// alone. The SDK's own retries are turned off on `bedrock`: the model heals (retries, next
/// model, fallback) within its own time budget.
#[cfg(feature = "bedrock")]
pub fn language_model<S>(
    settings: &super::config::LlmSettings,
    budgets: crate::cost::Budgets,
    bedrock: aws_sdk_bedrockruntime::config::Builder,
    store: Arc<S>,
) -> Result<Arc<dyn LanguageModel>, super::config::ConfigError>
where
    S: ControlState + CostLedger + 'static,
{
    use super::config::{ConfigError, LlmEngine, MODEL_CATALOG};
    use crate::clock::SeededRandom;
    use crate::llm::bedrock::{BedrockModel, BedrockPorts, BedrockSettings, SdkConverse};
    use crate::llm::catalog::ModelCatalog;
    let local = LocalEngine::new(LOCAL_ENGINE_SEED);
    if settings.engine == LlmEngine::Local {
        return Ok(Arc::new(local));
    }
    let catalog = ModelCatalog::load(settings.model_catalog.as_deref()).map_err(|e| {
        ConfigError::Invalid {
            name: MODEL_CATALOG,
            reason: e.to_string(),
        }
    })?;
    let ports = BedrockPorts {
        ledger: store.clone(),
        control: store,
        clock: Arc::new(SystemClock),
        sleeper: Arc::new(SystemClock),
        random: Arc::new(SeededRandom::from_os()),
    };
    let bedrock = bedrock
        .retry_config(aws_sdk_bedrockruntime::config::retry::RetryConfig::disabled())
        .build();
    let mut model_settings = BedrockSettings::new(catalog, budgets);
    if let Some(seconds) = settings.response_cache_ttl_seconds {
        model_settings.response_cache_ttl = chrono::Duration::seconds(i64::from(seconds));
    }
    Ok(Arc::new(BedrockModel::new(
        SdkConverse::new(aws_sdk_bedrockruntime::Client::from_conf(bedrock)),
        model_settings,
        ports,
        local,
    )))
}

/// A function's handler dependencies: the pipeline's ports, the bus on the function's queues and
/// topics, and the dead-letter queues of the queues it consumes.
pub fn function(
    name: &'static str,
    common: &Common,
    sources: QueueSources,
    pipeline: Deps,
    sqs: aws_sdk_sqs::Client,
    sns: aws_sdk_sns::Client,
) -> FunctionDeps {
    FunctionDeps {
        pipeline,
        bus: Arc::new(AwsBus::new(sqs.clone(), sns, common.destinations.clone())),
        dead_letters: Arc::new(SqsDeadLetters::new(sqs, &common.dead_letters)),
        sources,
        function: name,
        traces: None,
    }
}

/// A pipeline function wired from its environment at cold start: its configuration, the SDK
/// clients, the DynamoDB/S3 store, the engine (Bedrock or local for a stage that calls an LLM,
/// the local engine otherwise), its bus and its dead-letter queues. Every function binary and
/// nothing else differs but for the configuration type.
pub async fn from_env<C: FunctionConfig>() -> Result<FunctionDeps, ConfigError> {
    let config = C::from_env()?;
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let dynamo = aws_sdk_dynamodb::Client::new(&sdk);
    let store = dynamo_store(config.common(), dynamo, aws_sdk_s3::Client::new(&sdk));
    let llm = match config.llm() {
        None => no_llm(),
        #[cfg(feature = "bedrock")]
        Some((settings, budgets)) => {
            let bedrock = aws_sdk_bedrockruntime::config::Builder::from(&sdk);
            language_model(settings, budgets, bedrock, store.clone())?
        }
        #[cfg(not(feature = "bedrock"))]
        Some(_) => {
            return Err(ConfigError::Invalid {
                name: super::config::LLM,
                reason: "this function is built without the Bedrock adapter".into(),
            });
        }
    };
    let pipeline = deps(store, llm, config.pipeline());
    let deps = function(
        C::consumer().function,
        config.common(),
        config.sources(),
        pipeline,
        aws_sdk_sqs::Client::new(&sdk),
        aws_sdk_sns::Client::new(&sdk),
    );
    // docs/architecture.md, "Tracing": the spans go out when an OTLP endpoint is configured.
    #[cfg(feature = "otlp")]
    let deps = FunctionDeps {
        traces: crate::telemetry::http::from_env(&format!("evolve-{}", deps.function)),
        ..deps
    };
    Ok(deps)
}
