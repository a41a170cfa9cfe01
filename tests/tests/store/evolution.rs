//! Conditional writes and listings of the evolution store.

use shared::domain::{DecisionRecord, Generation, HeadStatus, SystemId};
use shared::store::{Claim, StoreError, SystemRecord, Transaction, Write};

use crate::fixtures::{
    advance, alert, analysis, assert_condition_failed, assert_invalid, completion, create_system,
    cursor, decision, event, fitness, generation, head, history, llm_call, outgoing, plan, sys,
    system_record, t, tx,
};
use crate::harness::Harness;

async fn created(h: &Harness, name: &str) -> SystemId {
    let id = sys(name);
    h.store
        .commit(tx(vec![create_system(&id)]))
        .await
        .expect("create system");
    id
}

pub async fn creating_a_system_stores_registry_head_and_first_generation(h: &Harness) {
    let id = created(h, "alpha").await;
    let store = &h.store;
    assert_eq!(
        store.get_system(&id).await.expect("read"),
        Some(system_record(&id))
    );
    assert_eq!(
        store.get_head(&id).await.expect("read"),
        Some(head(&id, 0, HeadStatus::Stable))
    );
    assert_eq!(
        store.get_generation(&id, 0).await.expect("read"),
        Some(generation(&id, 0))
    );
    assert_eq!(store.get_system(&sys("other")).await.expect("read"), None);
}

pub async fn creating_an_existing_system_fails_its_condition(h: &Harness) {
    let id = created(h, "alpha").await;
    let mut again = system_record(&id);
    again.next_cycle_at = t(5);
    let result = h
        .store
        .commit(tx(vec![Write::CreateSystem {
            system: again,
            head: head(&id, 0, HeadStatus::Paused),
            generation: generation(&id, 0),
        }]))
        .await;
    assert_condition_failed(result, "create_system");
    assert_eq!(
        h.store.get_system(&id).await.expect("read"),
        Some(system_record(&id))
    );
    assert_eq!(
        h.store.get_head(&id).await.expect("read").map(|h| h.status),
        Some(HeadStatus::Stable)
    );
}

pub async fn systems_list_in_id_order(h: &Harness) {
    for name in ["charlie", "alpha", "bravo"] {
        created(h, name).await;
    }
    let ids: Vec<String> = h
        .store
        .list_systems()
        .await
        .expect("list")
        .into_iter()
        .map(|s| s.system_id.to_string())
        .collect();
    assert_eq!(ids, ["alpha", "bravo", "charlie"]);
}

pub async fn put_system_updates_an_existing_system_and_refuses_an_unknown_one(h: &Harness) {
    let id = created(h, "alpha").await;
    let mut updated = system_record(&id);
    updated.next_cycle_at = t(1_800);
    updated.evaluation_deadline = Some(t(600));
    h.store
        .commit(tx(vec![Write::PutSystem {
            system: updated.clone(),
        }]))
        .await
        .expect("update registry");
    assert_eq!(
        h.store.get_system(&id).await.expect("read"),
        Some(SystemRecord {
            version: 1,
            ..updated
        }),
        "the stored entry moves to the next version"
    );

    let unknown = sys("ghost");
    assert_invalid(
        h.store
            .commit(tx(vec![Write::PutSystem {
                system: system_record(&unknown),
            }]))
            .await,
    );
    assert_eq!(h.store.get_system(&unknown).await.expect("read"), None);
}

pub async fn second_writer_on_same_head_gets_condition_failed(h: &Harness) {
    let id = created(h, "alpha").await;
    h.store
        .commit(tx(advance(&id, 0, HeadStatus::Evaluating)))
        .await
        .expect("first writer commits");
    let second = h
        .store
        .commit(tx(vec![Write::UpdateHead {
            expected_generation: 0,
            expected_status: HeadStatus::Stable,
            head: head(&id, 1, HeadStatus::Paused),
        }]))
        .await;
    assert_condition_failed(second, "update_head");
    assert_eq!(
        h.store.get_head(&id).await.expect("read"),
        Some(head(&id, 1, HeadStatus::Evaluating))
    );
}

