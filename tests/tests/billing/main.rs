//! The bill, reconciled, over the wire: the Cost Explorer adapter through the real
//! `aws-sdk-costexplorer` client against moto's `GetCostAndUsage` (its answers queued through
//! moto's own API), with a recording hop on loopback that keeps each request as sent; the
//! reconciliation record's conditions on moto's DynamoDB; and `evolve cost --reconcile --store
//! aws --day`, whose Cost Explorer endpoint comes from `AWS_ENDPOINT_URL_COST_EXPLORER`.

mod wire;

use std::process::{Command, Output, Stdio};

use chrono::{DateTime, Duration, NaiveDate, Utc};
use serde_json::{Value, json};
use shared::cost::billing::cost_explorer::CostExplorerBilling;
use shared::cost::billing::{BillingSource, ModelMap};
use shared::cost::reconcile::{Comparison, LedgerDay, Outcome, Reconciliation, compare};
use shared::domain::SystemId;
use shared::store::dynamo::DynamoStore;
use shared::store::{
    CostLedger, EvolutionStore, Reservation, Settlement, StoreError, Transaction, Usage, Write,
};
use tests::moto::{MotoServer, sdk_config, unique_name};

use wire::{Recorder, queue_results};

const HAIKU: &str = "anthropic.claude-3-haiku-20240307-v1:0";
const NOVA_MICRO: &str = "amazon.nova-micro-v1:0";

fn day(text: &str) -> NaiveDate {
    NaiveDate::parse_from_str(text, "%Y-%m-%d").expect("day")
}

/// One day of `GetCostAndUsage`'s answer: `(usage type, dollars)` groups.
fn daily(start: &str, groups: &[(&str, &str)]) -> Value {
    let end = (day(start) + Duration::days(1)).to_string();
    json!({
        "TimePeriod": {"Start": start, "End": end},
        "Total": {},
        "Groups": groups.iter().map(|(usage_type, amount)| json!({
            "Keys": [usage_type],
            "Metrics": {"UnblendedCost": {"Amount": amount, "Unit": "USD"}},
        })).collect::<Vec<_>>(),
        "Estimated": true,
    })
}

