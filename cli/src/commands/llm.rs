//! Which engine plays the LLM roles, and the budgets it spends against.

use std::sync::Arc;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use shared::clock::{Clock, SeededRandom, SystemClock};
use shared::cost::{Budgets, NANO_PER_USD};
use shared::engine::LocalEngine;
use shared::llm::LanguageModel;
use shared::llm::bedrock::{BedrockModel, BedrockPorts, BedrockSettings, SdkConverse};
use shared::llm::catalog::ModelCatalog;
use shared::local::LocalHome;
use shared::stages::PipelineConfig;
use shared::store::FullStore;

use crate::args::{EngineArgs, Llm};
use crate::output::bad_input;

/// Parses a dollar amount such as `5`, `0.25` or `12.000001` into nano-USD, without floats.
pub fn parse_usd(text: &str) -> Result<u64, String> {
    let text = text.trim().trim_start_matches('$');
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty() && frac.is_empty() || frac.len() > 9 {
        return Err(format!(
            "{text:?} is not a dollar amount with at most 9 decimals"
        ));
    }
    let digits = |s: &str| s.chars().all(|c| c.is_ascii_digit());
    if !digits(whole) || !digits(frac) {
        return Err(format!("{text:?} is not a dollar amount"));
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|e| format!("{e}"))?
    };
    let frac_nano: u64 = format!("{frac:0<9}").parse().map_err(|e| format!("{e}"))?;
    whole
        .checked_mul(NANO_PER_USD)
        .and_then(|n| n.checked_add(frac_nano))
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// The pipeline configuration with the budgets from the flags.
pub fn pipeline_config(args: &EngineArgs) -> anyhow::Result<PipelineConfig> {
    let usd = |v: &Option<String>, flag: &str| {
        v.as_deref()
            .map(parse_usd)
            .transpose()
            .map_err(|e| bad_input(format!("{flag}: {e}")))
    };
    let defaults = PipelineConfig::default();
    if let Some(t) = args.approval_threshold {
        if !(0.0..=1.0).contains(&t) {
            return Err(bad_input(format!(
                "--approval-threshold {t}: expected a risk between 0 and 1"
            )));
        }
    }
    if args.approval_ttl_seconds == 0 {
        return Err(bad_input("--approval-ttl-seconds must be at least 1"));
    }
    Ok(PipelineConfig {
        approval_threshold: args.approval_threshold,
        approval_ttl_seconds: args.approval_ttl_seconds,
        budgets: Budgets {
            global_daily: usd(&args.daily_budget_usd, "--daily-budget-usd")?,
            global_monthly: usd(&args.monthly_budget_usd, "--monthly-budget-usd")?,
            ..defaults.budgets
        },
        ..defaults
    })
}

/// The local home with its engine. With Bedrock, budgets are counted by the real date, as the
/// adapter spends them, while the stages follow the run's simulated clock.
pub async fn home(
    args: &EngineArgs,
    store: Arc<dyn FullStore>,
    start: chrono::DateTime<chrono::Utc>,
    config: PipelineConfig,
) -> anyhow::Result<LocalHome> {
    let engine = build(args, &store, config.budgets).await?;
    let home = LocalHome::new(store, engine, start, config);
    Ok(if args.llm == Llm::Bedrock {
        home.with_money_clock(Arc::new(SystemClock))
    } else {
        home
    })
}

/// The engine for the LLM roles: the local engine, or Bedrock with the local engine behind it.
/// Bedrock heals in real time and counts money by the real date, whatever the run's clock.
pub async fn build(
    args: &EngineArgs,
    store: &Arc<dyn FullStore>,
    budgets: Budgets,
) -> anyhow::Result<Arc<dyn LanguageModel>> {
    build_at(args, store, budgets, Arc::new(SystemClock)).await
}

/// [`build`], with the ledger's days counted by `clock` (a replay counts them by the recorded
/// times).
pub async fn build_at(
    args: &EngineArgs,
    store: &Arc<dyn FullStore>,
    budgets: Budgets,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<Arc<dyn LanguageModel>> {
    let local = LocalEngine::new(args.seed);
    if args.llm == Llm::Local {
        return Ok(Arc::new(local));
    }
    let catalog = ModelCatalog::load(args.model_catalog.as_deref())
        .map_err(|e| bad_input(format!("model catalog: {e}")))?;
    let config = aws_config::defaults(BehaviorVersion::latest())
        .retry_config(RetryConfig::disabled())
        .load()
        .await;
    let client = aws_sdk_bedrockruntime::Client::new(&config);
    let ports = BedrockPorts {
        ledger: store.clone(),
        control: store.clone(),
        clock,
        sleeper: Arc::new(SystemClock),
        random: Arc::new(SeededRandom::from_os()),
    };
    let mut settings = BedrockSettings::new(catalog, budgets);
    settings.response_cache_ttl =
        chrono::Duration::seconds(i64::from(args.response_cache_ttl_seconds));
    Ok(Arc::new(BedrockModel::new(
        SdkConverse::new(client),
        settings,
        ports,
        local,
    )))
}

#[cfg(test)]
mod tests {
    use super::parse_usd;

    #[test]
    fn dollars_parse_to_nano_without_floats() {
        assert_eq!(parse_usd("5"), Ok(5_000_000_000));
        assert_eq!(parse_usd("$0.25"), Ok(250_000_000));
        assert_eq!(parse_usd("12.000000001"), Ok(12_000_000_001));
        assert_eq!(parse_usd(".5"), Ok(500_000_000));
        for bad in [
            "",
            ".",
            "1.2.3",
            "-1",
            "1e3",
            "0.0000000001",
            "99999999999999999999",
        ] {
            assert!(parse_usd(bad).is_err(), "{bad}");
        }
    }
}