pub async fn head_moves_only_from_the_expected_status(h: &Harness) {
    let id = created(h, "alpha").await;
    h.store
        .commit(tx(advance(&id, 0, HeadStatus::Evaluating)))
        .await
        .expect("advance");
    // Right generation, wrong status: the head is evaluating, not stable.
    assert_condition_failed(
        h.store
            .commit(tx(advance(&id, 1, HeadStatus::Evaluating)))
            .await,
        "update_head",
    );
    assert_eq!(h.store.get_generation(&id, 2).await.expect("read"), None);
    h.store
        .commit(tx(vec![Write::UpdateHead {
            expected_generation: 1,
            expected_status: HeadStatus::Evaluating,
            head: head(&id, 1, HeadStatus::Stable),
        }]))
        .await
        .expect("close the evaluation");
    h.store
        .commit(tx(advance(&id, 1, HeadStatus::Evaluating)))
        .await
        .expect("advance from the stable head");
}

/// A held approval lives on the head: it round-trips, and only its own transition releases it.
pub async fn a_head_awaiting_approval_round_trips_and_moves_only_from_that_status(h: &Harness) {
    let id = created(h, "alpha").await;
    let awaiting = awaiting(&id, "dec_1");
    h.store
        .commit(tx(vec![Write::UpdateHead {
            expected_generation: 0,
            expected_status: HeadStatus::Stable,
            head: awaiting.clone(),
        }]))
        .await
        .expect("hold");
    assert_eq!(h.store.get_head(&id).await.expect("read"), Some(awaiting));
    assert_condition_failed(
        h.store
            .commit(tx(advance(&id, 0, HeadStatus::Evaluating)))
            .await,
        "update_head",
    );
    h.store
        .commit(tx(vec![Write::UpdateHead {
            expected_generation: 0,
            expected_status: HeadStatus::AwaitingApproval,
            head: head(&id, 0, HeadStatus::Stable),
        }]))
        .await
        .expect("release");
    assert_eq!(
        h.store
            .get_head(&id)
            .await
            .expect("read")
            .and_then(|h| h.approval),
        None
    );
}

pub async fn head_of_an_unknown_system_fails_its_condition(h: &Harness) {
    let id = sys("ghost");
    assert_condition_failed(
        h.store
            .commit(tx(vec![Write::UpdateHead {
                expected_generation: 0,
                expected_status: HeadStatus::Stable,
                head: head(&id, 1, HeadStatus::Stable),
            }]))
            .await,
        "update_head",
    );
    assert_eq!(h.store.get_head(&id).await.expect("read"), None);
}

pub async fn concurrent_writers_on_one_head_commit_exactly_once(h: &Harness) {
    let id = created(h, "alpha").await;
    let handles = [h.store.clone(), h.second_handle()];
    let mut tasks = Vec::new();
    for i in 0..20_u32 {
        let store = handles[(i % 2) as usize].clone();
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            let mut next = head(&id, 1, HeadStatus::Evaluating);
            next.rollback_streak = i;
            store
                .commit(tx(vec![Write::UpdateHead {
                    expected_generation: 0,
                    expected_status: HeadStatus::Stable,
                    head: next,
                }]))
                .await
        }));
    }
    let mut won = 0;
    for task in tasks {
        match task.await.expect("task") {
            Ok(()) => won += 1,
            Err(StoreError::ConditionFailed(_)) => {}
            Err(other) => panic!("unexpected error: {other}"),
        }
    }
    assert_eq!(won, 1, "exactly one writer moves the head");
    assert_eq!(
        h.store
            .get_head(&id)
            .await
            .expect("read")
            .map(|h| h.generation),
        Some(1)
    );
}

