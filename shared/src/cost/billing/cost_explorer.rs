//! The billing source on Cost Explorer's `GetCostAndUsage`: Bedrock's unblended cost per UTC
//! day, grouped by usage type, each usage type folded into the model it names.
//!
//! Cost Explorer answers from us-east-1 whatever the caller's region. Its endpoint comes from
//! the SDK configuration like every other client's, so `AWS_ENDPOINT_URL` and the
//! service-specific `AWS_ENDPOINT_URL_COST_EXPLORER` point it at a stand-in. Each request is
//! charged, which is why the reconciliation asks once a day for a few days at once.

use async_trait::async_trait;
use aws_sdk_costexplorer::error::DisplayErrorContext;
use aws_sdk_costexplorer::types::{
    DateInterval, Dimension, DimensionValues, Expression, Granularity, GroupDefinition,
    GroupDefinitionType, ResultByTime,
};
use chrono::NaiveDate;

use super::{BillingError, BillingSource, DailyBill, ModelMap, usd_to_nano};

/// Where Cost Explorer's API lives.
pub const REGION: &str = "us-east-1";

/// The `SERVICE` dimension value of Bedrock's own charges.
pub const BEDROCK_SERVICE: &str = "Amazon Bedrock";

/// The metric asked for: what was charged before any discount is shared out.
const METRIC: &str = "UnblendedCost";

/// Pages followed at most: a few days of daily rows grouped by usage type fit in one or two.
const MAX_PAGES: usize = 50;

/// Bedrock's bill from Cost Explorer.
#[derive(Debug, Clone)]
pub struct CostExplorerBilling {
    client: aws_sdk_costexplorer::Client,
    services: Vec<String>,
    models: ModelMap,
}

impl CostExplorerBilling {
    /// A client on `sdk`'s credentials and endpoints, in [`REGION`], billing the services
    /// named (by default [`BEDROCK_SERVICE`]).
    pub fn new(sdk: &aws_config::SdkConfig, models: ModelMap) -> Self {
        let config = aws_sdk_costexplorer::config::Builder::from(sdk)
            .region(aws_sdk_costexplorer::config::Region::new(REGION))
            .build();
        Self {
            client: aws_sdk_costexplorer::Client::from_conf(config),
            services: vec![BEDROCK_SERVICE.to_owned()],
            models,
        }
    }

    /// The same client from the process environment (credentials, endpoints) and the
    /// built-in model catalog.
    pub async fn from_env() -> Self {
        let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
        Self::new(&sdk, ModelMap::builtin())
    }

    /// Bills these `SERVICE` values instead: models sold through AWS Marketplace are billed
    /// under a service of their own name.
    #[must_use]
    pub fn with_services(mut self, services: Vec<String>) -> Self {
        self.services = services;
        self
    }

    async fn page(
        &self,
        period: &DateInterval,
        token: Option<String>,
    ) -> Result<(Vec<ResultByTime>, Option<String>), BillingError> {
        let filter = Expression::builder()
            .dimensions(
                DimensionValues::builder()
                    .key(Dimension::Service)
                    .set_values(Some(self.services.clone()))
                    .build(),
            )
            .build();
        let output = self
            .client
            .get_cost_and_usage()
            .time_period(period.clone())
            .granularity(Granularity::Daily)
            .metrics(METRIC)
            .filter(filter)
            .group_by(
                GroupDefinition::builder()
                    .r#type(GroupDefinitionType::Dimension)
                    .key("USAGE_TYPE")
                    .build(),
            )
            .set_next_page_token(token)
            .send()
            .await
            .map_err(|e| BillingError::Unavailable(DisplayErrorContext(&e).to_string()))?;
        Ok((
            output.results_by_time().to_vec(),
            output.next_page_token().map(str::to_owned),
        ))
    }
}

