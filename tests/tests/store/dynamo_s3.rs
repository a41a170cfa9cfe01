//! What only the DynamoDB and S3 adapter can show: the items and objects behind the port, on
//! moto's server with the real SDK clients.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Datelike, Utc};
use shared::clock::SimClock;
use shared::cost::{BudgetLimit, LedgerScope, PeriodKey, Totals};
use shared::domain::{
    BudgetPeriod, BudgetScope, GeneName, GeneValue, Generation, Genes, HeadStatus, Origin, Role,
    SystemId, checksum,
};
use shared::store::dynamo::aws_sdk_dynamodb::types::AttributeValue;
use shared::store::dynamo::aws_sdk_s3::primitives::ByteStream;
use shared::store::{Claim, ControlState, EvolutionStore, StoreError, Transaction, Usage, Write};
use shared::store::{CostLedger, Reservation, ReserveOutcome, SettleOutcome, Settlement};

use crate::fixtures::{
    assert_condition_failed, completion, create_system, cursor, decision, event, fitness,
    generation, head, outgoing, sys, system_record, t, tx,
};
use crate::harness::Dynamo;

type Item = HashMap<String, AttributeValue>;

const DAY: i64 = 86_400;

/// Every item of a partition, read behind the store's back.
async fn partition(d: &Dynamo, pk: &str) -> Vec<Item> {
    d.dynamo_client()
        .query()
        .table_name(&d.table)
        .key_condition_expression("PK = :pk")
        .expression_attribute_values(":pk", AttributeValue::S(pk.to_owned()))
        .consistent_read(true)
        .send()
        .await
        .expect("query the partition")
        .items
        .unwrap_or_default()
}

fn text<'a>(item: &'a Item, name: &str) -> &'a str {
    match item.get(name) {
        Some(AttributeValue::S(value)) => value,
        other => panic!("attribute {name} is not a string: {other:?}"),
    }
}

fn sort_keys(items: &[Item]) -> Vec<String> {
    items.iter().map(|i| text(i, "SK").to_owned()).collect()
}

async fn objects(d: &Dynamo, prefix: &str) -> BTreeSet<String> {
    let output = d
        .s3_client()
        .list_objects_v2()
        .bucket(&d.bucket)
        .prefix(prefix)
        .send()
        .await
        .expect("list objects");
    output
        .contents()
        .iter()
        .filter_map(|o| o.key().map(ToOwned::to_owned))
        .collect()
}

async fn object(d: &Dynamo, key: &str) -> String {
    let output = d
        .s3_client()
        .get_object()
        .bucket(&d.bucket)
        .key(key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("object {key} is missing: {e}"));
    let bytes = output
        .body
        .collect()
        .await
        .expect("read object")
        .into_bytes();
    String::from_utf8(bytes.to_vec()).expect("utf-8 body")
}

async fn put_object(d: &Dynamo, key: &str, body: String) {
    d.s3_client()
        .put_object()
        .bucket(&d.bucket)
        .key(key)
        .body(ByteStream::from(body.into_bytes()))
        .send()
        .await
        .expect("put object");
}

fn event_key(id: &SystemId, at: DateTime<Utc>, event_id: &str) -> String {
    format!(
        "evolution-events/system={id}/{:04}/{:02}/{event_id}.json",
        at.year(),
        at.month()
    )
}

fn ids(events: &[shared::domain::EvolutionEvent]) -> Vec<&str> {
    events.iter().map(|e| e.id.as_str()).collect()
}

