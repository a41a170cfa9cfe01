//! The cost ledger: reservations against budgets, settlements counted once.

use chrono::{DateTime, Utc};
use shared::cost::{BudgetLimit, LedgerScope, PeriodKey, Totals};
use shared::domain::{BudgetPeriod, BudgetScope, SystemId};
use shared::store::Usage;
use shared::store::{
    Hold, RESERVATION_HOLD, ReclaimOutcome, Reservation, ReserveOutcome, SettleOutcome, Settlement,
};

use crate::fixtures::{sys, t};
use crate::harness::{Harness, Store};

/// Midnight UTC after `t(0)`: the next day.
const NEXT_DAY: i64 = 12 * 3_600;
/// 2026-12-01T00:00:00Z: the next month.
const NEXT_MONTH: i64 = 3 * 86_400 + NEXT_DAY;

fn limit(scope: BudgetScope, period: BudgetPeriod, limit_nano: u64) -> BudgetLimit {
    BudgetLimit {
        scope,
        period,
        limit_nano,
    }
}

fn global_daily(limit_nano: u64) -> Vec<BudgetLimit> {
    vec![limit(BudgetScope::Global, BudgetPeriod::Day, limit_nano)]
}

fn reservation(
    call_id: &str,
    system: &SystemId,
    model: &str,
    amount_nano: u64,
    at: DateTime<Utc>,
    limits: Vec<BudgetLimit>,
) -> Reservation {
    Reservation {
        call_id: call_id.to_owned(),
        system_id: system.clone(),
        model_id: model.to_owned(),
        amount_nano,
        at,
        limits,
    }
}

fn settlement(held: &Reservation, actual_nano: u64, at: DateTime<Utc>) -> Settlement {
    Settlement {
        call_id: held.call_id.clone(),
        system_id: held.system_id.clone(),
        model_id: held.model_id.clone(),
        reserved_nano: held.amount_nano,
        reserved_at: held.at,
        actual_nano,
        usage: Usage {
            input_tokens: 1_000,
            output_tokens: 100,
            cache_read_tokens: 0,
            cache_write_tokens: 0,
        },
        at,
    }
}

fn totals(spent_nano: u64, reserved_nano: u64, calls: u64) -> Totals {
    Totals {
        spent_nano,
        reserved_nano,
        calls,
    }
}

fn day(secs: i64) -> PeriodKey {
    PeriodKey::of(BudgetPeriod::Day, t(secs))
}

fn month(secs: i64) -> PeriodKey {
    PeriodKey::of(BudgetPeriod::Month, t(secs))
}

async fn read(store: &dyn Store, period: PeriodKey, scope: &LedgerScope) -> Totals {
    store.totals(period, scope).await.expect("totals")
}

/// The six counters of one call (total, system, model in its day and month) all equal `expected`.
async fn assert_call_counters(
    store: &dyn Store,
    system: &SystemId,
    model: &str,
    secs: i64,
    expected: Totals,
) {
    for period in [day(secs), month(secs)] {
        for scope in [
            LedgerScope::Total,
            LedgerScope::System(system.clone()),
            LedgerScope::Model(model.to_owned()),
        ] {
            assert_eq!(
                read(store, period, &scope).await,
                expected,
                "{} {}",
                period.key(),
                scope.key()
            );
        }
    }
}

async fn reserve(store: &dyn Store, held: &Reservation) -> ReserveOutcome {
    store.reserve(held).await.expect("reserve")
}

pub async fn reservation_over_a_limit_is_refused_and_changes_nothing(h: &Harness) {
    let store = h.store.as_ref();
    let id = sys("alpha");
    let first = reservation("call-1", &id, "model-a", 60, t(0), global_daily(100));
    assert_eq!(reserve(store, &first).await, ReserveOutcome::Reserved);
    let second = reservation("call-2", &id, "model-b", 41, t(1), global_daily(100));
    assert_eq!(
        reserve(store, &second).await,
        ReserveOutcome::Refused {
            scope: BudgetScope::Global,
            period: BudgetPeriod::Day,
            committed_nano: 60,
            limit_nano: 100,
        }
    );
    assert_call_counters(store, &id, "model-a", 0, totals(0, 60, 0)).await;
    assert_eq!(
        read(store, day(0), &LedgerScope::Model("model-b".into())).await,
        Totals::default(),
        "a refused reservation holds nothing"
    );
}

