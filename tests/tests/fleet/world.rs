//! A stack with many systems on moto: the DynamoDB store, the SQS/SNS bus (recording what it
//! sent) and a driver that receives a queue's messages and runs each through the pipeline, as
//! the functions' batch handler does.

use std::sync::{Arc, Mutex, OnceLock};

use async_trait::async_trait;
use chrono::{DateTime, Duration, DurationRound, Utc};
use shared::bus::aws::{AwsBus, Destinations, aws_sdk_sns, aws_sdk_sqs};
use shared::bus::{Bus, BusError};
use shared::domain::{
    BudgetMode, Envelope, GeneSchema, Generation, Genes, Head, HeadStatus, Origin, Outgoing, Queue,
    SystemId,
};
use shared::lambda::{handle_sweep, wiring};
use shared::pipeline::{self, Handled};
use shared::stages::{Deps, PipelineConfig};
use shared::store::dynamo::{DynamoStore, aws_sdk_dynamodb};
use shared::store::{
    BudgetState, ControlState, EvolutionStore, SystemRecord, SystemSettings, Transaction, Usage,
    Write,
};
use shared::store::{CostLedger, Reservation, ReserveOutcome, Settlement};
use tests::moto::{MotoServer, sdk_config, unique_name};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Messages handled at once by the driver, like a few concurrent Lambda invocations.
const CONCURRENCY: usize = 8;

/// The start of the current minute plus `k` minutes: the tick times of a test.
pub fn minute(k: i64) -> DateTime<Utc> {
    static BASE: OnceLock<DateTime<Utc>> = OnceLock::new();
    let base = *BASE.get_or_init(|| {
        let now = Utc::now();
        now.duration_trunc(Duration::minutes(1)).unwrap_or(now)
    });
    base + Duration::minutes(k)
}

/// The bus on SQS and SNS, recording every message it sent.
#[derive(Debug)]
pub struct RecordingBus {
    inner: AwsBus,
    sent: Mutex<Vec<Outgoing>>,
}

#[async_trait]
impl Bus for RecordingBus {
    async fn send(&self, messages: &[Outgoing]) -> Result<(), BusError> {
        self.inner.send(messages).await?;
        self.sent
            .lock()
            .expect("recording")
            .extend(messages.iter().cloned());
        Ok(())
    }
}

/// What became of the messages of one drain.
#[derive(Debug, Default, Clone, Copy)]
pub struct Drained {
    /// Messages handled, other than the tick's later pages.
    pub processed: usize,
    /// The tick's later registry pages (`TickPage`) handled.
    pub pages: usize,
    pub duplicates: usize,
    pub failed: usize,
}

pub struct Fleet {
    pub store: Arc<DynamoStore>,
    deps: Arc<Deps>,
    bus: Arc<RecordingBus>,
    sqs: aws_sdk_sqs::Client,
    queues: Destinations,
    /// Bodies of the `SystemTick`s received, for a redelivery.
    steps: Mutex<Vec<String>>,
}

impl Fleet {
    /// `size` systems, each stable and due for a cycle.
    pub async fn new(size: usize) -> Self {
        Self::build(size, PipelineConfig::default()).await
    }

    /// `size` systems with a per-system daily budget of `limit_nano`.
    pub async fn with_system_budget(size: usize, limit_nano: u64) -> Self {
        let mut config = PipelineConfig::default();
        config.budgets.system_daily = Some(limit_nano);
        Self::build(size, config).await
    }