/// A generation's writes fail on their last condition because of an item injected behind the
/// store's back: nothing of the generation lands (no item, no body, no completion). Once the
/// cause is gone, the redelivered transaction completes the generation.
#[tokio::test]
async fn injected_failure_mid_generation_leaves_nothing_and_the_redelivery_completes_it() {
    let d = Dynamo::create().await;
    let store = d.store();
    let id = sys("alpha");
    store
        .commit(tx(vec![create_system(&id)]))
        .await
        .expect("create");
    let mut generation_tx = Transaction {
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
            Write::UpdateHead {
                expected_generation: 0,
                expected_status: HeadStatus::Stable,
                head: head(&id, 1, HeadStatus::Evaluating),
            },
            Write::PutCursor {
                expected_version: None,
                cursor: cursor(&id, 0),
            },
        ],
        completion: Some(completion(
            "msg-1",
            "hash",
            vec![outgoing(&id, 1)],
            t(3_600),
        )),
    };
    assert_eq!(
        store
            .claim("msg-1", "hash", t(0), t(60))
            .await
            .expect("claim"),
        Claim::Claimed
    );

    // The injected failure: a cursor the transaction expects not to exist.
    let injected = serde_json::to_string(&cursor(&id, 3)).expect("json");
    d.dynamo_client()
        .put_item()
        .table_name(&d.table)
        .item("PK", AttributeValue::S("SYS#alpha".into()))
        .item("SK", AttributeValue::S("CURSOR".into()))
        .item("version", AttributeValue::N("3".into()))
        .item("body", AttributeValue::S(injected))
        .send()
        .await
        .expect("inject a cursor");
    assert_condition_failed(store.commit(generation_tx.clone()).await, "write 4");

    assert_eq!(
        sort_keys(&partition(&d, "SYS#alpha").await),
        ["CURSOR", "GEN#0000000000", "HEAD"],
        "no item of the refused generation is left"
    );
    assert_eq!(
        store.get_head(&id).await.expect("read"),
        Some(head(&id, 0, HeadStatus::Stable))
    );
    assert_eq!(store.get_generation(&id, 1).await.expect("read"), None);
    assert!(
        store
            .list_events(&id, None, 10)
            .await
            .expect("read")
            .is_empty()
    );
    assert_eq!(store.get_decision(&id, "dec-1").await.expect("read"), None);
    assert!(
        objects(&d, "evolution-events/").await.is_empty(),
        "the body written before the refused transaction is removed again"
    );
    assert_eq!(
        store
            .claim("msg-1", "hash", t(1), t(61))
            .await
            .expect("claim"),
        Claim::InProgress { until: t(60) },
        "no completion was stored; the claim is still held"
    );

    // The cause goes away and the message comes back: the same transaction completes.
    d.dynamo_client()
        .delete_item()
        .table_name(&d.table)
        .key("PK", AttributeValue::S("SYS#alpha".into()))
        .key("SK", AttributeValue::S("CURSOR".into()))
        .send()
        .await
        .expect("remove the injected cursor");
    store
        .commit(generation_tx.clone())
        .await
        .expect("the redelivered transaction commits");
    assert_eq!(
        store.get_generation(&id, 1).await.expect("read"),
        Some(generation(&id, 1))
    );
    assert_eq!(
        store.get_head(&id).await.expect("read"),
        Some(head(&id, 1, HeadStatus::Evaluating))
    );
    assert_eq!(
        ids(&store.list_events(&id, None, 10).await.expect("read")),
        ["evt-1"]
    );
    assert!(
        store
            .get_decision(&id, "dec-1")
            .await
            .expect("read")
            .is_some()
    );
    assert_eq!(
        store.get_cursor(&id).await.expect("read"),
        Some(cursor(&id, 0))
    );
    assert_eq!(
        store
            .claim("msg-1", "hash", t(2), t(62))
            .await
            .expect("claim"),
        Claim::Completed {
            outgoing: vec![outgoing(&id, 1)]
        }
    );
    // Committed once: a late duplicate fails its first condition and changes nothing.
    generation_tx.completion = None;
    assert_condition_failed(store.commit(generation_tx).await, "write 0");
}