pub async fn reservation_up_to_the_limit_exactly_fits(h: &Harness) {
    let store = h.store.as_ref();
    let id = sys("alpha");
    for (call, amount) in [("call-1", 60), ("call-2", 40)] {
        let held = reservation(call, &id, "model-a", amount, t(0), global_daily(100));
        assert_eq!(reserve(store, &held).await, ReserveOutcome::Reserved);
    }
    let over = reservation("call-3", &id, "model-a", 1, t(0), global_daily(100));
    assert!(matches!(
        reserve(store, &over).await,
        ReserveOutcome::Refused {
            committed_nano: 100,
            ..
        }
    ));
    let huge = reservation(
        "call-4",
        &id,
        "model-a",
        u64::MAX,
        t(0),
        global_daily(u64::MAX),
    );
    assert!(
        matches!(reserve(store, &huge).await, ReserveOutcome::Refused { .. }),
        "an amount that overflows the counter never fits"
    );
}

pub async fn the_first_exceeded_limit_is_reported(h: &Harness) {
    let store = h.store.as_ref();
    let id = sys("alpha");
    let limits = vec![
        limit(BudgetScope::Global, BudgetPeriod::Month, 1_000),
        limit(BudgetScope::System, BudgetPeriod::Day, 50),
        limit(BudgetScope::Global, BudgetPeriod::Day, 40),
    ];
    let held = reservation("call-1", &id, "model-a", 60, t(0), limits);
    assert_eq!(
        reserve(store, &held).await,
        ReserveOutcome::Refused {
            scope: BudgetScope::System,
            period: BudgetPeriod::Day,
            committed_nano: 0,
            limit_nano: 50,
        }
    );
}

pub async fn system_limits_count_only_that_system(h: &Harness) {
    let store = h.store.as_ref();
    let (alpha, bravo) = (sys("alpha"), sys("bravo"));
    let limits = vec![
        limit(BudgetScope::System, BudgetPeriod::Day, 100),
        limit(BudgetScope::Global, BudgetPeriod::Month, 150),
    ];
    let a = reservation("call-a", &alpha, "model-a", 80, t(0), limits.clone());
    assert_eq!(reserve(store, &a).await, ReserveOutcome::Reserved);
    let b = reservation("call-b", &bravo, "model-a", 70, t(0), limits.clone());
    assert_eq!(reserve(store, &b).await, ReserveOutcome::Reserved);
    let b2 = reservation("call-b2", &bravo, "model-a", 1, t(0), limits);
    assert_eq!(
        reserve(store, &b2).await,
        ReserveOutcome::Refused {
            scope: BudgetScope::Global,
            period: BudgetPeriod::Month,
            committed_nano: 150,
            limit_nano: 150,
        }
    );
}

pub async fn settlement_moves_reserved_to_spent_exactly(h: &Harness) {
    let store = h.store.as_ref();
    let id = sys("alpha");
    let held = reservation("call-1", &id, "model-a", 100, t(0), global_daily(1_000));
    assert_eq!(reserve(store, &held).await, ReserveOutcome::Reserved);
    assert_call_counters(store, &id, "model-a", 0, totals(0, 100, 0)).await;
    assert_eq!(
        store
            .settle(&settlement(&held, 37, t(5)))
            .await
            .expect("settle"),
        SettleOutcome::Settled
    );
    assert_call_counters(store, &id, "model-a", 0, totals(37, 0, 1)).await;
    let entries = store.entries(None).await.expect("entries");
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].call_id, "call-1");
    assert_eq!(entries[0].cost_nano, 37);
    assert_eq!(entries[0].at, t(5));
    assert_eq!(entries[0].usage.input_tokens, 1_000);
}