    async fn build(size: usize, config: PipelineConfig) -> Self {
        let aws = sdk_config(MotoServer::shared().url()).await;
        let sqs = aws_sdk_sqs::Client::new(&aws);
        let sns = aws_sdk_sns::Client::new(&aws);
        let dynamo = aws_sdk_dynamodb::Client::new(&aws);
        let s3 = tests::moto::s3_client(&aws);
        let store = DynamoStore::new(
            dynamo,
            s3,
            unique_name("fleet-table"),
            unique_name("fleet-bucket"),
        );
        store.create_resources().await.expect("table and bucket");
        let store = Arc::new(store);
        let mut queues = Destinations::default();
        for q in Queue::ALL {
            let (url, _) = tests::moto::queue(&sqs, q.as_str()).await;
            // A drain handles every message it receives before it receives again; under a
            // loaded machine a batch can outlast the default 30 s, and a message whose
            // visibility ran out would come back as a duplicate no redelivery sent.
            sqs.set_queue_attributes()
                .queue_url(&url)
                .attributes(
                    aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout,
                    "900",
                )
                .send()
                .await
                .expect("visibility timeout");
            queues.queues.insert(q, url);
        }
        queues.topics = tests::moto::topics(&sns).await;
        let bus = Arc::new(RecordingBus {
            inner: AwsBus::new(sqs.clone(), sns, queues.clone()),
            sent: Mutex::new(Vec::new()),
        });
        let deps = Arc::new(wiring::deps(store.clone(), wiring::no_llm(), config));
        let fleet = Self {
            store,
            deps,
            bus,
            sqs,
            queues,
            steps: Mutex::new(Vec::new()),
        };
        fleet.create(size).await;
        fleet
    }

    /// Registers `size` stable systems whose next cycle is a minute overdue.
    async fn create(&self, size: usize) {
        let gate = Arc::new(Semaphore::new(CONCURRENCY));
        let mut tasks = JoinSet::new();
        let now = Utc::now();
        for i in 0..size {
            let store = self.store.clone();
            let gate = gate.clone();
            tasks.spawn(async move {
                let _permit = gate.acquire().await.expect("gate");
                let id = SystemId::parse(format!("svc-{i:05}")).expect("id");
                store
                    .commit(Transaction {
                        writes: vec![create(&id, now)],
                        completion: None,
                    })
                    .await
                    .expect("create system");
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("task");
        }
    }

    /// The scheduler's tick for the minute `at`: `processed` or `duplicate`.
    pub async fn tick(&self, at: DateTime<Utc>) -> &'static str {
        outcome(
            &pipeline::tick(&self.deps, self.bus.as_ref(), at)
                .await
                .expect("tick"),
        )
    }

    /// cost-guard's budget sweep for the minute `at`.
    pub async fn sweep(&self, at: DateTime<Utc>) -> &'static str {
        outcome(
            &handle_sweep(&self.deps, self.bus.as_ref(), at)
                .await
                .expect("sweep"),
        )
    }

    /// Envelopes of one type the bus sent, in order.
    pub fn sent_of(&self, type_name: &str) -> Vec<Envelope> {
        self.bus
            .sent
            .lock()
            .expect("recording")
            .iter()
            .filter(|m| m.envelope.body.type_name() == type_name)
            .map(|m| m.envelope.clone())
            .collect()
    }

    /// Handles every `SystemTick` on the analyze queue, and the tick's later registry pages
    /// (`TickPage`) that send more of them (the cycles they start are counted by the bus, not
    /// run).
    pub async fn drain_steps(&self) -> Drained {
        self.drain(Queue::Analyze, "SystemTick|TickPage").await
    }