/// Every event index item names an S3 object that exists and holds the same compact JSON; a
/// refused transaction leaves no body behind.
#[tokio::test]
async fn every_event_index_item_points_at_an_existing_s3_body() {
    let d = Dynamo::create().await;
    let store = d.store();
    let id = sys("alpha");
    store
        .commit(tx(vec![create_system(&id)]))
        .await
        .expect("create");
    let mut upserted = event(&id, "e1", 0);
    upserted.detail = Some("second write".into());
    for writes in [
        vec![
            Write::PutEvent {
                event: event(&id, "e1", 0),
            },
            Write::PutEvent {
                event: event(&id, "e2", -40 * DAY),
            },
        ],
        vec![Write::PutEvent {
            event: event(&id, "e3", 10 * DAY),
        }],
        vec![Write::PutEvent { event: upserted }],
    ] {
        store.commit(tx(writes)).await.expect("events");
    }
    let refused = tx(vec![
        Write::PutEvent {
            event: event(&id, "e4", 5),
        },
        Write::UpdateHead {
            expected_generation: 9,
            expected_status: HeadStatus::Stable,
            head: head(&id, 10, HeadStatus::Stable),
        },
    ]);
    assert_condition_failed(store.commit(refused).await, "write 1");
    // A refused rewrite of a committed event leaves the committed body in S3.
    let mut rewrite = event(&id, "e1", 0);
    rewrite.detail = Some("uncommitted".into());
    let refused = tx(vec![
        Write::PutEvent { event: rewrite },
        Write::PutGeneration {
            generation: generation(&id, 0),
        },
    ]);
    assert_condition_failed(store.commit(refused).await, "write 1");

    let index: Vec<Item> = partition(&d, "SYS#alpha")
        .await
        .into_iter()
        .filter(|i| text(i, "SK").starts_with("EVT#"))
        .collect();
    assert_eq!(index.len(), 3);
    let mut keys = BTreeSet::new();
    for item in &index {
        let key = text(item, "s3_key");
        let body = object(&d, key).await;
        assert_eq!(body, text(item, "body"), "{key} holds the indexed event");
        assert!(!body.contains('\n'), "{key} is one line");
        let stored: shared::domain::EvolutionEvent =
            serde_json::from_str(&body).expect("event JSON");
        assert_eq!(key, event_key(&id, stored.timestamp, &stored.id));
        assert!(matches!(item.get("ttl"), Some(AttributeValue::N(_))));
        keys.insert(key.to_owned());
    }
    assert_eq!(
        objects(&d, "evolution-events/system=alpha/").await,
        keys,
        "one body per index item, no orphan"
    );
    assert!(keys.contains("evolution-events/system=alpha/2026/10/e2.json"));
    assert!(
        object(&d, "evolution-events/system=alpha/2026/11/e1.json")
            .await
            .contains("second write"),
        "a rewrite overwrites the same object"
    );
}

