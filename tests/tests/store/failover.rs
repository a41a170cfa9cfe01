//! Region failover on moto with two regions (docs/architecture.md, "Region failover").
//!
//! moto keeps regions apart, so the global table is two tables of one name and the bucket two
//! buckets, and replication is a test replicator that mirrors one region into the other when
//! told to: late, and holding back what a test wants to arrive later still. Property 10 of the
//! seed, stated as a test: after a failover and a failback, no generation is lost or duplicated
//! and the chain of generations is the same in both regions.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use shared::domain::{Alert, AlertLevel, DnaFile, SystemId};
use shared::engine::LocalEngine;
use shared::local::{LocalHome, RunOptions, Silent, init_system};
use shared::stages::PipelineConfig;
use shared::store::dynamo::aws_sdk_dynamodb::types::AttributeValue;
use shared::store::dynamo::aws_sdk_s3::primitives::ByteStream;
use shared::store::dynamo::{
    DynamoStore, FailoverError, Move, ReplicaView, aws_sdk_dynamodb, aws_sdk_s3, move_writer,
};
use shared::store::{EvolutionStore, StoreError, SystemSettings, Transaction, Write};
use tests::evaluators::Rising;
use tests::moto::{MotoServer, unique_name};

type Item = HashMap<String, AttributeValue>;

const DNA: &str = r#"{"system_id": "svc-failover", "genes": {
  "x": {"type": "int", "value": 5, "min": 0, "max": 100, "risk_weight": 0.1}}}"#;

/// One region's replica of the table and its bucket.
#[derive(Debug, Clone)]
struct Side {
    dynamo: aws_sdk_dynamodb::Client,
    s3: aws_sdk_s3::Client,
    store: Arc<DynamoStore>,
}

impl Side {
    async fn create(region: &'static str, table: &str) -> Self {
        let config = tests::moto::sdk_config(MotoServer::shared().url())
            .await
            .to_builder()
            .region(aws_config::Region::new(region))
            .build();
        let dynamo = aws_sdk_dynamodb::Client::new(&config);
        let s3 = tests::moto::s3_client(&config);
        let store = DynamoStore::new(
            dynamo.clone(),
            s3.clone(),
            table.to_owned(),
            unique_name(&format!("events-{region}")),
        );
        store.create_resources().await.expect("table and bucket");
        Self {
            dynamo,
            s3,
            store: Arc::new(store),
        }
    }

    async fn items(&self) -> Vec<Item> {
        let mut items = Vec::new();
        let mut start = None;
        loop {
            let page = self
                .dynamo
                .scan()
                .table_name(self.store.table())
                .set_exclusive_start_key(start)
                .send()
                .await
                .expect("scan");
            items.extend(page.items().iter().cloned());
            start = page.last_evaluated_key().cloned();
            if start.is_none() {
                return items;
            }
        }
    }

    async fn objects(&self) -> BTreeSet<String> {
        let mut keys = BTreeSet::new();
        let mut token = None;
        loop {
            let page = self
                .s3
                .list_objects_v2()
                .bucket(self.store.bucket())
                .set_continuation_token(token)
                .send()
                .await
                .expect("list");
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_owned)),
            );
            token = page.next_continuation_token().map(str::to_owned);
            if token.is_none() {
                return keys;
            }
        }
    }

    /// A write of this region's own: an alert.
    async fn write(&self, id: &str) -> Result<(), StoreError> {
        self.store
            .commit(Transaction {
                writes: vec![Write::PutAlert {
                    alert: Alert {
                        id: id.to_owned(),
                        level: AlertLevel::Info,
                        kind: "test".into(),
                        message: "a write".into(),
                        system_id: None,
                        at: Utc::now(),
                    },
                }],
                completion: None,
            })
            .await
    }
}

fn key_of(item: &Item) -> String {
    let text = |name: &str| item.get(name).and_then(|v| v.as_s().ok()).cloned();
    format!(
        "{}/{}",
        text("PK").unwrap_or_default(),
        text("SK").unwrap_or_default()
    )
}

/// The writer epoch an item carries (the writer record and its fence copies do).
fn epoch(item: &Item) -> Option<u64> {
    item.get("epoch")
        .and_then(|v| v.as_n().ok())
        .and_then(|n| n.parse().ok())
}