    /// Sends `count` of the `SystemTick`s received so far to the analyze queue again, as SQS
    /// may; returns how many.
    pub async fn redeliver_steps(&self, count: usize) -> usize {
        let url = &self.queues.queues[&Queue::Analyze];
        let steps: Vec<String> = self
            .steps
            .lock()
            .expect("steps")
            .iter()
            .take(count)
            .cloned()
            .collect();
        for (i, chunk) in steps.chunks(10).enumerate() {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(j, body)| {
                    aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                        .id(format!("r{i}-{j}"))
                        .message_body(body)
                        .build()
                        .expect("entry")
                })
                .collect();
            self.sqs
                .send_message_batch()
                .queue_url(url)
                .set_entries(Some(entries))
                .send()
                .await
                .expect("redeliver");
        }
        steps.len()
    }

    /// Sets the budget mode as cost-guard would.
    pub async fn set_mode(&self, mode: BudgetMode, at: DateTime<Utc>) {
        let current = self.store.budget_state().await.expect("mode").mode;
        self.store
            .commit(Transaction {
                writes: vec![Write::SetBudgetMode {
                    expected: current,
                    state: BudgetState {
                        mode,
                        changed_at: Some(at),
                        reason: "test".into(),
                    },
                }],
                completion: None,
            })
            .await
            .expect("set mode");
    }

    /// Receives every visible message of `queue` and handles those of the types `wanted` (names
    /// separated by `|`) through the pipeline (deleting each once handled); others are deleted
    /// unhandled.
    pub async fn drain(&self, queue: Queue, wanted: &str) -> Drained {
        let url = self.queues.queues[&queue].clone();
        let mut drained = Drained::default();
        loop {
            let messages = tests::moto::receive(&self.sqs, &url).await;
            if messages.is_empty() {
                return drained;
            }
            let gate = Arc::new(Semaphore::new(CONCURRENCY));
            let mut tasks = JoinSet::new();
            for message in messages {
                let body = message.body().unwrap_or_default().to_owned();
                let handle = wanted
                    .split('|')
                    .any(|w| body.contains(&format!("\"type\":\"{w}\"")));
                if body.contains("\"type\":\"SystemTick\"") {
                    self.steps.lock().expect("steps").push(body.clone());
                }
                let (deps, bus, sqs, url, gate) = (
                    self.deps.clone(),
                    self.bus.clone(),
                    self.sqs.clone(),
                    url.clone(),
                    gate.clone(),
                );
                tasks.spawn(async move {
                    let _permit = gate.acquire().await.expect("gate");
                    let page = body.contains("\"type\":\"TickPage\"");
                    let result = if handle {
                        pipeline::handle_raw(&deps, bus.as_ref(), queue, &body)
                            .await
                            .map(|handled| Some((page, handled)))
                    } else {
                        Ok(None)
                    };
                    if result.is_ok() {
                        sqs.delete_message()
                            .queue_url(&url)
                            .receipt_handle(message.receipt_handle().unwrap_or_default())
                            .send()
                            .await
                            .expect("delete");
                    }
                    result
                });
            }
            while let Some(done) = tasks.join_next().await {
                match done.expect("task") {
                    Ok(None) => {}
                    Ok(Some((true, Handled::Processed { .. }))) => drained.pages += 1,
                    Ok(Some((false, Handled::Processed { .. }))) => drained.processed += 1,
                    Ok(Some((_, Handled::Duplicate { .. }))) => drained.duplicates += 1,
                    Err(e) => {
                        eprintln!("failed: {e}");
                        drained.failed += 1;
                    }
                }
            }
        }
    }

    /// Records a settled call of `cost_nano` for every system, through the ledger port.
    pub async fn spend_on_each(&self, cost_nano: u64) {
        let now = Utc::now();
        for system in self.store.list_systems().await.expect("registry") {
            let call_id = format!("call-{}", system.system_id);
            let reservation = Reservation {
                call_id: call_id.clone(),
                system_id: system.system_id.clone(),
                model_id: "test-model".into(),
                amount_nano: cost_nano,
                at: now,
                limits: Vec::new(),
            };
            assert_eq!(
                self.store.reserve(&reservation).await.expect("reserve"),
                ReserveOutcome::Reserved
            );
            self.store
                .settle(&Settlement {
                    call_id,
                    system_id: system.system_id.clone(),
                    model_id: "test-model".into(),
                    reserved_nano: cost_nano,
                    reserved_at: now,
                    actual_nano: cost_nano,
                    usage: Usage::default(),
                    at: now,
                })
                .await
                .expect("settle");
        }
    }
}

fn outcome(handled: &Handled) -> &'static str {
    match handled {
        Handled::Processed { .. } => "processed",
        Handled::Duplicate { .. } => "duplicate",
    }
}

/// A stable system at generation 0 whose next cycle was due a minute ago.
fn create(id: &SystemId, now: DateTime<Utc>) -> Write {
    let genes = Genes::new();
    Write::CreateSystem {
        system: SystemRecord {
            system_id: id.clone(),
            schema: GeneSchema::new(),
            settings: SystemSettings::default(),
            created_at: now,
            next_cycle_at: now - Duration::minutes(1),
            evaluation_deadline: None,
            cost_mode: shared::domain::BudgetMode::Normal,
            approval_expires_at: None,
            budget_alerts: Vec::new(),
            version: 0,
        },
        head: Head {
            system_id: id.clone(),
            generation: 0,
            status: HeadStatus::Stable,
            stable_generation: 0,
            stable_fitness: Some(1.0),
            evaluation: None,
            rollback_streak: 0,
            updated_at: now,
            approval: None,
        },
        generation: Generation::new(id.clone(), 0, None, genes, Origin::Initial, now),
    }
}
