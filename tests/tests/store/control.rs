//! Control state: the budget mode and the per-model circuit breakers.

use shared::domain::{BudgetMode, Role};
use shared::store::performance::PerformanceSnapshot;
use shared::store::{BudgetState, CachedAnswer, CircuitState, Write};

use crate::fixtures::{assert_condition_failed, t, tx};
use crate::harness::Harness;

fn set_mode(expected: BudgetMode, mode: BudgetMode, secs: i64) -> Write {
    Write::SetBudgetMode {
        expected,
        state: BudgetState {
            mode,
            changed_at: Some(t(secs)),
            reason: format!("to {}", mode.as_str()),
        },
    }
}

pub async fn budget_state_starts_normal(h: &Harness) {
    assert_eq!(
        h.store.budget_state().await.expect("read"),
        BudgetState::default()
    );
}

pub async fn budget_mode_changes_only_from_the_expected_mode(h: &Harness) {
    let store = &h.store;
    assert_condition_failed(
        store
            .commit(tx(vec![set_mode(
                BudgetMode::Economy,
                BudgetMode::Paused,
                1,
            )]))
            .await,
        "set_budget_mode",
    );
    assert_eq!(
        store.budget_state().await.expect("read"),
        BudgetState::default()
    );
    store
        .commit(tx(vec![set_mode(
            BudgetMode::Normal,
            BudgetMode::Economy,
            2,
        )]))
        .await
        .expect("normal to economy");
    let state = store.budget_state().await.expect("read");
    assert_eq!(state.mode, BudgetMode::Economy);
    assert_eq!(state.changed_at, Some(t(2)));
    assert_condition_failed(
        store
            .commit(tx(vec![set_mode(
                BudgetMode::Normal,
                BudgetMode::Paused,
                3,
            )]))
            .await,
        "set_budget_mode",
    );
    store
        .commit(tx(vec![set_mode(
            BudgetMode::Economy,
            BudgetMode::Paused,
            4,
        )]))
        .await
        .expect("economy to paused");
    assert_eq!(
        store.budget_state().await.expect("read").mode,
        BudgetMode::Paused
    );
}

pub async fn circuits_are_kept_per_model(h: &Harness) {
    let store = &h.store;
    assert_eq!(store.circuit("model-a").await.expect("read"), None);
    let open = CircuitState {
        model_id: "model-a".to_owned(),
        consecutive_failures: 3,
        open_until: Some(t(60)),
        throttled_until: None,
    };
    store.put_circuit(&open).await.expect("put");
    store
        .put_circuit(&CircuitState {
            model_id: "model-b".to_owned(),
            consecutive_failures: 1,
            open_until: None,
            throttled_until: None,
        })
        .await
        .expect("put");
    assert_eq!(store.circuit("model-a").await.expect("read"), Some(open));
    let closed = CircuitState {
        model_id: "model-a".to_owned(),
        consecutive_failures: 0,
        open_until: None,
        throttled_until: None,
    };
    store.put_circuit(&closed).await.expect("overwrite");
    assert_eq!(store.circuit("model-a").await.expect("read"), Some(closed));
    assert_eq!(
        store
            .circuit("model-b")
            .await
            .expect("read")
            .map(|c| c.consecutive_failures),
        Some(1)
    );
}

