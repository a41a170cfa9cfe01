use super::*;

const HAIKU: &str = "anthropic.claude-3-haiku-20240307-v1:0";
const NOVA: &str = "amazon.nova-micro-v1:0";

fn day(d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 12, d).expect("day")
}

fn bill(models: &[(&str, i64)], other: i64) -> DailyBill {
    DailyBill {
        day: day(4),
        by_model: models.iter().map(|(m, n)| ((*m).to_owned(), *n)).collect(),
        other_nano: other,
    }
}

fn ledger(models: &[(&str, u64)], total: u64) -> LedgerDay {
    LedgerDay {
        total_nano: total,
        by_model: models.iter().map(|(m, n)| ((*m).to_owned(), *n)).collect(),
    }
}

fn record(d: u32, checked: &str, compared: bool) -> Reconciliation {
    let outcome = if compared {
        Outcome::Compared(compare(&bill(&[], 0), &LedgerDay::default(), 200))
    } else {
        Outcome::NotYetBilled {
            reason: "no billing data yet".into(),
        }
    };
    Reconciliation {
        day: day(d),
        checked_at: DateTime::parse_from_rfc3339(checked)
            .expect("time")
            .with_timezone(&Utc),
        ledger_nano: 0,
        outcome,
    }
}

#[test]
fn a_difference_within_the_threshold_is_recorded_without_exceeding_it() {
    // Billed $1.00, ledger $0.98: 2.00% exactly is not over 2%.
    let c = compare(
        &bill(&[(HAIKU, 1_000_000_000)], 0),
        &ledger(&[(HAIKU, 980_000_000)], 980_000_000),
        200,
    );
    assert_eq!(c.difference_nano, 20_000_000);
    assert_eq!(c.difference_bp, Some(200));
    assert!(!c.exceeded);
    assert_eq!(c.models.len(), 1);
    assert_eq!(c.models[0].difference_nano, 20_000_000);
}

#[test]
fn a_difference_past_the_threshold_exceeds_it_either_way() {
    let over = compare(
        &bill(&[(HAIKU, 1_000_000_000)], 0),
        &ledger(&[(HAIKU, 979_999_999)], 979_999_999),
        200,
    );
    assert!(over.exceeded, "one nano past 2%");
    assert_eq!(
        over.difference_bp,
        Some(200),
        "basis points round toward zero"
    );
    let under = compare(
        &bill(&[(HAIKU, 1_000_000_000)], 0),
        &ledger(&[(HAIKU, 1_100_000_000)], 1_100_000_000),
        200,
    );
    assert!(
        under.exceeded,
        "the ledger counting more is a difference too"
    );
    assert_eq!(under.difference_nano, -100_000_000);
    assert_eq!(under.difference_bp, Some(-1_000));
}

#[test]
fn nothing_billed_against_any_ledger_spend_exceeds_every_threshold() {
    let c = compare(&bill(&[], 0), &ledger(&[], 1), 10_000);
    assert_eq!(c.difference_bp, None);
    assert!(c.exceeded);
    let quiet = compare(&bill(&[], 0), &LedgerDay::default(), 0);
    assert!(!quiet.exceeded);
    assert!(quiet.models.is_empty());
}

#[test]
fn per_model_rows_cover_both_sides_and_other_takes_the_rest() {
    let c = compare(
        &bill(&[(HAIKU, 600), (NOVA, 300)], 50),
        &ledger(&[(HAIKU, 610)], 700),
        200,
    );
    let rows: Vec<(&str, i64, u64, i64)> = c
        .models
        .iter()
        .map(|r| {
            (
                r.model.as_str(),
                r.billed_nano,
                r.ledger_nano,
                r.difference_nano,
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            (NOVA, 300, 0, 300),
            (HAIKU, 600, 610, -10),
            (OTHER, 50, 90, -40)
        ]
    );
    assert_eq!(c.billed_nano, 950);
    assert_eq!(c.difference_nano, 250);
}

#[test]
fn a_run_asks_for_the_days_of_its_lookback_without_a_comparison_once_a_day() {
    assert_eq!(days_due(day(5), &[]), [day(2), day(3), day(4)]);
    let recorded = [
        record(2, "2026-12-04T06:00:00Z", true),
        record(3, "2026-12-04T06:00:00Z", false),
        record(4, "2026-12-05T06:00:00Z", false),
    ];
    assert_eq!(days_due(day(5), &recorded), [day(3)], "4 was asked today");
    assert_eq!(days_due(day(6), &recorded), [day(3), day(4), day(5)]);
    assert!(last_run_for(day(2), day(5)));
    assert!(!last_run_for(day(3), day(5)));
}

#[test]
fn a_comparison_is_written_once_and_a_pending_day_once_per_run_day() {
    let pending = record(4, "2026-12-05T06:00:00Z", false);
    let pending_same_day = record(4, "2026-12-05T07:00:00Z", false);
    let pending_next_day = record(4, "2026-12-06T06:00:00Z", false);
    let compared_same_day = record(4, "2026-12-05T07:00:00Z", true);
    assert_eq!(pending.refused_over(None), None);
    assert!(pending_same_day.refused_over(Some(&pending)).is_some());
    assert_eq!(pending_next_day.refused_over(Some(&pending)), None);
    assert_eq!(compared_same_day.refused_over(Some(&pending)), None);
    let again = record(4, "2026-12-07T06:00:00Z", true);
    assert!(again.refused_over(Some(&compared_same_day)).is_some());
    assert!(
        pending_next_day
            .refused_over(Some(&compared_same_day))
            .is_some()
    );
}

#[test]
fn records_round_trip_as_tagged_json() {
    let r = record(4, "2026-12-05T06:00:00Z", false);
    let json = serde_json::to_value(&r).expect("json");
    assert_eq!(json["outcome"]["status"], "not_yet_billed");
    let back: Reconciliation = serde_json::from_value(json).expect("back");
    assert_eq!(back, r);
    assert_eq!(format_billed(-1_200_000), "-$0.001200");
    assert_eq!(format_billed(1_005_000_000), "$1.005000");
    assert_eq!(format_difference(100_000_000), "+$0.100000");
    assert_eq!(format_difference(0), "$0.000000");
    assert_eq!(format_bp(-235), "-2.35%");
    assert_eq!(format_bp(7), "+0.07%");
}