pub async fn failed_last_condition_leaves_no_earlier_write_and_no_completion(h: &Harness) {
    let id = created(h, "alpha").await;
    let refused = Transaction {
        writes: vec![
            Write::PutGeneration {
                generation: generation(&id, 1),
            },
            Write::PutEvent {
                event: event(&id, "evt-1", 1),
            },
            Write::PutDecision {
                decision: decision(&id, "dec-1", 1),
            },
            Write::PutPlan {
                plan: plan(&id, "plan-1"),
            },
            Write::PutCursor {
                expected_version: None,
                cursor: cursor(&id, 0),
            },
            Write::PutLlmCall {
                call: llm_call(&id, "call-1", 1),
            },
            Write::UpdateHead {
                expected_generation: 7,
                expected_status: HeadStatus::Stable,
                head: head(&id, 1, HeadStatus::Evaluating),
            },
        ],
        completion: Some(completion(
            "msg-1",
            "hash",
            vec![outgoing(&id, 1)],
            t(3_600),
        )),
    };
    assert_condition_failed(h.store.commit(refused).await, "write 6");

    let store = &h.store;
    assert_eq!(store.get_generation(&id, 1).await.expect("read"), None);
    assert!(
        store
            .list_events(&id, None, 10)
            .await
            .expect("read")
            .is_empty()
    );
    assert_eq!(store.get_decision(&id, "dec-1").await.expect("read"), None);
    assert_eq!(store.get_plan(&id, "plan-1").await.expect("read"), None);
    assert_eq!(store.get_cursor(&id).await.expect("read"), None);
    assert!(
        store
            .list_llm_calls(None, None)
            .await
            .expect("read")
            .is_empty()
    );
    assert_eq!(
        store.get_head(&id).await.expect("read"),
        Some(head(&id, 0, HeadStatus::Stable))
    );
    assert_eq!(
        store
            .claim("msg-1", "hash", t(1), t(60))
            .await
            .expect("claim"),
        Claim::Claimed,
        "the completion of a refused transaction must not be stored"
    );
}

pub async fn transaction_touching_one_item_twice_is_invalid(h: &Harness) {
    let id = created(h, "alpha").await;
    assert_invalid(
        h.store
            .commit(tx(vec![
                Write::PutEvent {
                    event: event(&id, "evt-1", 1),
                },
                Write::PutEvent {
                    event: event(&id, "evt-1", 2),
                },
            ]))
            .await,
    );
    assert!(
        h.store
            .list_events(&id, None, 10)
            .await
            .expect("read")
            .is_empty()
    );

    let other = sys("bravo");
    let mut writes = vec![create_system(&other)];
    writes.extend(advance(&other, 0, HeadStatus::Evaluating));
    assert_invalid(h.store.commit(tx(writes)).await);
    assert_eq!(h.store.get_system(&other).await.expect("read"), None);
}

pub async fn records_without_a_system_are_invalid(h: &Harness) {
    let id = created(h, "alpha").await;
    let mut orphan = event(&id, "evt-1", 1);
    orphan.system_id = None;
    assert_invalid(
        h.store
            .commit(tx(vec![Write::PutEvent { event: orphan }]))
            .await,
    );
    let mut orphan = decision(&id, "dec-1", 1);
    orphan.system_id = None;
    assert_invalid(
        h.store
            .commit(tx(vec![Write::PutDecision { decision: orphan }]))
            .await,
    );
}

pub async fn generations_are_immutable(h: &Harness) {
    let id = created(h, "alpha").await;
    let rewritten = Generation {
        snapshot_id: "snap_other".to_owned(),
        ..generation(&id, 0)
    };
    assert_condition_failed(
        h.store
            .commit(tx(vec![Write::PutGeneration {
                generation: rewritten,
            }]))
            .await,
        "put_generation",
    );
    assert_eq!(
        h.store.get_generation(&id, 0).await.expect("read"),
        Some(generation(&id, 0))
    );
}

pub async fn decisions_are_written_once(h: &Harness) {
    let id = created(h, "alpha").await;
    let first = decision(&id, "dec-1", 1);
    h.store
        .commit(tx(vec![Write::PutDecision {
            decision: first.clone(),
        }]))
        .await
        .expect("first decision");
    let second = DecisionRecord {
        reasoning: "changed my mind".to_owned(),
        ..decision(&id, "dec-1", 2)
    };
    assert_condition_failed(
        h.store
            .commit(tx(vec![Write::PutDecision { decision: second }]))
            .await,
        "put_decision",
    );
    assert_eq!(
        h.store.get_decision(&id, "dec-1").await.expect("read"),
        Some(first)
    );
    // Decision ids are scoped by system.
    let other = created(h, "bravo").await;
    h.store
        .commit(tx(vec![Write::PutDecision {
            decision: decision(&other, "dec-1", 3),
        }]))
        .await
        .expect("same id in another system");
}

pub async fn plans_are_written_once(h: &Harness) {
    let id = created(h, "alpha").await;
    let first = plan(&id, "plan-1");
    h.store
        .commit(tx(vec![Write::PutPlan {
            plan: first.clone(),
        }]))
        .await
        .expect("first plan");
    let mut second = plan(&id, "plan-1");
    second.truncated = true;
    assert_condition_failed(
        h.store
            .commit(tx(vec![Write::PutPlan { plan: second }]))
            .await,
        "put_plan",
    );
    assert_eq!(
        h.store.get_plan(&id, "plan-1").await.expect("read"),
        Some(first)
    );
}