pub async fn repeated_settlement_is_counted_once(h: &Harness) {
    let store = h.store.as_ref();
    let id = sys("alpha");
    let held = reservation("call-1", &id, "model-a", 100, t(0), global_daily(1_000));
    assert_eq!(reserve(store, &held).await, ReserveOutcome::Reserved);
    let settled = settlement(&held, 37, t(5));
    assert_eq!(
        store.settle(&settled).await.expect("settle"),
        SettleOutcome::Settled
    );
    for _ in 0..2 {
        assert_eq!(
            store.settle(&settled).await.expect("settle again"),
            SettleOutcome::AlreadySettled
        );
    }
    assert_call_counters(store, &id, "model-a", 0, totals(37, 0, 1)).await;
    assert_eq!(store.entries(None).await.expect("entries").len(), 1);
}

pub async fn spending_counts_against_later_reservations(h: &Harness) {
    let store = h.store.as_ref();
    let id = sys("alpha");
    let held = reservation("call-1", &id, "model-a", 50, t(0), global_daily(100));
    assert_eq!(reserve(store, &held).await, ReserveOutcome::Reserved);
    store
        .settle(&settlement(&held, 37, t(1)))
        .await
        .expect("settle");
    let over = reservation("call-2", &id, "model-a", 64, t(2), global_daily(100));
    assert!(matches!(
        reserve(store, &over).await,
        ReserveOutcome::Refused {
            committed_nano: 37,
            ..
        }
    ));
    let fits = reservation("call-3", &id, "model-a", 63, t(2), global_daily(100));
    assert_eq!(reserve(store, &fits).await, ReserveOutcome::Reserved);
}

pub async fn totals_are_kept_per_scope_and_period(h: &Harness) {
    let store = h.store.as_ref();
    let (alpha, bravo) = (sys("alpha"), sys("bravo"));
    let calls = [
        ("c1", &alpha, "model-a", 10, 0),
        ("c2", &alpha, "model-b", 20, 1),
        ("c3", &bravo, "model-a", 40, 2),
        ("c4", &alpha, "model-a", 80, NEXT_DAY),
        ("c5", &bravo, "model-b", 160, NEXT_MONTH),
    ];
    for (call, system, model, cost, secs) in calls {
        let held = reservation(call, system, model, cost * 2, t(secs), Vec::new());
        assert_eq!(reserve(store, &held).await, ReserveOutcome::Reserved);
        store
            .settle(&settlement(&held, cost, t(secs + 1)))
            .await
            .expect("settle");
    }
    let expect = [
        (day(0), LedgerScope::Total, totals(70, 0, 3)),
        (day(0), LedgerScope::System(alpha.clone()), totals(30, 0, 2)),
        (day(0), LedgerScope::System(bravo.clone()), totals(40, 0, 1)),
        (
            day(0),
            LedgerScope::Model("model-a".into()),
            totals(50, 0, 2),
        ),
        (
            day(0),
            LedgerScope::Model("model-b".into()),
            totals(20, 0, 1),
        ),
        (day(NEXT_DAY), LedgerScope::Total, totals(80, 0, 1)),
        (
            day(NEXT_DAY),
            LedgerScope::System(bravo.clone()),
            Totals::default(),
        ),
        (month(0), LedgerScope::Total, totals(150, 0, 4)),
        (
            month(0),
            LedgerScope::System(alpha.clone()),
            totals(110, 0, 3),
        ),
        (
            month(0),
            LedgerScope::Model("model-a".into()),
            totals(130, 0, 3),
        ),
        (month(NEXT_MONTH), LedgerScope::Total, totals(160, 0, 1)),
        (
            month(NEXT_MONTH),
            LedgerScope::System(alpha),
            Totals::default(),
        ),
        (
            month(NEXT_MONTH),
            LedgerScope::Model("model-b".into()),
            totals(160, 0, 1),
        ),
    ];
    for (period, scope, want) in expect {
        assert_eq!(
            read(store, period, &scope).await,
            want,
            "{} {}",
            period.key(),
            scope.key()
        );
    }
}

