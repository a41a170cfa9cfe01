//! What only a file-backed store can show: the data outlives the process that wrote it.

use shared::cost::{LedgerScope, PeriodKey};
use shared::domain::{BudgetMode, BudgetPeriod, HeadStatus};
use shared::store::sqlite::{DB_FILE, SqliteStore};
use shared::store::{
    BudgetState, CircuitState, Claim, ControlState, EvolutionStore, Transaction, Write,
};
use shared::store::{CostLedger, Reservation, SettleOutcome, Settlement};

use crate::fixtures::{advance, completion, create_system, event, outgoing, sys, t, tx};

#[tokio::test]
async fn sqlite_data_survives_reopening_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state_dir = dir.path().join("nested").join("state");
    let id = sys("alpha");
    let messages = vec![outgoing(&id, 1)];
    let held = Reservation {
        call_id: "call-1".to_owned(),
        system_id: id.clone(),
        model_id: "model-a".to_owned(),
        amount_nano: 100,
        at: t(0),
        limits: Vec::new(),
    };
    {
        let store = SqliteStore::open(&state_dir).expect("open");
        assert!(state_dir.join(DB_FILE).is_file());
        store
            .commit(tx(vec![create_system(&id)]))
            .await
            .expect("create");
        let mut writes = advance(&id, 0, HeadStatus::Evaluating);
        writes.push(Write::PutEvent {
            event: event(&id, "evt-1", 1),
        });
        writes.push(Write::SetBudgetMode {
            expected: BudgetMode::Normal,
            state: BudgetState {
                mode: BudgetMode::Economy,
                changed_at: Some(t(1)),
                reason: "spend".to_owned(),
            },
        });
        store
            .commit(Transaction {
                writes,
                completion: Some(completion("msg-1", "hash", messages.clone(), t(3_600))),
            })
            .await
            .expect("advance");
        store
            .put_circuit(&CircuitState {
                model_id: "model-a".to_owned(),
                consecutive_failures: 2,
                open_until: None,
                throttled_until: None,
            })
            .await
            .expect("circuit");
        store.reserve(&held).await.expect("reserve");
        store
            .settle(&Settlement {
                call_id: held.call_id.clone(),
                system_id: id.clone(),
                model_id: held.model_id.clone(),
                reserved_nano: 100,
                reserved_at: t(0),
                actual_nano: 42,
                usage: shared::store::Usage::default(),
                at: t(2),
            })
            .await
            .expect("settle");
    }

    let store = SqliteStore::open(&state_dir).expect("reopen");
    let head = store.get_head(&id).await.expect("head").expect("stored");
    assert_eq!((head.generation, head.status), (1, HeadStatus::Evaluating));
    assert!(store.get_generation(&id, 1).await.expect("read").is_some());
    assert_eq!(
        store.list_events(&id, None, 10).await.expect("read").len(),
        1
    );
    assert_eq!(
        store
            .claim("msg-1", "hash", t(5), t(65))
            .await
            .expect("claim"),
        Claim::Completed { outgoing: messages }
    );
    assert_eq!(
        store.budget_state().await.expect("read").mode,
        BudgetMode::Economy
    );
    assert_eq!(
        store
            .circuit("model-a")
            .await
            .expect("read")
            .map(|c| c.consecutive_failures),
        Some(2)
    );
    let day = store
        .totals(PeriodKey::of(BudgetPeriod::Day, t(0)), &LedgerScope::Total)
        .await
        .expect("totals");
    assert_eq!((day.spent_nano, day.reserved_nano, day.calls), (42, 0, 1));
    assert_eq!(
        store
            .settle(&Settlement {
                call_id: "call-1".to_owned(),
                system_id: id.clone(),
                model_id: "model-a".to_owned(),
                reserved_nano: 100,
                reserved_at: t(0),
                actual_nano: 42,
                usage: shared::store::Usage::default(),
                at: t(3),
            })
            .await
            .expect("settle again"),
        SettleOutcome::AlreadySettled
    );
}

#[tokio::test]
async fn in_memory_sqlite_store_keeps_nothing_between_opens() {
    let id = sys("alpha");
    let first = SqliteStore::open_in_memory().expect("open");
    first
        .commit(tx(vec![create_system(&id)]))
        .await
        .expect("create");
    assert!(first.path().is_none());
    let second = SqliteStore::open_in_memory().expect("open");
    assert_eq!(second.get_system(&id).await.expect("read"), None);
}