/// With the clock at `t(0)`, events older than 30 days come from the S3 month prefixes (a body
/// changed there shows), newer ones from the DynamoDB index copies.
#[tokio::test]
async fn events_older_than_30_days_are_read_from_s3_month_prefixes() {
    let d = Dynamo::create().await;
    let store = d.store().with_clock(Arc::new(SimClock::new(t(0))));
    let id = sys("alpha");
    let events = [
        ("old90", -90 * DAY),
        ("old45", -45 * DAY),
        ("old31", -31 * DAY),
        ("new1", -DAY),
    ];
    let mut writes = vec![create_system(&id)];
    writes.extend(events.iter().map(|(name, secs)| Write::PutEvent {
        event: event(&id, name, *secs),
    }));
    store.commit(tx(writes)).await.expect("events");

    // Change two bodies in S3 behind the store's back: only the old one is read from there.
    for (name, secs) in [("old45", -45 * DAY), ("new1", -DAY)] {
        let mut changed = event(&id, name, secs);
        changed.detail = Some("from s3".into());
        put_object(
            &d,
            &event_key(&id, t(secs), name),
            serde_json::to_string(&changed).expect("json"),
        )
        .await;
    }

    let listed = store
        .list_events(&id, Some(t(-60 * DAY)), 10)
        .await
        .expect("list");
    assert_eq!(ids(&listed), ["old45", "old31", "new1"]);
    assert_eq!(listed[0].detail.as_deref(), Some("from s3"));
    assert_eq!(listed[2].detail, None, "recent events come from DynamoDB");
    assert_eq!(
        ids(&store.list_events(&id, None, 10).await.expect("list")),
        ["old90", "old45", "old31", "new1"]
    );
    assert_eq!(
        ids(&store
            .list_events(&id, Some(t(-100 * DAY)), 2)
            .await
            .expect("list")),
        ["old90", "old45"]
    );
    let recent = store
        .list_events(&id, Some(t(-20 * DAY)), 10)
        .await
        .expect("list");
    assert_eq!(ids(&recent), ["new1"]);
    assert_eq!(recent[0].detail, None);

    // A body older than the index items' 365 days is history on its own; a body without an
    // index item inside that span never committed and is not listed.
    let ancient = event(&id, "ancient", -400 * DAY);
    let orphan = event(&id, "orphan", -50 * DAY);
    for body in [&ancient, &orphan] {
        put_object(
            &d,
            &event_key(&id, body.timestamp, &body.id),
            serde_json::to_string(body).expect("json"),
        )
        .await;
    }
    assert_eq!(
        ids(&store.list_events(&id, None, 10).await.expect("list")),
        ["ancient", "old90", "old45", "old31", "new1"]
    );
    let months: Vec<String> = objects(&d, "evolution-events/system=alpha/")
        .await
        .into_iter()
        .map(|key| {
            key.rsplit_once('/')
                .map(|(folder, _)| folder.to_owned())
                .expect("folder")
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(
        months,
        [
            "evolution-events/system=alpha/2025/10",
            "evolution-events/system=alpha/2026/08",
            "evolution-events/system=alpha/2026/10",
            "evolution-events/system=alpha/2026/11",
        ]
    );
}

/// Genes are one JSON string attribute: `2.50` and `2.0` stay floats and the checksum matches.
#[tokio::test]
async fn genes_round_trip_exactly_through_the_json_string_attribute() {
    let d = Dynamo::create().await;
    let store = d.store();
    let id = sys("alpha");
    let gene = |name: &str| GeneName::parse(name).expect("gene name");
    let genes: Genes = [
        (gene("timeout_s"), GeneValue::Float(2.50)),
        (gene("ratio"), GeneValue::Float(2.0)),
        (gene("cache_size_mb"), GeneValue::Int(256)),
        (gene("compression"), GeneValue::Choice("lz4".into())),
        (gene("prefetch"), GeneValue::Bool(false)),
    ]
    .into_iter()
    .collect();
    let first = Generation::new(id.clone(), 0, None, genes, Origin::Initial, t(0));
    store
        .commit(tx(vec![Write::CreateSystem {
            system: system_record(&id),
            head: head(&id, 0, HeadStatus::Stable),
            generation: first.clone(),
        }]))
        .await
        .expect("create");

    let stored = store
        .get_generation(&id, 0)
        .await
        .expect("read")
        .expect("generation 0");
    assert_eq!(stored, first);
    assert_eq!(checksum(&stored.genes), first.checksum);
    assert_eq!(stored.genes[&gene("ratio")], GeneValue::Float(2.0));
    assert_eq!(stored.genes[&gene("timeout_s")], GeneValue::Float(2.5));

    let item = partition(&d, "SYS#alpha")
        .await
        .into_iter()
        .find(|i| text(i, "SK") == "GEN#0000000000")
        .expect("generation item");
    let body = text(&item, "body");
    assert!(body.contains(r#""ratio":2.0"#), "{body}");
    assert!(body.contains(r#""timeout_s":2.5"#), "{body}");
    assert!(
        item.values().all(|v| !matches!(v, AttributeValue::M(_))),
        "no map attribute: DynamoDB would normalise its numbers"
    );
}

fn reservation(
    call_id: &str,
    system: &SystemId,
    amount: u64,
    limits: Vec<BudgetLimit>,
) -> Reservation {
    Reservation {
        call_id: call_id.to_owned(),
        system_id: system.clone(),
        model_id: "model-a".to_owned(),
        amount_nano: amount,
        at: t(0),
        limits,
    }
}

fn counter_number(item: &Item, name: &str) -> i128 {
    match item.get(name) {
        Some(AttributeValue::N(value)) => value.parse().expect("integer"),
        other => panic!("{name} is not a number: {other:?}"),
    }
}

/// Twenty tasks, each with its own clients (as separate Lambda instances), race for a budget:
/// the conditional counter updates never let the committed amount pass a limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_reservations_from_20_tasks_never_overshoot() {
    let d = Dynamo::create().await;
    let id = sys("alpha");
    let limits = vec![
        BudgetLimit {
            scope: BudgetScope::Global,
            period: BudgetPeriod::Day,
            limit_nano: 50,
        },
        BudgetLimit {
            scope: BudgetScope::System,
            period: BudgetPeriod::Day,
            limit_nano: 40,
        },
    ];
    let mut tasks = Vec::new();
    for i in 0..20 {
        let store = d.store();
        let held = reservation(&format!("call-{i}"), &id, 3, limits.clone());
        tasks.push(tokio::spawn(async move { store.reserve(&held).await }));
    }
    let mut reserved = 0;
    for task in tasks {
        match task.await.expect("task").expect("reserve") {
            ReserveOutcome::Reserved => reserved += 1,
            ReserveOutcome::Refused {
                scope,
                committed_nano,
                limit_nano,
                ..
            } => {
                assert_eq!(scope, BudgetScope::System);
                assert_eq!(limit_nano, 40);
                assert!(
                    committed_nano + 3 > 40,
                    "refused with room: {committed_nano}"
                );
            }
        }
    }
    assert_eq!(reserved, 13, "40 / 3 rounds down to 13 holds");
    let store = d.store();
    let day = PeriodKey::of(BudgetPeriod::Day, t(0));
    for scope in [LedgerScope::Total, LedgerScope::System(id.clone())] {
        assert_eq!(
            store.totals(day, &scope).await.expect("totals"),
            Totals {
                spent_nano: 0,
                reserved_nano: 39,
                calls: 0
            }
        );
    }
    let counter = partition(&d, &day.key())
        .await
        .into_iter()
        .find(|i| text(i, "SK") == "SYS#alpha")
        .expect("system counter");
    assert_eq!(counter_number(&counter, "committed"), 39);
    assert_eq!(counter_number(&counter, "reserved"), 39);
}

/// The same settlement delivered eight times at once and again later is counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_repeated_settlement_counts_once() {
    let d = Dynamo::create().await;
    let id = sys("alpha");
    let held = reservation("call-1", &id, 100, Vec::new());
    assert_eq!(
        d.store().reserve(&held).await.expect("reserve"),
        ReserveOutcome::Reserved
    );
    let settled = Settlement {
        call_id: held.call_id.clone(),
        system_id: id.clone(),
        model_id: held.model_id.clone(),
        reserved_nano: 100,
        reserved_at: held.at,
        actual_nano: 37,
        usage: Usage {
            input_tokens: 1_000,
            output_tokens: 100,
            cache_read_tokens: 0,
            cache_write_tokens: 0,
        },
        at: t(5),
    };
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (store, settled) = (d.store(), settled.clone());
        tasks.push(tokio::spawn(async move { store.settle(&settled).await }));
    }
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.expect("task").expect("settle"));
    }
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| **o == SettleOutcome::Settled)
            .count(),
        1,
        "{outcomes:?}"
    );
    let store = d.store();
    assert_eq!(
        store.settle(&settled).await.expect("settle again"),
        SettleOutcome::AlreadySettled
    );
    let day = PeriodKey::of(BudgetPeriod::Day, t(0));
    let month = PeriodKey::of(BudgetPeriod::Month, t(0));
    for period in [day, month] {
        for scope in [
            LedgerScope::Total,
            LedgerScope::System(id.clone()),
            LedgerScope::Model("model-a".into()),
        ] {
            assert_eq!(
                store.totals(period, &scope).await.expect("totals"),
                Totals {
                    spent_nano: 37,
                    reserved_nano: 0,
                    calls: 1
                },
                "{} {}",
                period.key(),
                scope.key()
            );
        }
    }
    assert_eq!(store.entries(None).await.expect("entries").len(), 1);
    assert_eq!(partition(&d, "LEDGER#call-1").await.len(), 1);
}