/// The test clients' configuration in another region than Cost Explorer's.
async fn elsewhere(url: &str) -> aws_config::SdkConfig {
    sdk_config(url)
        .await
        .to_builder()
        .region(aws_config::Region::new("eu-west-1"))
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cost_explorer_bills_each_day_by_model_over_the_wire() {
    let moto = MotoServer::start();
    let recorder = Recorder::start(moto.url()).await;
    queue_results(
        moto.url(),
        &[
            json!({
                "ResultsByTime": [
                    daily("2026-11-30", &[
                        ("USE1-Claude3Haiku-input-tokens", "0.0123456789"),
                        ("USE1-Claude3Haiku-output-tokens", "1.5"),
                        ("USE1-Claude3.5Sonnet-V2-input-tokens", "2"),
                    ]),
                    daily("2026-12-01", &[]),
                ],
                "NextPageToken": "page-2",
                "GroupDefinitions": [{"Type": "DIMENSION", "Key": "USAGE_TYPE"}],
                "DimensionValueAttributes": [],
            }),
            json!({
                "ResultsByTime": [
                    daily("2026-12-02", &[
                        ("USE1-NovaMicro-output-tokens", "0.000000004"),
                        ("USE1-SomeFutureModel-input-tokens", "3.25"),
                    ]),
                ],
                "GroupDefinitions": [{"Type": "DIMENSION", "Key": "USAGE_TYPE"}],
                "DimensionValueAttributes": [],
            }),
        ],
    )
    .await;
    let source = CostExplorerBilling::new(&elsewhere(&recorder.url()).await, ModelMap::builtin());
    let bills = source
        .daily_bills(day("2026-11-30"), day("2026-12-03"))
        .await
        .expect("bills");

    let days: Vec<String> = bills.iter().map(|b| b.day.to_string()).collect();
    assert_eq!(
        days,
        ["2026-11-30", "2026-12-02"],
        "a day without groups is not billed yet"
    );
    assert_eq!(
        bills[0].by_model[HAIKU], 1_512_345_679,
        "exact to the nano, rounded once"
    );
    assert_eq!(
        bills[0].by_model["anthropic.claude-3-5-sonnet-20241022-v2:0"],
        2_000_000_000
    );
    assert_eq!(bills[1].by_model[NOVA_MICRO], 4);
    assert_eq!(
        bills[1].other_nano, 3_250_000_000,
        "unnamed usage types go to other"
    );

    let requests = recorder.requests();
    assert_eq!(requests.len(), 2, "both pages: {requests:?}");
    for (target, body) in &requests {
        assert_eq!(target, "AWSInsightsIndexService.GetCostAndUsage");
        assert_eq!(body["Granularity"], "DAILY", "{body}");
        assert_eq!(body["Metrics"], json!(["UnblendedCost"]), "{body}");
        assert_eq!(
            body["TimePeriod"],
            json!({"Start": "2026-11-30", "End": "2026-12-03"}),
            "the end is exclusive"
        );
        assert_eq!(
            body["Filter"],
            json!({"Dimensions": {"Key": "SERVICE", "Values": ["Amazon Bedrock"]}})
        );
        assert_eq!(
            body["GroupBy"],
            json!([{"Type": "DIMENSION", "Key": "USAGE_TYPE"}])
        );
    }
    assert!(requests[0].1.get("NextPageToken").is_none());
    assert_eq!(requests[1].1["NextPageToken"], "page-2");
    assert!(
        recorder
            .authorizations()
            .iter()
            .all(|a| a.contains("/us-east-1/ce/aws4_request")),
        "signed for Cost Explorer in us-east-1 whatever the caller's region"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_with_no_cost_data_is_not_billed_yet_and_a_refusal_is_unavailable() {
    let moto = MotoServer::start();
    let source = CostExplorerBilling::new(&sdk_config(moto.url()).await, ModelMap::builtin());
    let bills = source
        .daily_bills(day("2026-12-01"), day("2026-12-04"))
        .await
        .expect("moto answers nothing queued with no results");
    assert!(bills.is_empty());
    drop(moto);
    let error = source
        .daily_bills(day("2026-12-01"), day("2026-12-04"))
        .await
        .expect_err("nobody listens any more");
    assert!(
        matches!(error, shared::cost::billing::BillingError::Unavailable(_)),
        "{error}"
    );
}

async fn dynamo_store(moto: &MotoServer) -> DynamoStore {
    let sdk = sdk_config(moto.url()).await;
    let store = DynamoStore::new(
        aws_sdk_dynamodb::Client::new(&sdk),
        tests::moto::s3_client(&sdk),
        unique_name("bill-table"),
        unique_name("bill-bucket"),
    );
    store.create_resources().await.expect("table and bucket");
    store
}

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .expect("time")
        .with_timezone(&Utc)
}

fn reconciliation(checked: &str, outcome: Outcome) -> Reconciliation {
    Reconciliation {
        day: day("2026-12-04"),
        checked_at: at(checked),
        ledger_nano: 7,
        outcome,
    }
}

fn pending() -> Outcome {
    Outcome::NotYetBilled {
        reason: "no billing data for the day yet".into(),
    }
}

fn compared() -> Outcome {
    let bill = shared::cost::billing::DailyBill {
        day: day("2026-12-04"),
        ..Default::default()
    };
    let ledger = LedgerDay {
        total_nano: 7,
        ..LedgerDay::default()
    };
    let comparison: Comparison = compare(&bill, &ledger, 200);
    Outcome::Compared(comparison)
}

async fn put(store: &DynamoStore, record: Reconciliation) -> Result<(), StoreError> {
    store
        .commit(Transaction {
            writes: vec![Write::PutReconciliation { record }],
            completion: None,
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_writes_a_comparison_once_and_a_pending_day_once_per_run_day() {
    let moto = MotoServer::start();
    let store = dynamo_store(&moto).await;
    put(&store, reconciliation("2026-12-05T06:00:00Z", pending()))
        .await
        .expect("first ask");
    let again = put(&store, reconciliation("2026-12-05T06:01:00Z", pending())).await;
    assert!(
        matches!(again, Err(StoreError::ConditionFailed(_))),
        "{again:?}"
    );
    put(&store, reconciliation("2026-12-06T06:00:00Z", pending()))
        .await
        .expect("the next day's run asks again");
    put(&store, reconciliation("2026-12-06T07:00:00Z", compared()))
        .await
        .expect("a comparison replaces a day not billed yet");
    for outcome in [compared(), pending()] {
        let late = put(&store, reconciliation("2026-12-07T06:00:00Z", outcome)).await;
        assert!(
            matches!(late, Err(StoreError::ConditionFailed(_))),
            "{late:?}"
        );
    }
    let stored = store
        .reconciliations(Some(day("2026-12-04")))
        .await
        .expect("read");
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].checked_at, at("2026-12-06T07:00:00Z"));
    assert!(stored[0].is_compared());
    assert!(
        store
            .reconciliations(Some(day("2026-12-05")))
            .await
            .expect("read")
            .is_empty(),
        "from the day asked for on"
    );
}

/// A settled call of `nano` on `model` at `when`, as the Bedrock adapter leaves one.
async fn spend(store: &DynamoStore, call: &str, model: &str, nano: u64, when: DateTime<Utc>) {
    let system_id = SystemId::parse("svc-bill").expect("id");
    let reservation = Reservation {
        call_id: call.into(),
        system_id: system_id.clone(),
        model_id: model.into(),
        amount_nano: nano,
        at: when,
        limits: Vec::new(),
    };
    store.reserve(&reservation).await.expect("reserve");
    let settlement = Settlement {
        call_id: call.into(),
        system_id,
        model_id: model.into(),
        reserved_nano: nano,
        reserved_at: when,
        actual_nano: nano,
        usage: Usage::default(),
        at: when,
    };
    store.settle(&settlement).await.expect("settle");
}

fn evolve_cost(moto: &MotoServer, store: &DynamoStore, ce: &str, args: &[&str]) -> Output {
    Command::new(tests::bins::workspace_bin("evolve"))
        .args(["cost", "--reconcile"])
        .args(args)
        .env("EVOLVE_STORE", "aws")
        .env("EVOLVE_TABLE_NAME", store.table())
        .env("EVOLVE_BUCKET_NAME", store.bucket())
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL", moto.url())
        .env("AWS_ENDPOINT_URL_COST_EXPLORER", ce)
        .env_remove("AWS_PROFILE")
        .env_remove("EVOLVE_RECONCILE_THRESHOLD_BP")
        .stdin(Stdio::null())
        .output()
        .expect("evolve runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evolve_cost_reconciles_a_day_on_demand_once_and_lists_it() {
    let moto = MotoServer::start();
    let recorder = Recorder::start(moto.url()).await;
    let store = dynamo_store(&moto).await;
    let yesterday = Utc::now().date_naive() - Duration::days(1);
    let noon = yesterday.and_hms_opt(12, 0, 0).expect("noon").and_utc();
    spend(&store, "bill-1", HAIKU, 1_000_000_000, noon).await;
    spend(
        &store,
        "bill-2",
        "us.amazon.nova-micro-v1:0",
        500_000_000,
        noon,
    )
    .await;
    let start = yesterday.to_string();
    queue_results(
        moto.url(),
        &[json!({
            "ResultsByTime": [daily(&start, &[
                ("USE1-Claude3Haiku-input-tokens", "1.2"),
                ("USE1-NovaMicro-input-tokens", "0.5"),
            ])],
            "GroupDefinitions": [{"Type": "DIMENSION", "Key": "USAGE_TYPE"}],
            "DimensionValueAttributes": [],
        })],
    )
    .await;

    let out = evolve_cost(&moto, &store, &recorder.url(), &["--day", &start, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let record: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(record["day"], start.as_str());
    assert_eq!(record["ledger_nano"], 1_500_000_000_u64);
    assert_eq!(record["outcome"]["status"], "compared", "{record}");
    assert_eq!(record["outcome"]["billed_nano"], 1_700_000_000_u64);
    assert_eq!(record["outcome"]["difference_nano"], 200_000_000_u64);
    assert_eq!(record["outcome"]["difference_bp"], 1176);
    assert_eq!(record["outcome"]["exceeded"], true);
    assert_eq!(
        recorder.requests().len(),
        1,
        "the service-specific endpoint was used"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("alert: the bill for"), "{stderr}");

    let stored = store.reconciliations(Some(yesterday)).await.expect("read");
    assert_eq!(stored.len(), 1);
    let alerts = store.list_alerts(None, 10).await.expect("alerts");
    assert!(
        alerts.iter().any(|a| a.kind == "bill_reconciliation"),
        "{alerts:?}"
    );

    let again = evolve_cost(&moto, &store, &recorder.url(), &["--day", &start]);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("was reconciled on"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(
        recorder.requests().len(),
        1,
        "a compared day is not asked again"
    );

    let listed = evolve_cost(&moto, &store, &recorder.url(), &[]);
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(
        text.contains(&format!("{start}  billed $1.700000  ledger $1.500000  difference +$0.200000 (+11.76%)  OVER THRESHOLD")),
        "{text}"
    );
    assert!(text.contains(HAIKU), "{text}");

    let today = Utc::now().date_naive().to_string();
    let refused = evolve_cost(&moto, &store, &recorder.url(), &["--day", &today]);
    assert_eq!(
        refused.status.code(),
        Some(2),
        "a day not over is bad input"
    );
}