pub async fn performance_starts_empty_and_is_replaced_whole(h: &Harness) {
    let store = &h.store;
    assert_eq!(
        store.performance().await.expect("read"),
        PerformanceSnapshot::default()
    );
    let mut perf = PerformanceSnapshot::default();
    perf.record_call("model-a", Role::Analyze, true, 1_500, false);
    perf.record_call("model-a", Role::Analyze, false, 2_500, true);
    perf.record_call("model-b", Role::Decide, true, 400, false);
    perf.record_prediction("model-a", Role::Strategize, 4.75, 5.25);
    store.put_performance(&perf).await.expect("put");
    let stored = store.performance().await.expect("read");
    assert_eq!(stored.models.len(), 2);
    for (model, roles) in &perf.models {
        for (role, want) in roles {
            let got = stored.stats(model, *role).expect("stored stats");
            assert_eq!(got.calls, want.calls);
            assert_eq!(got.predictions, want.predictions);
            for (got, want) in [
                (got.success_rate, want.success_rate),
                (got.latency_ms, want.latency_ms),
                (got.parse_failure_rate, want.parse_failure_rate),
                (got.prediction_error, want.prediction_error),
            ] {
                assert!(
                    (got - want).abs() < 1e-9,
                    "{model} {role:?}: {got} != {want}"
                );
            }
        }
    }
    // A second handle (another process for SQLite) reads the same record.
    let other = h.second_handle();
    assert_eq!(other.performance().await.expect("read").models.len(), 2);

    let mut replaced = PerformanceSnapshot::default();
    replaced.record_call("model-c", Role::Resolve, true, 900, false);
    store.put_performance(&replaced).await.expect("overwrite");
    let stored = store.performance().await.expect("read");
    assert!(stored.stats("model-a", Role::Analyze).is_none());
    assert_eq!(
        stored.stats("model-c", Role::Resolve).map(|s| s.calls),
        Some(1)
    );
    // The budget state shares the control table and is untouched.
    assert_eq!(
        store.budget_state().await.expect("read"),
        BudgetState::default()
    );
}

pub fn cached_answer(key: &str, model_id: &str, role: Role, stored: i64, ttl: i64) -> CachedAnswer {
    CachedAnswer {
        key: key.to_owned(),
        model_id: model_id.to_owned(),
        role,
        answer: serde_json::json!({"blocks": [{"type": "text", "text": key}], "stop_reason": "end_turn"}),
        usage: shared::store::Usage {
            input_tokens: 100,
            output_tokens: 20,
            cache_read_tokens: 0,
            cache_write_tokens: 0,
        },
        cost_nano_usd: 1_234,
        stored_at: t(stored),
        expires_at: t(stored + ttl),
    }
}

pub async fn cached_answers_are_kept_per_key_and_expire_by_the_callers_clock(h: &Harness) {
    let store = &h.store;
    assert_eq!(store.cached_answer("k1", t(0)).await.expect("read"), None);
    let first = cached_answer("k1", "model-a", Role::Decide, 0, 900);
    let second = cached_answer("k2", "model-b", Role::Analyze, 10, 60);
    store.put_cached_answer(&first).await.expect("put");
    store.put_cached_answer(&second).await.expect("put");

    assert_eq!(
        store.cached_answer("k1", t(899)).await.expect("read"),
        Some(first.clone())
    );
    assert_eq!(
        store.cached_answer("k2", t(69)).await.expect("read"),
        Some(second)
    );
    // Expiry is the caller's clock, whatever the store's own TTL has done so far.
    assert_eq!(store.cached_answer("k2", t(70)).await.expect("read"), None);
    assert_eq!(store.cached_answer("k1", t(900)).await.expect("read"), None);
    // A newer answer under the same key replaces the old one.
    let renewed = cached_answer("k1", "model-a", Role::Decide, 1_000, 900);
    store.put_cached_answer(&renewed).await.expect("put");
    assert_eq!(
        store.cached_answer("k1", t(1_001)).await.expect("read"),
        Some(renewed)
    );
}

/// Twenty writers each count one failure and one call at the same moment: every one is counted
/// (each update is applied to the record as it is stored, not to a copy read earlier).
pub async fn concurrent_counter_updates_are_all_counted(h: &Harness) {
    const WRITERS: u32 = 20;
    let mut tasks = Vec::new();
    for i in 0..WRITERS {
        let store = h.store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .update_circuit("model-a", &|state| {
                    let mut state = state.unwrap_or(CircuitState {
                        model_id: "model-a".into(),
                        consecutive_failures: 0,
                        open_until: None,
                        throttled_until: None,
                    });
                    state.consecutive_failures += 1;
                    state
                })
                .await
                .expect("circuit update");
            store
                .update_performance(&|perf| {
                    perf.record_call("model-a", Role::Analyze, i % 2 == 0, 100, false);
                })
                .await
                .expect("performance update");
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    let circuit = h
        .store
        .circuit("model-a")
        .await
        .expect("read")
        .expect("stored");
    assert_eq!(circuit.consecutive_failures, WRITERS);
    let perf = h.store.performance().await.expect("read");
    assert_eq!(
        perf.models["model-a"][&Role::Analyze].calls,
        u64::from(WRITERS)
    );
}
