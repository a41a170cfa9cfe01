//! Ledger exactness: whatever the calls went through (retries, repairs, other models, the
//! fallback), the ledger's totals equal an independent recomputation from the usages Bedrock
//! reported and the catalog prices, to the nano-USD, and the answers report the same spend.

use std::collections::BTreeMap;

use proptest::prelude::*;
use shared::cost::{Budgets, LedgerScope, PeriodKey};
use shared::domain::{BudgetPeriod, Role};
use shared::llm::LanguageModel;
use shared::store::CostLedger;
use tests::bedrock_stub::{Reply, Usage as StubUsage};

use crate::fixture::{A, B, C, Fixture, Rates, Spec, catalog, catalog_of, cost_of, spec};
use crate::requests::{analysis_json, analyze_req, ok_from, reply_from};

/// What the stub answers one request with.
#[derive(Debug, Clone)]
enum Step {
    /// A valid answer in the receiving model's format.
    Valid(StubUsage),
    /// An answer through the wrong tool (paid for, then repaired).
    WrongTool(StubUsage),
    /// An answer cut at the output limit (paid for, then repaired).
    Truncated(StubUsage),
    Throttled,
    NotFound,
    Malformed,
}

fn arb_usage() -> impl Strategy<Value = StubUsage> {
    let tokens = prop_oneof![0_u64..=50, 0_u64..=200_000];
    (tokens.clone(), tokens.clone(), tokens.clone(), tokens)
        .prop_map(|(i, o, r, w)| StubUsage::new(i, o).with_cache(r, w))
}

fn arb_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => arb_usage().prop_map(Step::Valid),
        1 => arb_usage().prop_map(Step::WrongTool),
        1 => arb_usage().prop_map(Step::Truncated),
        2 => Just(Step::Throttled),
        1 => Just(Step::NotFound),
        1 => Just(Step::Malformed),
    ]
}

fn arb_rates() -> impl Strategy<Value = Rates> {
    // Odd rates, so per-token costs are fractions of a nano-USD and rounding matters.
    let rate = 1_u64..=20_000_000_000;
    (rate.clone(), rate.clone(), rate.clone(), rate.clone(), rate).prop_map(
        |(input, output, cache_read, cache_write_5m, cache_write_1h)| Rates {
            input,
            output,
            cache_read,
            cache_write_5m,
            cache_write_1h,
        },
    )
}

/// The reply for `step` as model `model` would give it (scripted per model, so the receiving
/// model is known).
fn reply(model: &str, step: &Step) -> Reply {
    match step {
        Step::Valid(u) => ok_from(model, Role::Analyze).with_usage(*u),
        Step::WrongTool(u) => Reply::tool("submit_decision", analysis_json()).with_usage(*u),
        Step::Truncated(u) => {
            Reply::max_tokens("{\"current_state_assessment\": \"cut").with_usage(*u)
        }
        Step::Throttled => Reply::throttled(),
        Step::NotFound => Reply::not_found(),
        Step::Malformed => Reply::raw(200, "{\"output\": "),
    }
}