pub async fn settlement_releases_the_counters_of_the_reservation_time(h: &Harness) {
    let store = h.store.as_ref();
    let id = sys("alpha");
    let held = reservation("call-1", &id, "model-a", 100, t(NEXT_DAY - 1), Vec::new());
    assert_eq!(reserve(store, &held).await, ReserveOutcome::Reserved);
    store
        .settle(&settlement(&held, 30, t(NEXT_DAY + 1)))
        .await
        .expect("settle after midnight");
    assert_call_counters(store, &id, "model-a", NEXT_DAY - 1, totals(30, 0, 1)).await;
    assert_eq!(
        read(store, day(NEXT_DAY), &LedgerScope::Total).await,
        Totals::default()
    );
    assert_eq!(
        store.entries(None).await.expect("entries")[0].at,
        t(NEXT_DAY + 1)
    );
}

pub async fn ledger_entries_list_in_time_order_since(h: &Harness) {
    let store = h.store.as_ref();
    let id = sys("alpha");
    for (call, secs) in [("c3", 30), ("c1", 10), ("c2b", 20), ("c2a", 20)] {
        let held = reservation(call, &id, "model-a", 5, t(0), Vec::new());
        assert_eq!(reserve(store, &held).await, ReserveOutcome::Reserved);
        store
            .settle(&settlement(&held, 5, t(secs)))
            .await
            .expect("settle");
    }
    let ids = |since| async move {
        store
            .entries(since)
            .await
            .expect("entries")
            .into_iter()
            .map(|e| e.call_id)
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(None).await, ["c1", "c2a", "c2b", "c3"]);
    assert_eq!(ids(Some(t(20))).await, ["c2a", "c2b", "c3"]);
    assert!(ids(Some(t(31))).await.is_empty());
}

pub async fn concurrent_reservations_never_overshoot_the_limit(h: &Harness) {
    let handles = [h.store.clone(), h.second_handle()];
    let id = sys("alpha");
    let mut tasks = Vec::new();
    for i in 0..50_usize {
        let store = handles[i % 2].clone();
        let held = reservation(
            &format!("call-{i}"),
            &id,
            "model-a",
            7,
            t(0),
            global_daily(100),
        );
        tasks.push(tokio::spawn(async move { store.reserve(&held).await }));
    }
    let mut reserved = 0;
    for task in tasks {
        match task.await.expect("task").expect("reserve") {
            ReserveOutcome::Reserved => reserved += 1,
            ReserveOutcome::Refused { .. } => {}
        }
    }
    assert_eq!(reserved, 14, "100 / 7 rounds down to 14 holds");
    let total = read(h.store.as_ref(), day(0), &LedgerScope::Total).await;
    assert_eq!(total, totals(0, 98, 0));
    assert!(total.reserved_nano <= 100);
}

/// Every hold, expired or not.
async fn all_holds(store: &dyn Store) -> Vec<Hold> {
    store
        .holds(t(0) + chrono::Duration::days(365), 1_000)
        .await
        .expect("holds")
}

pub async fn a_reservation_is_held_until_it_is_settled(h: &Harness) {
    let store = h.store.as_ref();
    let id = sys("alpha");
    let first = reservation("call-1", &id, "model-a", 100, t(0), global_daily(1_000));
    let second = reservation("call-2", &id, "model-b", 50, t(60), global_daily(1_000));
    assert_eq!(reserve(store, &first).await, ReserveOutcome::Reserved);
    assert_eq!(reserve(store, &second).await, ReserveOutcome::Reserved);

    let held = all_holds(store).await;
    assert_eq!(held, [Hold::of(&first), Hold::of(&second)]);
    assert_eq!(held[0].expires_at, t(0) + RESERVATION_HOLD);
    assert_eq!(held[0].amount_nano, 100);
    // Only holds past their expiry are listed as expired, oldest first, up to the limit.
    let expired = |at| store.holds(at, 1_000);
    assert!(
        expired(t(0) + RESERVATION_HOLD - chrono::Duration::seconds(1))
            .await
            .expect("holds")
            .is_empty()
    );
    assert_eq!(
        expired(t(0) + RESERVATION_HOLD).await.expect("holds"),
        [Hold::of(&first)]
    );
    assert_eq!(
        store
            .holds(t(0) + chrono::Duration::days(1), 1)
            .await
            .expect("holds"),
        [Hold::of(&first)]
    );

    store
        .settle(&settlement(&first, 30, t(5)))
        .await
        .expect("settle");
    assert_eq!(all_holds(store).await, [Hold::of(&second)]);
}