/// A transaction needing more than DynamoDB's 100 items is refused before anything is written.
#[tokio::test]
async fn a_transaction_over_100_items_is_invalid() {
    let d = Dynamo::create().await;
    let store = d.store();
    let id = sys("alpha");
    store
        .commit(tx(vec![create_system(&id)]))
        .await
        .expect("create");
    let writes: Vec<Write> = (0..101)
        .map(|i| Write::PutFitnessSample {
            sample: fitness(&id, 1, &format!("s{i:03}"), i, 0.5),
        })
        .collect();
    match store.commit(tx(writes)).await {
        Err(StoreError::Invalid(message)) => assert!(message.contains("100"), "{message}"),
        other => panic!("expected Invalid, got {other:?}"),
    }
    assert!(store.list_fitness(&id, 1).await.expect("read").is_empty());
}

/// Purging a system deletes its partition, its calls in the all-systems listing and its S3
/// bodies; the spend stays.
#[tokio::test]
async fn purging_a_system_deletes_its_items_and_bodies() {
    let d = Dynamo::create().await;
    let store = d.store();
    let id = sys("alpha");
    store
        .commit(Transaction {
            writes: vec![
                create_system(&id),
                Write::PutEvent {
                    event: event(&id, "e1", -40 * DAY),
                },
                Write::PutEvent {
                    event: event(&id, "e2", 0),
                },
                Write::PutLlmCall {
                    call: crate::fixtures::llm_call(&id, "call-1", 0),
                },
            ],
            completion: Some(completion("msg-1", "hash", Vec::new(), t(3_600))),
        })
        .await
        .expect("set up");
    let held = reservation("call-1", &id, 10, Vec::new());
    store.reserve(&held).await.expect("reserve");
    assert_eq!(objects(&d, "evolution-events/system=alpha/").await.len(), 2);

    store.purge_system(&id).await.expect("purge");
    assert!(partition(&d, "SYS#alpha").await.is_empty());
    assert!(partition(&d, "IDEMP#msg-1").await.is_empty());
    assert!(
        partition(&d, &format!("CALLDAY#{}", t(0).format("%Y-%m-%d")))
            .await
            .is_empty()
    );
    assert!(
        objects(&d, "evolution-events/system=alpha/")
            .await
            .is_empty()
    );
    assert_eq!(store.get_system(&id).await.expect("read"), None);
    assert_eq!(
        store
            .totals(PeriodKey::of(BudgetPeriod::Day, t(0)), &LedgerScope::Total)
            .await
            .expect("totals")
            .reserved_nano,
        10
    );
}