pub async fn cursor_writes_follow_their_expected_version(h: &Harness) {
    let id = created(h, "alpha").await;
    let put = |expected_version, version| {
        tx(vec![Write::PutCursor {
            expected_version,
            cursor: cursor(&id, version),
        }])
    };
    assert_condition_failed(h.store.commit(put(Some(0), 1)).await, "put_cursor");
    h.store
        .commit(put(None, 0))
        .await
        .expect("create the cursor");
    assert_condition_failed(h.store.commit(put(None, 0)).await, "put_cursor");
    assert_condition_failed(h.store.commit(put(Some(1), 2)).await, "put_cursor");
    h.store
        .commit(put(Some(0), 1))
        .await
        .expect("advance from version 0");
    assert_condition_failed(h.store.commit(put(Some(0), 1)).await, "put_cursor");
    h.store
        .commit(put(Some(1), 2))
        .await
        .expect("advance from version 1");
    assert_eq!(
        h.store.get_cursor(&id).await.expect("read"),
        Some(cursor(&id, 2))
    );
}

pub async fn upserts_rewrite_the_same_record(h: &Harness) {
    let id = created(h, "alpha").await;
    for round in 0..2_u8 {
        let detail = format!("round {round}");
        let mut evt = event(&id, "evt-1", 5);
        evt.detail = Some(detail.clone());
        let mut call = llm_call(&id, "call-1", 5);
        call.latency_ms = u64::from(round);
        let mut warning = alert("alert-1", 5);
        warning.message.clone_from(&detail);
        h.store
            .commit(tx(vec![
                Write::PutEvent { event: evt },
                Write::PutFitnessSample {
                    sample: fitness(&id, 1, "fit-1", 5, f64::from(round)),
                },
                Write::PutHistory {
                    system_id: id.clone(),
                    entry: history(1, f64::from(round)),
                },
                Write::PutAnalysis {
                    analysis: analysis(&id, "ana-1", &detail),
                },
                Write::PutLlmCall { call },
                Write::PutAlert { alert: warning },
            ]))
            .await
            .expect("upserts have no condition");
    }
    let store = &h.store;
    let events = store.list_events(&id, None, 10).await.expect("read");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].detail.as_deref(), Some("round 1"));
    let samples = store.list_fitness(&id, 1).await.expect("read");
    assert_eq!(samples, vec![fitness(&id, 1, "fit-1", 5, 1.0)]);
    assert_eq!(
        store.list_history(&id, 10).await.expect("read"),
        vec![history(1, 1.0)]
    );
    assert_eq!(
        store.get_analysis(&id, "ana-1").await.expect("read"),
        Some(analysis(&id, "ana-1", "round 1"))
    );
    let calls = store.list_llm_calls(Some(&id), None).await.expect("read");
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].latency_ms, 1);
    let alerts = store.list_alerts(None, 10).await.expect("read");
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].message, "round 1");
}

pub async fn generations_list_in_ascending_order_after_the_given_one(h: &Harness) {
    let id = created(h, "alpha").await;
    let other = created(h, "bravo").await;
    for n in [3, 1, 2] {
        h.store
            .commit(tx(vec![Write::PutGeneration {
                generation: generation(&id, n),
            }]))
            .await
            .expect("put generation");
    }
    let numbers =
        |list: Vec<Generation>| list.into_iter().map(|g| g.generation).collect::<Vec<_>>();
    let store = &h.store;
    assert_eq!(
        numbers(store.list_generations(&id, None, 10).await.expect("list")),
        [0, 1, 2, 3]
    );
    assert_eq!(
        numbers(
            store
                .list_generations(&id, Some(1), 10)
                .await
                .expect("list")
        ),
        [2, 3]
    );
    assert_eq!(
        numbers(store.list_generations(&id, None, 2).await.expect("list")),
        [0, 1]
    );
    assert!(
        store
            .list_generations(&id, Some(3), 10)
            .await
            .expect("list")
            .is_empty()
    );
    assert_eq!(
        numbers(
            store
                .list_generations(&other, None, 10)
                .await
                .expect("list")
        ),
        [0]
    );
}