pub async fn an_expired_hold_is_reclaimed_once_and_recorded(h: &Harness) {
    let store = h.store.as_ref();
    let id = sys("alpha");
    let leaked = reservation("call-1", &id, "model-a", 100, t(0), global_daily(1_000));
    let live = reservation("call-2", &id, "model-a", 50, t(0), global_daily(1_000));
    assert_eq!(reserve(store, &leaked).await, ReserveOutcome::Reserved);
    assert_eq!(reserve(store, &live).await, ReserveOutcome::Reserved);
    let at = t(0) + RESERVATION_HOLD;

    assert_eq!(
        store
            .reclaim(&Hold::of(&leaked), "sweep-1", at)
            .await
            .expect("reclaim"),
        ReclaimOutcome::Reclaimed
    );
    assert_eq!(
        store
            .reclaim(&Hold::of(&leaked), "sweep-2", at)
            .await
            .expect("reclaim again"),
        ReclaimOutcome::Gone
    );
    // The leaked amount is released everywhere; the live hold stays.
    assert_call_counters(store, &id, "model-a", 0, totals(0, 50, 0)).await;
    assert_eq!(all_holds(store).await, [Hold::of(&live)]);
    let reclaims = store.reclaims(None).await.expect("reclaims");
    assert_eq!(reclaims.len(), 1);
    assert_eq!(reclaims[0].hold, Hold::of(&leaked));
    assert_eq!(reclaims[0].by, "sweep-1");
    assert_eq!(reclaims[0].at, at);
    // Reclaiming is not spending: the ledger has no entry for it.
    assert!(store.entries(None).await.expect("entries").is_empty());
}

pub async fn a_settlement_after_its_hold_was_reclaimed_counts_the_cost_once(h: &Harness) {
    let store = h.store.as_ref();
    let id = sys("alpha");
    let held = reservation("call-1", &id, "model-a", 100, t(0), global_daily(1_000));
    assert_eq!(reserve(store, &held).await, ReserveOutcome::Reserved);
    let at = t(0) + RESERVATION_HOLD;
    store
        .reclaim(&Hold::of(&held), "sweep-1", at)
        .await
        .expect("reclaim");

    let late = settlement(&held, 40, at);
    assert_eq!(
        store.settle(&late).await.expect("settle"),
        SettleOutcome::SettledAfterReclaim
    );
    assert_eq!(
        store.settle(&late).await.expect("settle again"),
        SettleOutcome::AlreadySettled
    );
    // The cost counts once and nothing is released twice.
    assert_call_counters(store, &id, "model-a", 0, totals(40, 0, 1)).await;
    assert_eq!(store.entries(None).await.expect("entries").len(), 1);
}

pub async fn a_settled_call_has_nothing_to_reclaim(h: &Harness) {
    let store = h.store.as_ref();
    let id = sys("alpha");
    let held = reservation("call-1", &id, "model-a", 100, t(0), global_daily(1_000));
    assert_eq!(reserve(store, &held).await, ReserveOutcome::Reserved);
    store
        .settle(&settlement(&held, 40, t(5)))
        .await
        .expect("settle");
    assert_eq!(
        store
            .reclaim(&Hold::of(&held), "sweep-1", t(0) + RESERVATION_HOLD)
            .await
            .expect("reclaim"),
        ReclaimOutcome::Gone
    );
    assert_call_counters(store, &id, "model-a", 0, totals(40, 0, 1)).await;
    assert!(store.reclaims(None).await.expect("reclaims").is_empty());
}