#[async_trait]
impl BillingSource for CostExplorerBilling {
    async fn daily_bills(
        &self,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<DailyBill>, BillingError> {
        let period = DateInterval::builder()
            .start(from.format("%Y-%m-%d").to_string())
            .end(to.format("%Y-%m-%d").to_string())
            .build()
            .map_err(|e| BillingError::Malformed(e.to_string()))?;
        let mut results = Vec::new();
        let mut token = None;
        for _ in 0..MAX_PAGES {
            let (page, next) = self.page(&period, token).await?;
            results.extend(page);
            token = next.filter(|t| !t.is_empty());
            if token.is_none() {
                return bills(&results, &self.models);
            }
        }
        Err(BillingError::Malformed(format!(
            "more than {MAX_PAGES} pages of daily costs for {from} to {to}"
        )))
    }
}

/// One bill per day that has any cost group, in day order; days without one are not billed yet.
/// A day split over pages is summed.
pub fn bills(results: &[ResultByTime], models: &ModelMap) -> Result<Vec<DailyBill>, BillingError> {
    let mut by_day = std::collections::BTreeMap::<NaiveDate, DailyBill>::new();
    for result in results {
        if result.groups().is_empty() {
            continue;
        }
        let start = result.time_period().map_or("", DateInterval::start);
        let day = NaiveDate::parse_from_str(start, "%Y-%m-%d")
            .map_err(|_| BillingError::Malformed(format!("a daily result starts on {start:?}")))?;
        let bill = by_day.entry(day).or_insert_with(|| DailyBill {
            day,
            ..DailyBill::default()
        });
        for group in result.groups() {
            let usage_type = group.keys().first().map_or("", String::as_str);
            let nano = group_cost(group.metrics(), usage_type)?;
            bill.add(models.model_of_usage_type(usage_type), nano);
        }
    }
    Ok(by_day.into_values().collect())
}

/// A group's unblended cost in nano-USD; a group without the metric costs nothing.
fn group_cost(
    metrics: Option<&std::collections::HashMap<String, aws_sdk_costexplorer::types::MetricValue>>,
    usage_type: &str,
) -> Result<i64, BillingError> {
    let Some(value) = metrics.and_then(|m| m.get(METRIC)) else {
        return Ok(0);
    };
    match value.unit() {
        None | Some("USD") => {}
        Some(unit) => {
            return Err(BillingError::Malformed(format!(
                "{usage_type} is billed in {unit}, not USD"
            )));
        }
    }
    usd_to_nano(value.amount().unwrap_or("0"))
}

#[cfg(test)]
mod tests {
    use aws_sdk_costexplorer::types::{Group, MetricValue};

    use super::*;

    fn group(usage_type: &str, amount: &str, unit: &str) -> Group {
        Group::builder()
            .keys(usage_type)
            .metrics(
                METRIC,
                MetricValue::builder().amount(amount).unit(unit).build(),
            )
            .build()
    }

    fn result(start: &str, groups: Vec<Group>) -> ResultByTime {
        ResultByTime::builder()
            .time_period(
                DateInterval::builder()
                    .start(start)
                    .end("2099-01-01")
                    .build()
                    .expect("interval"),
            )
            .set_groups(Some(groups))
            .build()
    }

    fn models() -> ModelMap {
        ModelMap::builtin()
    }

    #[test]
    fn usage_type_groups_fold_into_models_and_other_per_day() {
        let results = [
            result(
                "2026-12-01",
                vec![
                    group("USE1-Claude3Haiku-input-tokens", "0.25", "USD"),
                    group("USE1-Claude3Haiku-output-tokens", "1.000000001", "USD"),
                    group("USE1-SomethingNew-input-tokens", "0.5", "USD"),
                ],
            ),
            result("2026-12-02", vec![]),
            result(
                "2026-12-03",
                vec![group("USE1-NovaMicro-input-tokens", "0", "USD")],
            ),
            result(
                "2026-12-01",
                vec![group(
                    "USE1-Claude3Haiku-input-tokens",
                    "0.000000002",
                    "USD",
                )],
            ),
        ];
        let bills = bills(&results, &models()).expect("bills");
        let days: Vec<String> = bills.iter().map(|b| b.day.to_string()).collect();
        assert_eq!(
            days,
            ["2026-12-01", "2026-12-03"],
            "no groups: not billed yet"
        );
        assert_eq!(
            bills[0].by_model["anthropic.claude-3-haiku-20240307-v1:0"],
            1_250_000_003
        );
        assert_eq!(bills[0].other_nano, 500_000_000);
        assert_eq!(bills[1].total_nano(), 0, "billed at zero is billed");
    }

    #[test]
    fn another_currency_or_a_bad_amount_is_malformed() {
        let euro = [result(
            "2026-12-01",
            vec![group("USE1-Claude3Haiku-input-tokens", "1", "EUR")],
        )];
        assert!(matches!(
            bills(&euro, &models()),
            Err(BillingError::Malformed(_))
        ));
        let garbage = [result(
            "2026-12-01",
            vec![group("USE1-Claude3Haiku-input-tokens", "1,5", "USD")],
        )];
        assert!(bills(&garbage, &models()).is_err());
    }
}