/// The seed's `query_evolution_history`: by event id, by type, by time range (since inclusive,
/// until exclusive), and every event says where its body is stored and how large it is.
pub async fn events_are_queried_by_id_type_and_time_range_with_their_storage_metadata(h: &Harness) {
    use shared::domain::{EventQuery, EventType};
    let id = created(h, "alpha").await;
    let mut kept = event(&id, "e2", 20);
    kept.event_type = EventType::MutationKept;
    let mut rolled = event(&id, "e4", 40);
    rolled.event_type = EventType::MutationRolledBack;
    let writes = [event(&id, "e1", 10), kept, event(&id, "e3", 30), rolled]
        .into_iter()
        .map(|event| Write::PutEvent { event })
        .collect();
    h.store.commit(tx(writes)).await.expect("events");
    let system = &id;
    let query = |q: EventQuery| async move {
        h.store
            .query_events(system, &EventQuery { limit: 10, ..q })
            .await
            .expect("query")
            .into_iter()
            .map(|e| e.id)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        query(EventQuery {
            id: Some("e3".into()),
            ..EventQuery::default()
        })
        .await,
        ["e3"]
    );
    assert_eq!(
        query(EventQuery {
            types: vec![EventType::MutationKept, EventType::MutationRolledBack],
            ..EventQuery::default()
        })
        .await,
        ["e2", "e4"]
    );
    assert_eq!(
        query(EventQuery {
            since: Some(t(20)),
            until: Some(t(40)),
            ..EventQuery::default()
        })
        .await,
        ["e2", "e3"]
    );
    let all = h.store.list_events(&id, None, 10).await.expect("list");
    assert_eq!(all.len(), 4);
    for e in &all {
        let meta = e.storage_metadata.as_ref().expect("storage metadata");
        let stored = shared::domain::EvolutionEvent {
            storage_metadata: None,
            ..e.clone()
        };
        let size = serde_json::to_vec(&stored).expect("json").len() as u64;
        assert_eq!(meta.size_bytes, size, "{meta:?}");
        assert!(
            meta.s3_location.ends_with(&format!("{}.json", e.id))
                || meta.s3_location.ends_with(&format!("/{}", e.id)),
            "{meta:?}"
        );
        assert!(!meta.storage_class.is_empty());
    }
}

pub async fn events_list_in_time_order_with_inclusive_since_and_limit(h: &Harness) {
    let id = created(h, "alpha").await;
    let other = created(h, "bravo").await;
    h.store
        .commit(tx(vec![
            Write::PutEvent {
                event: event(&id, "e3", 30),
            },
            Write::PutEvent {
                event: event(&id, "e1", 10),
            },
            Write::PutEvent {
                event: event(&id, "e2b", 20),
            },
            Write::PutEvent {
                event: event(&id, "e2a", 20),
            },
            Write::PutEvent {
                event: event(&other, "x1", 15),
            },
        ]))
        .await
        .expect("events");
    let ids = |list: Vec<shared::domain::EvolutionEvent>| {
        list.into_iter().map(|e| e.id).collect::<Vec<_>>()
    };
    let store = &h.store;
    assert_eq!(
        ids(store.list_events(&id, None, 10).await.expect("list")),
        ["e1", "e2a", "e2b", "e3"]
    );
    assert_eq!(
        ids(store.list_events(&id, Some(t(20)), 10).await.expect("list")),
        ["e2a", "e2b", "e3"]
    );
    assert_eq!(
        ids(store.list_events(&id, Some(t(20)), 2).await.expect("list")),
        ["e2a", "e2b"]
    );
    assert_eq!(
        ids(store.list_events(&id, None, 1).await.expect("list")),
        ["e1"]
    );
    assert!(
        store
            .list_events(&id, Some(t(31)), 10)
            .await
            .expect("list")
            .is_empty()
    );
    assert_eq!(
        ids(store.list_events(&other, None, 10).await.expect("list")),
        ["x1"]
    );
}

