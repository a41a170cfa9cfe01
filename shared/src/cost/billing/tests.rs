use super::*;
use crate::llm::catalog::ModelCatalog;

#[test]
fn decimal_dollars_become_nano_usd_exactly() {
    for (text, nano) in [
        ("0", 0),
        ("1", 1_000_000_000),
        ("12.5", 12_500_000_000),
        ("0.0000071", 7_100),
        ("0.000000001", 1),
        ("123456.123456789", 123_456_123_456_789),
        ("-0.25", -250_000_000),
        ("+3", 3_000_000_000),
        (" 0.1 ", 100_000_000),
        (".5", 500_000_000),
        ("7.", 7_000_000_000),
        ("1.5E-7", 150),
        ("2e3", 2_000_000_000_000),
        ("0.0101516483", 10_151_648),
        ("000000000000000000000000000000000000000001", 1_000_000_000),
    ] {
        assert_eq!(usd_to_nano(text), Ok(nano), "{text}");
    }
}

#[test]
fn digits_past_the_ninth_decimal_round_half_away_from_zero_once() {
    assert_eq!(usd_to_nano("0.0000000014999"), Ok(1));
    assert_eq!(usd_to_nano("0.0000000015"), Ok(2));
    assert_eq!(usd_to_nano("0.0000000004"), Ok(0));
    assert_eq!(usd_to_nano("-0.0000000025"), Ok(-3));
    assert_eq!(usd_to_nano("1E-20"), Ok(0));
    // A float would print 0.1 + 0.2 as 0.30000000000000004 and lose the last nano here.
    assert_eq!(usd_to_nano("9007199.254740993"), Ok(9_007_199_254_740_993));
}

#[test]
fn what_is_not_a_decimal_amount_is_refused_by_name() {
    for text in [
        "", "-", "abc", "1,5", "1.2.3", "1e", "0x10", "--1", "NaN", "1 000",
    ] {
        let error = usd_to_nano(text).expect_err(text);
        assert!(
            matches!(error, BillingError::Malformed(_)),
            "{text}: {error}"
        );
    }
    assert!(usd_to_nano("99999999999").is_err(), "past i64 nano-USD");
    assert!(usd_to_nano("1e400").is_err());
}

fn catalog() -> ModelCatalog {
    ModelCatalog::embedded().expect("the built-in catalog")
}

#[test]
fn usage_types_name_the_catalog_model_they_bill() {
    let map = ModelMap::from_catalog(&catalog());
    for (usage_type, model) in [
        (
            "USE1-Claude3Haiku-input-tokens",
            "anthropic.claude-3-haiku-20240307-v1:0",
        ),
        (
            "USW2-Claude3Haiku-output-tokens",
            "anthropic.claude-3-haiku-20240307-v1:0",
        ),
        (
            "USE1-Claude3.5Sonnet-V2-cache-read-input-tokens",
            "anthropic.claude-3-5-sonnet-20241022-v2:0",
        ),
        (
            "USE1-ClaudeSonnet4.5-input-tokens",
            "anthropic.claude-sonnet-4-5-20250929-v1:0",
        ),
        ("USE1-NovaMicro-output-tokens", "amazon.nova-micro-v1:0"),
        (
            "USE1-TitanTextG1-Premier-input-tokens",
            "amazon.titan-text-premier-v1:0",
        ),
        ("USE1-Jamba1.5Mini-input-tokens", "ai21.jamba-1-5-mini-v1:0"),
    ] {
        assert_eq!(
            map.model_of_usage_type(usage_type),
            Some(model),
            "{usage_type}"
        );
    }
}

#[test]
fn usage_types_that_name_no_known_model_are_left_to_other() {
    let map = ModelMap::from_catalog(&catalog());
    for usage_type in [
        "USE1-Claude2-input-tokens",
        "USE1-input-tokens",
        "USE1-ModelCustomization-storage",
        "",
        "USE1",
    ] {
        assert_eq!(map.model_of_usage_type(usage_type), None, "{usage_type}");
    }
    let mut bill = DailyBill::default();
    bill.add(map.model_of_usage_type("USE1-Claude2-input-tokens"), 5);
    bill.add(map.model_of_usage_type("USE1-NovaLite-input-tokens"), 7);
    bill.add(map.model_of_usage_type("USE1-NovaLite-output-tokens"), 11);
    assert_eq!(bill.other_nano, 5);
    assert_eq!(bill.by_model["amazon.nova-lite-v1:0"], 18);
    assert_eq!(bill.total_nano(), 23);
}

#[test]
fn inference_profiles_count_as_their_base_model_and_shared_names_map_to_nothing() {
    let map = ModelMap::from_catalog(&catalog());
    let bases: BTreeMap<&str, &str> = map.models().collect();
    assert_eq!(
        bases["us.anthropic.claude-haiku-4-5-20251001-v1:0"],
        "anthropic.claude-haiku-4-5-20251001-v1:0"
    );
    assert_eq!(
        bases["global.anthropic.claude-haiku-4-5-20251001-v1:0"],
        "anthropic.claude-haiku-4-5-20251001-v1:0"
    );
    let mut ambiguous = catalog();
    let mut twin = ambiguous.models[0].clone();
    twin.id = "other.twin-v1:0".into();
    twin.base_model_id = "other.twin-v1:0".into();
    let name = twin.name.clone();
    ambiguous.models.push(twin);
    let map = ModelMap::from_catalog(&ambiguous);
    let usage_type = format!("USE1-{}-input-tokens", name.replace(' ', ""));
    assert_eq!(map.model_of_usage_type(&usage_type), None);
}

#[tokio::test]
async fn the_fixed_source_answers_the_days_asked_for_and_counts_requests() {
    let source = FixedBilling::new();
    let day = |d: u32| NaiveDate::from_ymd_opt(2026, 12, d).expect("day");
    for d in [1, 2, 4] {
        source.set(DailyBill {
            day: day(d),
            ..DailyBill::default()
        });
    }
    let bills = source.daily_bills(day(2), day(4)).await.expect("bills");
    assert_eq!(bills.iter().map(|b| b.day).collect::<Vec<_>>(), [day(2)]);
    source.fail_with(Some(BillingError::Unavailable("throttled".into())));
    assert!(source.daily_bills(day(1), day(5)).await.is_err());
    assert_eq!(source.requests(), 2);
}