/// Makes `to` a copy of `from`, but for the items and objects `held` names (they keep their old
/// state in `to`): what replication does, late. Deletes go first, so an item `to` writes while
/// this runs survives it; an item carrying a higher writer epoch in `to` is not overwritten
/// (replication's last writer wins: the newer record of the writer).
async fn mirror(from: &Side, to: &Side, held: &dyn Fn(&str) -> bool) {
    let source = from.items().await;
    let source_keys: BTreeSet<String> = source.iter().map(key_of).collect();
    let target: HashMap<String, Item> = to
        .items()
        .await
        .into_iter()
        .map(|i| (key_of(&i), i))
        .collect();
    for (key, item) in &target {
        if !source_keys.contains(key) && !held(key) {
            let pk_sk: Item = item
                .iter()
                .filter(|(name, _)| *name == "PK" || *name == "SK")
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect();
            to.dynamo
                .delete_item()
                .table_name(to.store.table())
                .set_key(Some(pk_sk))
                .send()
                .await
                .expect("replicate a delete");
        }
    }
    for item in source.into_iter().filter(|i| !held(&key_of(i))) {
        let newer = target
            .get(&key_of(&item))
            .and_then(epoch)
            .is_some_and(|theirs| epoch(&item).is_some_and(|ours| theirs > ours));
        if newer {
            continue;
        }
        to.dynamo
            .put_item()
            .table_name(to.store.table())
            .set_item(Some(item))
            .send()
            .await
            .expect("replicate an item");
    }
    let objects = from.objects().await;
    for object in to.objects().await {
        if !objects.contains(&object) && !held(&object) {
            to.s3
                .delete_object()
                .bucket(to.store.bucket())
                .key(&object)
                .send()
                .await
                .expect("replicate an object's delete");
        }
    }
    for object in objects.iter().filter(|o| !held(o)) {
        let body = from
            .s3
            .get_object()
            .bucket(from.store.bucket())
            .key(object)
            .send()
            .await
            .expect("get")
            .body
            .collect()
            .await
            .expect("body")
            .into_bytes();
        to.s3
            .put_object()
            .bucket(to.store.bucket())
            .key(object)
            .body(ByteStream::from(body))
            .send()
            .await
            .expect("replicate an object");
    }
}

/// Evolves the system `generations` more generations in `side`, from simulated `start`; returns
/// where the simulated clock ended.
async fn evolve(
    side: &Side,
    start: chrono::DateTime<Utc>,
    generations: u32,
) -> chrono::DateTime<Utc> {
    let home = LocalHome::new(
        side.store.clone(),
        Arc::new(LocalEngine::new(3)),
        start,
        PipelineConfig::default(),
    );
    let opts = RunOptions {
        generations,
        ..RunOptions::default()
    };
    let id = SystemId::parse("svc-failover").expect("id");
    let report = home
        .runner(&Rising)
        .run(&id, &opts, &Silent)
        .await
        .expect("run");
    assert_eq!(report.generations, generations, "{report:?}");
    shared::clock::Clock::now(home.clock.as_ref())
}

fn plan(timeout: Duration) -> Move {
    Move {
        actor: "arn:aws:iam::123456789012:user/operator".into(),
        since: Utc::now() - chrono::Duration::hours(1),
        timeout,
        poll: Duration::from_millis(100),
        now: Utc::now(),
        force: false,
    }
}