pub async fn decisions_list_in_time_order_with_inclusive_since_and_limit(h: &Harness) {
    let id = created(h, "alpha").await;
    for (decision_id, secs) in [("d3", 30), ("d1", 10), ("d2", 20)] {
        h.store
            .commit(tx(vec![Write::PutDecision {
                decision: decision(&id, decision_id, secs),
            }]))
            .await
            .expect("decision");
    }
    let ids =
        |list: Vec<DecisionRecord>| list.into_iter().map(|d| d.decision_id).collect::<Vec<_>>();
    let store = &h.store;
    assert_eq!(
        ids(store.list_decisions(&id, None, 10).await.expect("list")),
        ["d1", "d2", "d3"]
    );
    assert_eq!(
        ids(store
            .list_decisions(&id, Some(t(20)), 10)
            .await
            .expect("list")),
        ["d2", "d3"]
    );
    assert_eq!(
        ids(store
            .list_decisions(&id, Some(t(10)), 1)
            .await
            .expect("list")),
        ["d1"]
    );
}

pub async fn history_lists_the_latest_entries_in_ascending_generation_order(h: &Harness) {
    let id = created(h, "alpha").await;
    let other = created(h, "bravo").await;
    for n in [4, 1, 5, 3, 2] {
        h.store
            .commit(tx(vec![Write::PutHistory {
                system_id: id.clone(),
                entry: history(n, n as f64),
            }]))
            .await
            .expect("history");
    }
    h.store
        .commit(tx(vec![Write::PutHistory {
            system_id: other.clone(),
            entry: history(9, 9.0),
        }]))
        .await
        .expect("history of another system");
    let generations = |list: Vec<shared::domain::HistoryEntry>| {
        list.into_iter().map(|e| e.generation).collect::<Vec<_>>()
    };
    let store = &h.store;
    assert_eq!(
        generations(store.list_history(&id, 3).await.expect("list")),
        [3, 4, 5]
    );
    assert_eq!(
        generations(store.list_history(&id, 10).await.expect("list")),
        [1, 2, 3, 4, 5]
    );
    assert_eq!(
        generations(store.list_history(&other, 10).await.expect("list")),
        [9]
    );
}

pub async fn fitness_lists_the_samples_of_one_generation(h: &Harness) {
    let id = created(h, "alpha").await;
    h.store
        .commit(tx(vec![
            Write::PutFitnessSample {
                sample: fitness(&id, 1, "s2", 20, 0.5),
            },
            Write::PutFitnessSample {
                sample: fitness(&id, 1, "s1", 10, 0.4),
            },
            Write::PutFitnessSample {
                sample: fitness(&id, 2, "s3", 30, 0.9),
            },
        ]))
        .await
        .expect("samples");
    let ids: Vec<String> = h
        .store
        .list_fitness(&id, 1)
        .await
        .expect("list")
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(ids, ["s1", "s2"]);
    assert!(h.store.list_fitness(&id, 7).await.expect("list").is_empty());
}

pub async fn llm_calls_list_by_time_for_one_or_all_systems(h: &Harness) {
    let id = created(h, "alpha").await;
    let other = created(h, "bravo").await;
    h.store
        .commit(tx(vec![
            Write::PutLlmCall {
                call: llm_call(&id, "c2", 20),
            },
            Write::PutLlmCall {
                call: llm_call(&other, "c1", 10),
            },
            Write::PutLlmCall {
                call: llm_call(&id, "c3", 30),
            },
        ]))
        .await
        .expect("calls");
    let ids = |list: Vec<shared::store::LlmCallRecord>| {
        list.into_iter().map(|c| c.call_id).collect::<Vec<_>>()
    };
    let store = &h.store;
    assert_eq!(
        ids(store.list_llm_calls(None, None).await.expect("list")),
        ["c1", "c2", "c3"]
    );
    assert_eq!(
        ids(store.list_llm_calls(Some(&id), None).await.expect("list")),
        ["c2", "c3"]
    );
    assert_eq!(
        ids(store.list_llm_calls(None, Some(t(20))).await.expect("list")),
        ["c2", "c3"]
    );
    assert_eq!(
        ids(store
            .list_llm_calls(Some(&other), Some(t(11)))
            .await
            .expect("list")),
        Vec::<String>::new()
    );
}