/// Predictions fed by concurrent transactions all reach the performance record: the
/// read-modify-write is retried when another writer got there first.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_predictions_are_all_recorded() {
    let d = Dynamo::create().await;
    let mut tasks = Vec::new();
    for i in 0..10_u32 {
        let store = d.store();
        tasks.push(tokio::spawn(async move {
            store
                .commit(tx(vec![Write::RecordPrediction {
                    model_id: "model-a".into(),
                    role: Role::Strategize,
                    predicted: f64::from(i),
                    actual: 0.0,
                }]))
                .await
        }));
    }
    for task in tasks {
        task.await.expect("task").expect("commit");
    }
    let performance = d.store().performance().await.expect("read");
    assert_eq!(
        performance
            .stats("model-a", Role::Strategize)
            .map(|s| s.predictions),
        Some(10)
    );
}

/// A response-cache entry is its own `CACHE#<key hash>` partition with a numeric `ttl` at its
/// expiry, so DynamoDB's TTL removes it eventually; reads never rely on that.
#[tokio::test]
async fn a_cached_answer_is_a_cache_partition_with_a_ttl() {
    let d = Dynamo::create().await;
    let store = d.store();
    let entry = crate::control::cached_answer("0123abcd", "model-a", Role::Decide, 0, 900);
    store.put_cached_answer(&entry).await.expect("put");

    let items = partition(&d, "CACHE#0123abcd").await;
    assert_eq!(items.len(), 1);
    assert_eq!(text(&items[0], "SK"), "RECORD");
    let ttl = match items[0].get("ttl") {
        Some(AttributeValue::N(n)) => n.parse::<i64>().expect("a number"),
        other => panic!("ttl is not a number: {other:?}"),
    };
    assert_eq!(ttl, t(900).timestamp());
    assert_eq!(
        store.cached_answer("0123abcd", t(1)).await.expect("read"),
        Some(entry)
    );
}

/// Each LLM call record is archived to S3 as one compact JSON line under a key made of its
/// month and id, so Athena can total spend per model; a retried transaction overwrites the
/// same object instead of adding another.
#[tokio::test]
async fn llm_calls_are_archived_to_s3_by_month_and_a_retry_overwrites_them() {
    let d = Dynamo::create().await;
    let store = d.store();
    let id = sys("archived");
    let call = crate::fixtures::llm_call(&id, "call-archived-1", 0);
    let writes = || vec![Write::PutLlmCall { call: call.clone() }];
    store.commit(tx(writes())).await.expect("commit the call");
    store.commit(tx(writes())).await.expect("retry the commit");

    let at = call.at;
    let key = format!(
        "llm-calls/year={:04}/month={:02}/call-archived-1.json",
        at.year(),
        at.month()
    );
    assert_eq!(
        objects(&d, "llm-calls/").await,
        BTreeSet::from([key.clone()])
    );
    let body = object(&d, &key).await;
    assert!(!body.contains('\n'), "one line: {body}");
    let archived: shared::store::LlmCallRecord = serde_json::from_str(&body).expect("JSON");
    assert_eq!(archived, call);
    let value: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    for column in [
        "call_id",
        "system_id",
        "role",
        "model_id",
        "usage",
        "cost_nano_usd",
        "at",
    ] {
        assert!(value.get(column).is_some(), "{column} in {body}");
    }
    // A purge leaves the archive: spent money stays on record, like the ledger.
    store.purge_system(&id).await.expect("purge");
    assert_eq!(objects(&d, "llm-calls/").await.len(), 1);
}