/// Runs the calls, then checks every ledger counter against the recomputation.
async fn run_case(rates: [Rates; 3], calls: Vec<Vec<(usize, Step)>>) -> Result<(), TestCaseError> {
    let ids = [A, B, C];
    let specs: Vec<Spec> = ids
        .iter()
        .zip(rates)
        .map(|(id, r)| Spec {
            rates: r,
            ..spec(id)
        })
        .collect();
    let f = Fixture::with(catalog_of(&specs), Budgets::default(), |_| {}).await;
    let mut reported: u128 = 0;
    for (i, script) in calls.iter().enumerate() {
        for (model, step) in script {
            f.stub.push_for(ids[*model], reply(ids[*model], step));
        }
        let answer = f
            .model
            .analyze(&analyze_req(&format!("env-ledger-{i}")))
            .await
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        reported += u128::from(answer.cost_nano_usd);
    }

    // The recomputation: every answered request at its model's rates, one rounding each.
    let mut per_model: BTreeMap<String, i128> = BTreeMap::new();
    for r in f.requests() {
        let index = ids
            .iter()
            .position(|id| *id == r.model_id)
            .ok_or_else(|| TestCaseError::fail(format!("unknown model {}", r.model_id)))?;
        let cost = r.usage.map_or(0, |u| cost_of(&specs[index].rates, &u));
        *per_model.entry(r.model_id.clone()).or_default() += cost;
    }
    let expected_total: i128 = per_model.values().sum();

    let day = PeriodKey::of(BudgetPeriod::Day, f.now());
    let month = PeriodKey::of(BudgetPeriod::Month, f.now());
    for period in [day, month] {
        let total = f
            .store
            .totals(period, &LedgerScope::Total)
            .await
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(i128::from(total.spent_nano), expected_total);
        prop_assert_eq!(total.reserved_nano, 0, "every reservation was settled");
        prop_assert_eq!(total.calls as usize, f.stub.request_count());
        let system = f
            .store
            .totals(period, &LedgerScope::System(crate::requests::system_id()))
            .await
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(i128::from(system.spent_nano), expected_total);
        for id in ids {
            let model = f
                .store
                .totals(period, &LedgerScope::Model(id.to_owned()))
                .await
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let expected = per_model.get(id).copied().unwrap_or(0);
            prop_assert_eq!(i128::from(model.spent_nano), expected, "model {}", id);
            prop_assert_eq!(model.reserved_nano, 0);
        }
    }
    prop_assert_eq!(
        i128::try_from(reported).unwrap_or(i128::MAX),
        expected_total
    );
    let entries = f
        .store
        .entries(None)
        .await
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(entries.len(), f.stub.request_count());
    prop_assert_eq!(
        entries
            .iter()
            .map(|e| i128::from(e.cost_nano))
            .sum::<i128>(),
        expected_total
    );
    Ok(())
}

fn arb_calls() -> impl Strategy<Value = Vec<Vec<(usize, Step)>>> {
    prop::collection::vec(prop::collection::vec((0_usize..3, arb_step()), 0..8), 1..4)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn ledger_totals_equal_an_independent_recomputation_to_the_nano_usd(
        rates in [arb_rates(), arb_rates(), arb_rates()],
        calls in arb_calls(),
    ) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        runtime.block_on(run_case(rates, calls))?;
    }
}

#[tokio::test]
async fn a_redelivered_envelope_that_pays_again_is_counted_again() {
    let f = Fixture::new(&[A, B, C]).await;
    let per_model = f.settings.retry.retries_per_model as usize + 1;
    // First delivery: nothing answers, the local engine does.
    for _ in 0..3 * per_model {
        f.stub.push(Reply::throttled());
    }
    let first = f
        .model
        .analyze(&analyze_req("env-redelivered"))
        .await
        .expect("an answer");
    assert!(first.fallback.is_some());
    assert_eq!(first.cost_nano_usd, 0);

    // The same envelope again, after the circuits cooled down: this time A answers and is paid.
    f.clock.advance(chrono::Duration::minutes(5));
    let usage = StubUsage::new(4_000, 900).with_cache(100, 50);
    f.stub.push_for(
        A,
        reply_from(A, Role::Analyze, &analysis_json()).with_usage(usage),
    );
    let second = f
        .model
        .analyze(&analyze_req("env-redelivered"))
        .await
        .expect("an answer");
    assert_eq!(second.model_id, A);
    let cost = u64::try_from(cost_of(&spec(A).rates, &usage)).expect("fits");
    assert_eq!(second.cost_nano_usd, cost);

    let total = f.today(&LedgerScope::Total).await;
    assert_eq!(
        total.spent_nano, cost,
        "the second payment is in the ledger"
    );
    assert_eq!(total.reserved_nano, 0, "no reservation is left held");
    assert_eq!(total.calls as usize, f.stub.request_count());
}

#[tokio::test]
async fn cache_tokens_are_billed_at_their_own_rates() {
    let f = Fixture::with(catalog(&[A]), Budgets::default(), |_| {}).await;
    // 1 000 of each kind on A: $1, $2, $0.10 and $1.25 per million tokens.
    let usage = StubUsage::new(1_000, 1_000).with_cache(1_000, 1_000);
    f.stub
        .push(Reply::tool("submit_analysis", analysis_json()).with_usage(usage));
    let answer = f
        .model
        .analyze(&analyze_req("env-cache"))
        .await
        .expect("an answer");
    assert_eq!(
        answer.cost_nano_usd,
        1_000_000 + 2_000_000 + 100_000 + 1_250_000
    );
    assert_eq!(
        f.today(&LedgerScope::Model(A.to_owned())).await.spent_nano,
        answer.cost_nano_usd
    );
}