pub async fn alerts_list_in_time_order_with_inclusive_since_and_limit(h: &Harness) {
    h.store
        .commit(tx(vec![
            Write::PutAlert {
                alert: alert("a3", 30),
            },
            Write::PutAlert {
                alert: alert("a1", 10),
            },
            Write::PutAlert {
                alert: alert("a2", 20),
            },
        ]))
        .await
        .expect("alerts");
    let ids = |list: Vec<shared::domain::Alert>| list.into_iter().map(|a| a.id).collect::<Vec<_>>();
    let store = &h.store;
    assert_eq!(
        ids(store.list_alerts(None, 10).await.expect("list")),
        ["a1", "a2", "a3"]
    );
    assert_eq!(
        ids(store.list_alerts(Some(t(20)), 10).await.expect("list")),
        ["a2", "a3"]
    );
    assert_eq!(
        ids(store.list_alerts(None, 2).await.expect("list")),
        ["a1", "a2"]
    );
}

pub async fn purging_a_system_forgets_its_records_but_keeps_the_spend(h: &Harness) {
    let (alpha, bravo) = (sys("alpha"), sys("bravo"));
    for (id, key) in [(&alpha, "msg-a"), (&bravo, "msg-b")] {
        h.store
            .commit(Transaction {
                writes: vec![
                    create_system(id),
                    Write::PutEvent {
                        event: event(id, "evt-1", 1),
                    },
                    Write::PutDecision {
                        decision: decision(id, "dec-1", 1),
                    },
                    Write::PutPlan {
                        plan: plan(id, "plan-1"),
                    },
                    Write::PutCursor {
                        expected_version: None,
                        cursor: cursor(id, 0),
                    },
                    Write::PutHistory {
                        system_id: id.clone(),
                        entry: history(1, 0.5),
                    },
                    Write::PutLlmCall {
                        call: llm_call(id, &format!("call-{id}"), 1),
                    },
                ],
                completion: Some(completion(key, "hash", vec![outgoing(id, 1)], t(3_600))),
            })
            .await
            .expect("set up system");
    }
    h.store.purge_system(&alpha).await.expect("purge");

    let store = &h.store;
    assert_eq!(store.get_system(&alpha).await.expect("read"), None);
    assert_eq!(store.get_head(&alpha).await.expect("read"), None);
    assert!(
        store
            .list_generations(&alpha, None, 10)
            .await
            .expect("read")
            .is_empty()
    );
    assert!(
        store
            .list_events(&alpha, None, 10)
            .await
            .expect("read")
            .is_empty()
    );
    assert_eq!(
        store.get_decision(&alpha, "dec-1").await.expect("read"),
        None
    );
    assert_eq!(store.get_plan(&alpha, "plan-1").await.expect("read"), None);
    assert_eq!(store.get_cursor(&alpha).await.expect("read"), None);
    assert!(
        store
            .list_history(&alpha, 10)
            .await
            .expect("read")
            .is_empty()
    );
    assert_eq!(
        store
            .claim("msg-a", "hash", t(5), t(65))
            .await
            .expect("claim"),
        Claim::Claimed,
        "messages the system processed run again after a purge"
    );
    assert_eq!(
        store.list_llm_calls(None, None).await.expect("read").len(),
        1,
        "the purged system's call records go; the other system's stay"
    );

    assert!(store.get_system(&bravo).await.expect("read").is_some());
    assert_eq!(
        store
            .list_events(&bravo, None, 10)
            .await
            .expect("read")
            .len(),
        1
    );
    assert!(matches!(
        store
            .claim("msg-b", "hash", t(5), t(65))
            .await
            .expect("claim"),
        Claim::Completed { .. }
    ));

    store
        .commit(tx(vec![create_system(&alpha)]))
        .await
        .expect("a purged system can be created again");
}

/// Two writers that read the same registry entry: the second write would silently undo the
/// first, so it fails its condition instead and its stage runs again on the fresh entry.
pub async fn a_registry_write_from_a_stale_read_fails_its_condition(h: &Harness) {
    let id = created(h, "alpha").await;
    let read = h
        .store
        .get_system(&id)
        .await
        .expect("read")
        .expect("exists");
    let mut first = read.clone();
    first.next_cycle_at = t(1_800);
    let mut second = read;
    second.evaluation_deadline = Some(t(600));
    h.store
        .commit(tx(vec![Write::PutSystem { system: first }]))
        .await
        .expect("first writer");
    assert_condition_failed(
        h.store
            .commit(tx(vec![Write::PutSystem { system: second }]))
            .await,
        "version",
    );
    let stored = h
        .store
        .get_system(&id)
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(stored.next_cycle_at, t(1_800), "the first write stands");
    assert_eq!(stored.evaluation_deadline, None);
}