/// Moves the writer from `from` to `to` while a replicator mirrors `from` into `to` every
/// 200 ms, until a mirror made after the fence has carried it (the old writer writes nothing
/// after it, so that mirror is complete).
async fn move_with_replication(from: &Side, to: &Side) -> shared::store::dynamo::Moved {
    let moving = {
        let (from, to) = (from.store.clone(), to.store.clone());
        tokio::spawn(async move { move_writer(&from, &to, &plan(Duration::from_secs(60))).await })
    };
    let target = to.store.region().expect("region").to_owned();
    loop {
        mirror(from, to, &|_| false).await;
        let arrived =
            to.store.writer().await.expect("read").is_some_and(|r| {
                r.writer.is_none() && r.moving_to.as_deref() == Some(target.as_str())
            });
        if arrived || moving.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    moving.await.expect("join").expect("the move completes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_failover_and_failback_no_generation_is_lost_or_duplicated() {
    let table = unique_name("global");
    let home = Side::create("us-east-1", &table).await;
    let replica = Side::create("eu-west-1", &table).await;
    let id = SystemId::parse("svc-failover").expect("id");

    // Generations 0..=2 in the home region.
    let start = Utc::now();
    let setup = LocalHome::new(
        home.store.clone(),
        Arc::new(LocalEngine::new(3)),
        start,
        PipelineConfig::default(),
    );
    let (_, schema, genes) = DnaFile::parse(DNA).expect("dna");
    init_system(
        &setup.deps,
        setup.bus.as_ref(),
        &id,
        schema,
        genes,
        SystemSettings::default(),
    )
    .await
    .expect("init");
    let clock = evolve(&home, start, 2).await;

    // Replication runs late: the head arrives before the generation it points at, and a reader
    // of the replica is told it lags, never handed another generation's DNA.
    let head = home
        .store
        .get_head(&id)
        .await
        .expect("head")
        .expect("a head");
    let newest = format!("SYS#{id}/GEN#{:010}", head.generation);
    mirror(&home, &replica, &|key| key == newest).await;
    match replica.store.read_view(&id).await.expect("read") {
        Some(ReplicaView::Lagging { head: seen, newest }) => {
            assert_eq!(seen.generation, head.generation);
            assert!(newest.is_some_and(|n| n < head.generation), "{newest:?}");
        }
        other => panic!("expected a lagging view, got {other:?}"),
    }
    assert!(matches!(
        home.store.read_view(&id).await.expect("read"),
        Some(ReplicaView::Current { .. })
    ));

    // A move while the replica lags and nothing replicates times out and lifts the fence.
    match move_writer(
        &home.store,
        &replica.store,
        &plan(Duration::from_millis(300)),
    )
    .await
    {
        Err(FailoverError::Lagging {
            catch_up, restored, ..
        }) => {
            assert!(!catch_up.caught_up());
            assert!(restored.contains("writes again"), "{restored}");
        }
        other => panic!("expected a lagging refusal, got {other:?}"),
    }
    home.write("after-a-lifted-fence")
        .await
        .expect("the home region writes again");

    // Failover: the fence stops the home region's writes at once; replication catches up; the
    // replica becomes the writer.
    let moved = move_with_replication(&home, &replica).await;
    assert_eq!(
        (moved.from.as_str(), moved.to.as_str()),
        ("us-east-1", "eu-west-1")
    );
    assert!(
        moved
            .catch_up
            .as_ref()
            .is_some_and(|c| c.caught_up() && c.events > 0)
    );
    match home.write("late-write-in-the-old-region").await {
        Err(StoreError::Fenced(why)) => assert!(why.contains("moving"), "{why}"),
        other => panic!("the old writer must be fenced, got {other:?}"),
    }
    let writer = replica.store.writer().await.expect("read").expect("record");
    assert_eq!(writer.writer.as_deref(), Some("eu-west-1"));
    assert_eq!(writer.home, "us-east-1");
    let alerts = replica.store.list_alerts(None, 50).await.expect("alerts");
    assert!(
        alerts
            .iter()
            .any(|a| a.kind == "writer_moved" && a.message.contains("operator")),
        "the move is audited: {alerts:?}"
    );

    // The replica evolves on; then everything goes back home.
    let clock = evolve(&replica, clock, 2).await;
    mirror(&replica, &home, &|_| false).await;
    match home.write("once-the-promotion-replicated").await {
        Err(StoreError::Fenced(why)) => assert!(why.contains("eu-west-1 is"), "{why}"),
        other => panic!("the old writer must be fenced, got {other:?}"),
    }
    let back = move_with_replication(&replica, &home).await;
    assert_eq!(back.to, "us-east-1");
    match replica.write("late-write-in-the-replica").await {
        Err(StoreError::Fenced(_)) => {}
        other => panic!("the replica must be fenced after failback, got {other:?}"),
    }
    evolve(&home, clock, 1).await;
    mirror(&home, &replica, &|_| false).await;

    // Property 10: one unbroken chain, the same in both regions.
    let chain = |store: Arc<DynamoStore>| {
        let id = id.clone();
        async move {
            store
                .list_generations(&id, None, usize::MAX)
                .await
                .expect("generations")
        }
    };
    let at_home = chain(home.store.clone()).await;
    let at_replica = chain(replica.store.clone()).await;
    let numbers: Vec<u64> = at_home.iter().map(|g| g.generation).collect();
    let expected: Vec<u64> = (0..).take(numbers.len()).collect();
    assert_eq!(numbers, expected, "no generation lost or duplicated");
    assert!(numbers.len() >= 6, "{numbers:?}");
    for generation in &at_home[1..] {
        let parent = generation.parent.expect("a parent");
        assert!(parent < generation.generation, "{generation:?}");
    }
    assert_eq!(
        serde_json::to_value(&at_home).expect("json"),
        serde_json::to_value(&at_replica).expect("json"),
        "the same chain in both regions"
    );
}

/// A move the home region cannot take part in: `--force` promotes the replica on its own copy of
/// the record, and the old region, once replication reaches it, is fenced.
#[tokio::test]
async fn a_forced_move_fences_the_old_region_once_replication_reaches_it() {
    let table = unique_name("global");
    let home = Side::create("us-east-1", &table).await;
    let replica = Side::create("eu-west-1", &table).await;
    home.write("before").await.expect("home writes");
    let moved = move_writer(
        &home.store,
        &replica.store,
        &Move {
            force: true,
            ..plan(Duration::from_secs(1))
        },
    )
    .await
    .expect("forced move");
    assert!(moved.catch_up.is_none());
    replica.write("after").await.expect("the replica writes");
    home.write("still-unaware")
        .await
        .expect("before replication the old region does not know yet");
    mirror(&replica, &home, &|_| false).await;
    assert!(matches!(
        home.write("aware").await,
        Err(StoreError::Fenced(_))
    ));
    let alerts = replica.store.list_alerts(None, 10).await.expect("alerts");
    assert!(
        alerts.iter().any(|a| a.message.contains("--force")),
        "{alerts:?}"
    );
}