/// The tick and the sweep read the registry a page at a time: pages follow each other in id
/// order without a gap or an overlap.
pub async fn the_registry_pages_in_id_order(h: &Harness) {
    for name in ["delta", "alpha", "echo", "charlie", "bravo"] {
        created(h, name).await;
    }
    let mut seen = Vec::new();
    let mut after: Option<SystemId> = None;
    loop {
        let page = h
            .store
            .list_systems_page(after.as_ref(), 2)
            .await
            .expect("page");
        assert!(page.len() <= 2);
        seen.extend(page.iter().map(|s| s.system_id.to_string()));
        match page.last() {
            Some(last) if page.len() == 2 => after = Some(last.system_id.clone()),
            _ => break,
        }
    }
    assert_eq!(seen, ["alpha", "bravo", "charlie", "delta", "echo"]);
}

/// A verdict resolves only the decision the head holds: one for another decision of the same
/// generation fails its condition and leaves the held one waiting.
pub async fn a_verdict_resolves_only_the_decision_the_head_holds(h: &Harness) {
    let id = created(h, "alpha").await;
    let awaiting = awaiting(&id, "dec_b");
    h.store
        .commit(tx(vec![Write::UpdateHead {
            expected_generation: 0,
            expected_status: HeadStatus::Stable,
            head: awaiting.clone(),
        }]))
        .await
        .expect("hold");
    assert_condition_failed(
        h.store
            .commit(tx(vec![Write::ResolveApproval {
                expected_generation: 0,
                decision_id: "dec_a".into(),
                head: head(&id, 0, HeadStatus::Stable),
            }]))
            .await,
        "dec_a",
    );
    assert_eq!(h.store.get_head(&id).await.expect("read"), Some(awaiting));
    h.store
        .commit(tx(vec![Write::ResolveApproval {
            expected_generation: 0,
            decision_id: "dec_b".into(),
            head: head(&id, 0, HeadStatus::Stable),
        }]))
        .await
        .expect("the held decision's verdict");
    assert_eq!(
        h.store.get_head(&id).await.expect("read").map(|h| h.status),
        Some(HeadStatus::Stable)
    );
}

/// A head at generation 0 holding `decision_id` for approval.
fn awaiting(id: &SystemId, decision_id: &str) -> shared::domain::Head {
    shared::domain::Head {
        approval: Some(Box::new(shared::domain::PendingApproval {
            decision_id: decision_id.into(),
            mutation: shared::domain::Mutation {
                id: format!("m-{decision_id}"),
                changes: vec![],
                description: "test".into(),
                predicted_impact: 0.0,
                plan_step: None,
            },
            risk: 0.7,
            requested_at: t(1),
            expires_at: t(3600),
        })),
        ..head(id, 0, HeadStatus::AwaitingApproval)
    }
}

/// A fitness report counts itself into the open window only at the count it read: the second
/// of two reports that read the same count fails its condition.
pub async fn a_report_counts_only_at_the_count_it_read(h: &Harness) {
    let id = created(h, "alpha").await;
    let evaluating = |seen: u32| shared::domain::Head {
        evaluation: Some(shared::domain::Evaluation {
            generation: 0,
            parent: None,
            baseline_fitness: None,
            started_at: t(0),
            deadline: t(600),
            samples_required: 3,
            plan_step: None,
            predicted_impact: 0.0,
            samples_seen: seen,
            extended: false,
            canary: None,
        }),
        ..head(&id, 0, HeadStatus::Evaluating)
    };
    h.store
        .commit(tx(vec![Write::UpdateHead {
            expected_generation: 0,
            expected_status: HeadStatus::Stable,
            head: evaluating(0),
        }]))
        .await
        .expect("window opens");
    let count = |expected: u32| {
        tx(vec![Write::CountSample {
            expected_generation: 0,
            expected_samples: expected,
            head: evaluating(expected + 1),
        }])
    };
    h.store.commit(count(0)).await.expect("first report");
    assert_condition_failed(h.store.commit(count(0)).await, "count_sample");
    h.store
        .commit(count(1))
        .await
        .expect("the second, read again");
    let stored = h.store.get_head(&id).await.expect("read").expect("head");
    assert_eq!(stored.evaluation.map(|e| e.samples_seen), Some(2));
}
