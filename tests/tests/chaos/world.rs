//! The chaos world: a stack on moto (table, bucket, the six queues and their dead-letter queues,
//! the two topics), the Converse stub, the fault proxy in front of both, several
//! `evolve worker --store aws` processes pointed at the proxy, the scheduler's tick and the
//! budget sweep invoked through the analyze and cost-guard handlers (also through the proxy),
//! and the running systems, played by this process: they read `DnaUpdated` from a queue
//! subscribed to `evolution-events` and report fitness. The test's own reads go to moto
//! directly, never through the proxy, so what it checks is what the stand-ins hold.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use chrono::{DateTime, DurationRound, Utc};
use rand::{Rng as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};
use shared::bus::{Bus, BusError};
use shared::consumer::dead_letters::REASON_ATTRIBUTE;
use shared::cost::{LedgerScope, PeriodKey};
use shared::domain::{
    Body, BudgetPeriod, Destination, DnaFile, Envelope, HeadStatus, Origin, Outgoing, Queue,
    SystemId, Topic,
};
use shared::engine::LocalEngine;
use shared::lambda::config::{self as function_vars, AnalyzeConfig, CostGuardConfig};
use shared::lambda::{FunctionDeps, wiring};
use shared::local::{LocalHome, init_system};
use shared::stages::PipelineConfig;
use shared::store::dynamo::DynamoStore;
use shared::store::{CostLedger, RESERVATION_HOLD, ReclaimOutcome};
use shared::store::{EvolutionStore, SystemSettings};
use shared::worker::config as worker_vars;
use tests::bedrock_stub::{Reply, StubServer};
use tests::fault_proxy::{Backends, FaultPlan, FaultProxy, Rates, Service};
use tests::moto::{MotoServer, sdk_config, unique_name};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Systems registered or read at once.
const CONCURRENCY: usize = 8;

/// A generous global budget: reservations go through their conditional path without refusing.
const DAILY_BUDGET_NANO_USD: u64 = 1_000 * 1_000_000_000;

/// The size and shape of a run, from `CHAOS_*` variables (CI defaults otherwise).
#[derive(Debug, Clone)]
pub struct Size {
    pub systems: usize,
    /// Generations each system is driven through (the running system reports fitness for
    /// generations up to this one and then stops, so the fleet comes to rest).
    pub generations: u64,
    pub workers: usize,
    pub kills: usize,
    pub seed: u64,
    /// How long the faulty phase may last before the run settles regardless.
    pub chaos_for: Duration,
}

impl Size {
    pub fn from_env() -> Self {
        fn var<T: std::str::FromStr>(name: &str, default: T) -> T {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        }
        Self {
            systems: var("CHAOS_SYSTEMS", 20),
            generations: var("CHAOS_GENERATIONS", 3),
            workers: var("CHAOS_WORKERS", 3),
            kills: var("CHAOS_KILLS", 4),
            seed: var("CHAOS_SEED", 7),
            chaos_for: Duration::from_secs(var("CHAOS_SECONDS", 75)),
        }
    }
}

/// The faults of a run: every AWS operation a few percent of the time, Bedrock more often.
pub fn fault_plan(seed: u64) -> FaultPlan {
    let aws = Rates {
        throttle: 0.02,
        server_error: 0.015,
        timeout: 0.003,
        drop: 0.01,
        drop_after_forward: 0.02,
    };
    let bedrock = Rates {
        throttle: 0.05,
        server_error: 0.02,
        timeout: 0.005,
        drop: 0.01,
        drop_after_forward: 0.02,
    };
    let mut plan = FaultPlan::none(seed);
    plan.timeout = Duration::from_millis(1_500);
    plan.service(Service::DynamoDb, aws)
        .service(Service::Sqs, aws)
        .service(Service::Sns, aws)
        .service(Service::S3, aws)
        .service(Service::Bedrock, bedrock)
}

/// The bus of a function invoked in this process, recording what it sent (the tick's and the
/// sweep's fan-out is sent before their commit and kept in no outbox; this is how the
/// invariants know it was sent).
#[derive(Debug)]
struct RecordingBus {
    inner: Arc<dyn Bus>,
    sent: Arc<Mutex<Vec<Outgoing>>>,
}

#[async_trait]
impl Bus for RecordingBus {
    async fn send(&self, messages: &[Outgoing]) -> Result<(), BusError> {
        self.inner.send(messages).await?;
        self.sent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(messages.iter().cloned());
        Ok(())
    }
}

/// One `evolve worker` process (killed when dropped), with its logs kept across restarts.
pub struct Worker {
    child: Child,
    args: Vec<String>,
    stderr: PathBuf,
}

impl Worker {
    pub fn sigkill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn sigterm(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub async fn exit_within(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What the running systems saw on `evolution-events`.
#[derive(Debug, Default)]
pub struct Seen {
    /// Envelope ids delivered, with how often.
    pub events: HashMap<String, u32>,
    /// Fitness reports sent, by envelope id.
    pub reports: BTreeSet<String>,
}

pub struct World {
    pub moto: &'static MotoServer,
    pub stub: StubServer,
    pub proxy: FaultProxy,
    /// The store on moto directly: what the invariants read.
    pub store: Arc<DynamoStore>,
    pub sqs: aws_sdk_sqs::Client,
    dynamo: aws_sdk_dynamodb::Client,
    s3: aws_sdk_s3::Client,
    table: String,
    bucket: String,
    pub queues: BTreeMap<Queue, String>,
    pub dlqs: BTreeMap<Queue, String>,
    topics: BTreeMap<Topic, String>,
    /// Raw subscribers of the two topics.
    events_tap: String,
    alerts_tap: String,
    pub systems: Vec<SystemId>,
    analyze: FunctionDeps,
    cost_guard: FunctionDeps,
    fanout: Arc<Mutex<Vec<Outgoing>>>,
    pub seen: Mutex<Seen>,
    logs: tempfile::TempDir,
    restarts: Mutex<usize>,
    /// The `evolve` binary the workers run.
    evolve: PathBuf,
}

impl World {
    /// A stack with `systems` registered systems (stable at generation 0, baseline unmeasured),
    /// the stub, and the proxy with `plan` (faults on).
    pub async fn new(systems: usize, plan: FaultPlan, evolve: PathBuf) -> Self {
        let moto = MotoServer::shared();
        let aws = sdk_config(moto.url()).await;
        let sqs = aws_sdk_sqs::Client::new(&aws);
        let sns = aws_sdk_sns::Client::new(&aws);
        let dynamo = aws_sdk_dynamodb::Client::new(&aws);
        let s3 = tests::moto::s3_client(&aws);
        let table = unique_name("chaos-table");
        let bucket = unique_name("chaos-bucket");
        let store = DynamoStore::new(dynamo.clone(), s3.clone(), table.clone(), bucket.clone());
        store.create_resources().await.expect("table and bucket");
        let store = Arc::new(store);
        let mut queues = BTreeMap::new();
        let mut dlqs = BTreeMap::new();
        for q in Queue::ALL {
            let name = format!("chaos-{}", q.as_str());
            queues.insert(q, tests::moto::queue(&sqs, &name).await.0);
            dlqs.insert(q, tests::moto::queue(&sqs, &format!("{name}-dlq")).await.0);
        }
        let topics = tests::moto::topics(&sns).await;
        let mut taps = Vec::new();
        for topic in [Topic::EvolutionEvents, Topic::Alerts] {
            let (url, arn) =
                tests::moto::queue(&sqs, &format!("chaos-tap-{}", topic.as_str())).await;
            sns.subscribe()
                .topic_arn(&topics[&topic])
                .protocol("sqs")
                .endpoint(arn)
                .attributes("RawMessageDelivery", "true")
                .send()
                .await
                .expect("subscribe");
            taps.push(url);
        }
        let stub = StubServer::start().await;
        let proxy = FaultProxy::start(
            plan,
            Backends {
                aws: moto.url().to_owned(),
                bedrock: Some(stub.url()),
            },
        )
        .await
        .expect("fault proxy");
        let env = function_env(&table, &bucket, &queues, &dlqs, &topics);
        let fanout = Arc::new(Mutex::new(Vec::new()));
        let analyze = function("analyze", &proxy.url(), &env, true, Arc::clone(&fanout)).await;
        let cost_guard =
            function("cost-guard", &proxy.url(), &env, false, Arc::clone(&fanout)).await;
        let mut world = Self {
            moto,
            stub,
            proxy,
            store,
            sqs,
            dynamo,
            s3,
            table,
            bucket,
            queues,
            dlqs,
            topics,
            alerts_tap: taps.pop().expect("alerts tap"),
            events_tap: taps.pop().expect("events tap"),
            systems: Vec::new(),
            analyze,
            cost_guard,
            fanout,
            seen: Mutex::new(Seen::default()),
            logs: tempfile::tempdir().expect("log directory"),
            restarts: Mutex::new(0),
            evolve,
        };
        world.register(systems).await;
        world
    }

    /// `evolve init` for each system (the one direct write), `CONCURRENCY` at a time.
    async fn register(&mut self, count: usize) {
        let gate = Arc::new(Semaphore::new(CONCURRENCY));
        // `init` publishes generation 0 on the events topic, as `evolve --store aws init` does.
        let aws = sdk_config(self.moto.url()).await;
        let events: Arc<dyn Bus> = Arc::new(shared::bus::aws::AwsBus::new(
            self.sqs.clone(),
            aws_sdk_sns::Client::new(&aws),
            shared::bus::aws::Destinations {
                queues: BTreeMap::new(),
                topics: BTreeMap::from([(
                    Topic::EvolutionEvents,
                    self.topics[&Topic::EvolutionEvents].clone(),
                )]),
            },
        ));
        let mut tasks = JoinSet::new();
        for i in 0..count {
            let store = Arc::clone(&self.store);
            let gate = Arc::clone(&gate);
            let events = Arc::clone(&events);
            tasks.spawn(async move {
                let _permit = gate.acquire().await.expect("gate");
                let (id, schema, genes) = DnaFile::parse(&dna(i)).expect("DNA");
                let home = LocalHome::new(
                    store,
                    Arc::new(LocalEngine::new(0)),
                    Utc::now(),
                    PipelineConfig::default(),
                );
                let settings = SystemSettings {
                    samples_required: 1,
                    // Longer than any run: windows close on the running system's reports.
                    evaluation_window_seconds: 3_600,
                    // Short, so the tick requests cycles of its own that race the pipeline's.
                    cycle_interval_seconds: 20,
                    ..SystemSettings::default()
                };
                init_system(&home.deps, events.as_ref(), &id, schema, genes, settings)
                    .await
                    .expect("init");
                id
            });
        }
        while let Some(id) = tasks.join_next().await {
            self.systems.push(id.expect("task"));
        }
        self.systems.sort();
    }

    /// Starts worker `index` (`llm` is `bedrock` or `local`), through the proxy or straight
    /// to moto and the stub.
    pub fn worker(&self, index: usize, llm: &str, through_proxy: bool) -> Worker {
        let (aws, bedrock) = if through_proxy {
            (self.proxy.url(), self.proxy.url())
        } else {
            (self.moto.url().to_owned(), self.stub.url())
        };
        let args: Vec<String> = [
            "worker",
            "--llm",
            llm,
            "--concurrency",
            "2",
            "--visibility-timeout",
            "3",
            "--message-timeout",
            "10",
            "--drain-timeout",
            "10",
            "--daily-budget-nano-usd",
            &DAILY_BUDGET_NANO_USD.to_string(),
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        let run = {
            let mut restarts = self.restarts.lock().unwrap_or_else(PoisonError::into_inner);
            *restarts += 1;
            *restarts
        };
        let stderr = self.logs.path().join(format!("worker-{index}-{run}.log"));
        let stdout = self
            .logs
            .path()
            .join(format!("worker-{index}-{run}.metrics"));
        let mut command = Command::new(&self.evolve);
        command
            .args(&args)
            .env("EVOLVE_STORE", "aws")
            .env(worker_vars::TABLE_NAME, &self.table)
            .env(worker_vars::BUCKET_NAME, &self.bucket)
            .env(
                worker_vars::EVENTS_TOPIC_ARN,
                &self.topics[&Topic::EvolutionEvents],
            )
            .env(worker_vars::ALERTS_TOPIC_ARN, &self.topics[&Topic::Alerts])
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ENDPOINT_URL", aws)
            .env("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", bedrock)
            .env("RUST_LOG", "warn")
            .env_remove("AWS_PROFILE")
            .env_remove("EVOLVE_SYSTEM")
            .env_remove(worker_vars::LLM)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).expect("metrics file"))
            .stderr(std::fs::File::create(&stderr).expect("log file"));
        for q in Queue::ALL {
            command.env(worker_vars::queue_url_variable(q), &self.queues[&q]);
            command.env(worker_vars::dlq_url_variable(q), &self.dlqs[&q]);
        }
        let child = command.spawn().expect("evolve worker starts");
        Worker {
            child,
            args,
            stderr,
        }
    }

    /// The same worker again, after it was killed.
    pub fn restart(&self, index: usize, worker: &mut Worker, through_proxy: bool) {
        let llm = worker
            .args
            .iter()
            .skip_while(|a| *a != "--llm")
            .nth(1)
            .cloned()
            .unwrap_or_else(|| "local".into());
        *worker = self.worker(index, &llm, through_proxy);
    }

    /// Sums a metric over every worker process's metrics lines (the pipeline's own counts).
    pub fn worker_metric(&self, name: &str) -> u64 {
        let mut total = 0;
        let Ok(entries) = std::fs::read_dir(self.logs.path()) else {
            return 0;
        };
        for entry in entries.flatten() {
            if entry.path().extension().is_none_or(|e| e != "metrics") {
                continue;
            }
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            for line in text.lines() {
                if let Ok(value) = serde_json::from_str::<Value>(line) {
                    // Embedded Metric Format values are JSON numbers such as `1.0`.
                    total += value[name].as_f64().unwrap_or(0.0) as u64;
                }
            }
        }
        total
    }

    /// Every worker log, for a failure message.
    pub fn worker_logs(&self) -> String {
        let mut out = String::new();
        if let Ok(entries) = std::fs::read_dir(self.logs.path()) {
            for entry in entries.flatten() {
                if entry.path().extension().is_some_and(|e| e == "log") {
                    let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(15).collect();
                    let _ = writeln!(out, "--- {}", entry.path().display());
                    for line in tail.into_iter().rev() {
                        let _ = writeln!(out, "{line}");
                    }
                }
            }
        }
        out
    }

    /// The scheduler's tick for `at`, through the analyze function's handler: `true` if it ran
    /// (processed or a duplicate), `false` if it failed (the scheduler would retry it).
    pub async fn tick(&self, at: DateTime<Utc>) -> bool {
        let event = json!({"kind": "tick", "scheduled_at": at.to_rfc3339()});
        analyze::handler(&self.analyze, lambda_event(event))
            .await
            .is_ok()
    }

    /// cost-guard's budget sweep for `at`, through its handler.
    pub async fn sweep(&self, at: DateTime<Utc>) -> bool {
        let event = json!({"kind": "sweep", "scheduled_at": at.to_rfc3339()});
        cost_guard::handler(&self.cost_guard, lambda_event(event))
            .await
            .is_ok()
    }

    /// The running systems report generation 0's fitness: each baseline closes and the first
    /// cycle starts.
    pub async fn report_baselines(&self) {
        for id in &self.systems {
            let generation = self
                .store
                .get_generation(id, 0)
                .await
                .expect("read")
                .expect("generation 0");
            self.report(id, 0, &generation.checksum).await;
        }
    }

    /// One fitness report for `generation` of `system`, with a score that keeps some
    /// mutations and rolls others back (a function of the system and generation only, so a
    /// repeated report is the same report).
    async fn report(&self, system: &SystemId, generation: u64, checksum: &str) {
        let id = format!(
            "fit-{system}-{generation}-{}",
            &checksum[..12.min(checksum.len())]
        );
        let salt = u64::from(system.as_str().bytes().fold(0_u8, u8::wrapping_add));
        let score = 10.0 + ((salt + generation * 7) % 3) as f64 - 1.0;
        let body = json!({
            "id": id,
            "system_id": system.as_str(),
            "base_generation": generation,
            "sent_at": Utc::now().to_rfc3339(),
            "type": "FitnessReported",
            "generation": generation,
            "checksum": checksum,
            "score": score,
            "metrics": {"p99_ms": 12.5},
        });
        // The running system retries its own sends until they are accepted.
        loop {
            let sent = self
                .sqs
                .send_message()
                .queue_url(&self.queues[&Queue::Fitness])
                .message_body(body.to_string())
                .send()
                .await;
            if sent.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .reports
            .insert(id);
    }

    /// One pass of the running systems: every `DnaUpdated` on the events subscription up to
    /// `generations` gets its report; every envelope is counted. Returns how many arrived.
    pub async fn running_systems(&self, generations: u64) -> usize {
        let Ok(received) = self
            .sqs
            .receive_message()
            .queue_url(&self.events_tap)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
        else {
            return 0;
        };
        let messages = received.messages.unwrap_or_default();
        for message in &messages {
            let body = message.body().unwrap_or_default();
            if let Ok(envelope) = serde_json::from_str::<Envelope>(body) {
                let first = {
                    let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
                    let n = seen.events.entry(envelope.id.clone()).or_insert(0);
                    *n += 1;
                    *n == 1
                };
                if let Body::DnaUpdated {
                    generation,
                    checksum,
                    ..
                } = &envelope.body
                {
                    if first && *generation <= generations {
                        self.report(&envelope.system_id, *generation, checksum)
                            .await;
                    }
                }
            }
            let _ = self
                .sqs
                .delete_message()
                .queue_url(&self.events_tap)
                .receipt_handle(message.receipt_handle().unwrap_or_default())
                .send()
                .await;
        }
        messages.len()
    }

    /// Messages on the six queues: visible, in flight and delayed.
    pub async fn queued(&self) -> u64 {
        let mut total = 0;
        for url in self.queues.values() {
            let attributes = self
                .sqs
                .get_queue_attributes()
                .queue_url(url)
                .attribute_names(QueueAttributeName::All)
                .send()
                .await
                .expect("queue attributes");
            for name in [
                QueueAttributeName::ApproximateNumberOfMessages,
                QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
                QueueAttributeName::ApproximateNumberOfMessagesDelayed,
            ] {
                total += attributes
                    .attributes()
                    .and_then(|a| a.get(&name))
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
        total
    }

    /// Each system's head (generation, status).
    pub async fn heads(&self) -> BTreeMap<SystemId, (u64, HeadStatus)> {
        let mut heads = BTreeMap::new();
        for id in &self.systems {
            let head = self
                .store
                .get_head(id)
                .await
                .expect("head")
                .expect("exists");
            heads.insert(id.clone(), (head.generation, head.status));
        }
        heads
    }

    /// Whether `system` has been driven through its generations and come to rest: evaluating
    /// a generation past the target (whose report the running system withholds), or paused
    /// by conflict resolution.
    pub fn at_rest(head: (u64, HeadStatus), generations: u64) -> bool {
        match head.1 {
            HeadStatus::Evaluating => head.0 > generations,
            HeadStatus::Paused => true,
            HeadStatus::Stable | HeadStatus::AwaitingApproval => false,
        }
    }

    /// Throttles the next `n` Converse requests at the stub itself (behind the proxy).
    pub fn throttle_stub(&self, n: usize) {
        for _ in 0..n {
            self.stub.push(Reply::throttled());
        }
    }

    /// The invariants, read back from moto directly. Returns the figures on success, every
    /// violation otherwise.
    pub async fn check(&self) -> Result<Checked, Vec<String>> {
        let mut violations = Vec::new();
        let mut checked = Checked::default();
        let records = self.idempotency_records().await;
        let dead = self.dead_letters(&mut violations).await;
        let alerts = self.drain_tap(&self.alerts_tap).await;
        // Whatever is left on the events subscription counts as delivered too.
        while self.running_systems(0).await > 0 {}
        let seen = {
            let seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
            checked.topic_redeliveries = seen.events.values().map(|n| u64::from(n - 1)).sum();
            (
                seen.events.keys().cloned().collect::<BTreeSet<_>>(),
                seen.reports.clone(),
            )
        };
        let (events_seen, reports) = seen;

        // No committed message unsent: every outbox message reached its destination. A queue
        // message was consumed (its own record completed) or dead-lettered with a reason; a
        // topic message reached the topic's subscriber.
        let completed: BTreeSet<&String> = records
            .iter()
            .filter(|(_, r)| r.completed)
            .map(|(k, _)| k)
            .collect();
        let delivered = |outgoing: &Outgoing| match outgoing.destination {
            Destination::Queue(_) => {
                completed.contains(&outgoing.envelope.id) || dead.contains(&outgoing.envelope.id)
            }
            Destination::Topic(Topic::EvolutionEvents) => {
                events_seen.contains(&outgoing.envelope.id)
            }
            Destination::Topic(Topic::Alerts) => alerts.contains(&outgoing.envelope.id),
        };
        for (key, record) in &records {
            if !record.completed {
                continue;
            }
            checked.outboxes += 1;
            if !record.sent && !record.outgoing.is_empty() {
                checked.unmarked_outboxes += 1;
            }
            for outgoing in &record.outgoing {
                checked.outbox_messages += 1;
                if !delivered(outgoing) {
                    checked.lost += 1;
                    violations.push(format!(
                        "message lost: {} {} committed by {key} (outbox marked sent: {}) never \
                         reached {:?}",
                        outgoing.envelope.body.type_name(),
                        outgoing.envelope.id,
                        record.sent,
                        outgoing.destination
                    ));
                }
            }
        }
        let fanout = self
            .fanout
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for outgoing in fanout.iter().chain(
            // Reports as the running system sent them: each must have been consumed.
            reports
                .iter()
                .map(|id| report_stand_in(id))
                .collect::<Vec<_>>()
                .iter(),
        ) {
            if !delivered(outgoing) {
                checked.lost += 1;
                violations.push(format!(
                    "message lost: {} {} was sent but never consumed",
                    outgoing.envelope.body.type_name(),
                    outgoing.envelope.id
                ));
            }
        }

        // Every system at rest in a documented state, with the records that state implies;
        // no duplicate event, decision or generation; every event body in S3.
        for id in &self.systems {
            self.check_system(id, &mut checked, &mut violations).await;
        }

        // Money: no reservation held, and the ledger's totals equal its settled calls.
        self.check_ledger(&mut checked, &mut violations).await;
        checked.dead_letters = dead.len();
        checked.alerts = alerts.len();
        if violations.is_empty() {
            Ok(checked)
        } else {
            Err(violations)
        }
    }

    async fn check_system(
        &self,
        id: &SystemId,
        checked: &mut Checked,
        violations: &mut Vec<String>,
    ) {
        let head = self
            .store
            .get_head(id)
            .await
            .expect("head")
            .expect("exists");
        let items = self.partition(&format!("SYS#{id}")).await;
        let sk = |item: &HashMap<String, AttributeValue>| {
            item.get("SK")
                .and_then(|v| v.as_s().ok())
                .cloned()
                .unwrap_or_default()
        };
        let body = |item: &HashMap<String, AttributeValue>| -> Value {
            item.get("body")
                .and_then(|v| v.as_s().ok())
                .and_then(|s| serde_json::from_str(s).ok())
                .unwrap_or(Value::Null)
        };
        // Head: evaluating its own generation, stable or paused with nothing open, or holding
        // an approval.
        let documented = match (head.status, &head.evaluation, &head.approval) {
            (HeadStatus::Evaluating, Some(eval), _) => eval.generation == head.generation,
            (HeadStatus::Stable | HeadStatus::Paused, None, None)
            | (HeadStatus::AwaitingApproval, _, Some(_)) => true,
            _ => false,
        };
        if !documented {
            violations.push(format!(
                "{id}: head {} {} is not a documented state (evaluation {:?}, approval {:?})",
                head.generation,
                head.status.as_str(),
                head.evaluation.as_ref().map(|e| e.generation),
                head.approval.as_ref().map(|a| a.decision_id.clone())
            ));
        }
        *checked.statuses.entry(head.status.as_str()).or_insert(0) += 1;
        checked.generations += head.generation;

        // Generations: 0..=head, each once; no decision applied twice.
        let generations: Vec<Value> = items
            .iter()
            .filter(|i| sk(i).starts_with("GEN#"))
            .map(body)
            .collect();
        let numbers: Vec<u64> = generations
            .iter()
            .filter_map(|g| g["generation"].as_u64())
            .collect();
        let expected: Vec<u64> = (0..=head.generation).collect();
        if numbers != expected {
            violations.push(format!(
                "{id}: generations {numbers:?}, expected 0..={}",
                head.generation
            ));
        }
        let mut applied = BTreeMap::new();
        for generation in &generations {
            if let Ok(Origin::Mutation { decision_id, .. }) =
                serde_json::from_value::<Origin>(generation["origin"].clone())
            {
                *applied.entry(decision_id).or_insert(0_u32) += 1;
            }
        }
        for (decision, n) in applied.iter().filter(|(_, n)| **n > 1) {
            checked.duplicates += 1;
            violations.push(format!(
                "duplicate: {id}: decision {decision} applied {n} times"
            ));
        }

        // Events: each id once in the index, each with its body in S3.
        let mut events = BTreeMap::new();
        for item in items.iter().filter(|i| sk(i).starts_with("EVT#")) {
            let key = sk(item);
            let event_id = key.rsplit('#').next().unwrap_or_default().to_owned();
            *events.entry(event_id.clone()).or_insert(0_u32) += 1;
            checked.events += 1;
            let Some(object) = item.get("s3_key").and_then(|v| v.as_s().ok()) else {
                violations.push(format!("{id}: event {event_id} has no S3 key"));
                continue;
            };
            let head_object = self
                .s3
                .head_object()
                .bucket(&self.bucket)
                .key(object)
                .send()
                .await;
            if head_object.is_err() {
                violations.push(format!(
                    "{id}: event {event_id}'s body {object} is missing from S3"
                ));
            }
        }
        for (event, n) in events.iter().filter(|(_, n)| **n > 1) {
            checked.duplicates += 1;
            violations.push(format!("duplicate: {id}: event {event} indexed {n} times"));
        }

        // Decisions: each id once.
        let mut decisions = BTreeMap::new();
        for item in items.iter().filter(|i| sk(i).starts_with("DEC#")) {
            let decision = body(item);
            let decision_id = decision["decision_id"]
                .as_str()
                .or_else(|| decision["id"].as_str())
                .map_or_else(|| sk(item), str::to_owned);
            *decisions.entry(decision_id).or_insert(0_u32) += 1;
            checked.decisions += 1;
        }
        for (decision, n) in decisions.iter().filter(|(_, n)| **n > 1) {
            checked.duplicates += 1;
            violations.push(format!(
                "duplicate: {id}: decision {decision} recorded {n} times"
            ));
        }
    }

    async fn check_ledger(&self, checked: &mut Checked, violations: &mut Vec<String>) {
        // A worker killed between reserve and settle leaves a hold: once its window has passed,
        // the sweep reclaims it. Reclaim now as the sweep would then, and only then require the
        // ledger to hold nothing.
        let window_end = Utc::now() + RESERVATION_HOLD;
        for hold in self.store.holds(window_end, 10_000).await.expect("holds") {
            let outcome = self.store.reclaim(&hold, "chaos-check", window_end).await;
            if matches!(outcome.expect("reclaim"), ReclaimOutcome::Reclaimed) {
                checked.reclaimed_holds += 1;
            }
        }
        let entries = self.store.entries(None).await.expect("ledger entries");
        checked.settled_calls = entries.len();
        let settled: u64 = entries.iter().map(|e| e.cost_nano).sum();
        checked.spent_nano = settled;
        let calls = self.store.list_llm_calls(None, None).await.expect("calls");
        for call in &calls {
            let outcome = match (&call.fallback, call.cache_hit) {
                (_, true) => "cache hit".to_owned(),
                (None, false) => "answered".to_owned(),
                (Some(reason), false) => {
                    format!("fallback: {}", reason.chars().take(60).collect::<String>())
                }
            };
            *checked.llm_calls.entry(outcome).or_insert(0) += 1;
        }
        let mut periods = BTreeSet::new();
        let now = Utc::now();
        for at in entries
            .iter()
            .map(|e| e.at)
            .chain(calls.iter().map(|c| c.at))
            .chain([now])
        {
            periods.insert(PeriodKey::of(BudgetPeriod::Day, at));
            periods.insert(PeriodKey::of(BudgetPeriod::Month, at));
        }
        let mut scopes = vec![LedgerScope::Total];
        scopes.extend(self.systems.iter().cloned().map(LedgerScope::System));
        let models: BTreeSet<String> = entries
            .iter()
            .map(|e| e.model_id.clone())
            .chain(calls.iter().map(|c| c.model_id.clone()))
            .collect();
        scopes.extend(models.into_iter().map(LedgerScope::Model));
        let (mut days_spent, mut months_spent) = (0_u64, 0_u64);
        for period in &periods {
            for scope in &scopes {
                let totals = self.store.totals(*period, scope).await.expect("totals");
                if totals.reserved_nano != 0 {
                    violations.push(format!(
                        "reservation held: {} {} has {} nano-USD reserved",
                        period.key(),
                        scope.key(),
                        totals.reserved_nano
                    ));
                }
                if *scope == LedgerScope::Total {
                    match period {
                        PeriodKey::Day(_) => days_spent += totals.spent_nano,
                        PeriodKey::Month { .. } => months_spent += totals.spent_nano,
                    }
                }
            }
        }
        if days_spent != settled || months_spent != settled {
            violations.push(format!(
                "ledger: settled calls sum to {settled} nano-USD, the daily totals to \
                 {days_spent} and the monthly totals to {months_spent}"
            ));
        }
    }

    /// Every item of partition `pk`, from moto directly.
    async fn partition(&self, pk: &str) -> Vec<HashMap<String, AttributeValue>> {
        let mut items = Vec::new();
        let mut start = None;
        loop {
            let page = self
                .dynamo
                .query()
                .table_name(&self.table)
                .key_condition_expression("PK = :pk")
                .expression_attribute_values(":pk", AttributeValue::S(pk.to_owned()))
                .set_exclusive_start_key(start)
                .send()
                .await
                .expect("query");
            items.extend(page.items().iter().cloned());
            start = page.last_evaluated_key().cloned();
            if start.is_none() {
                return items;
            }
        }
    }

    /// Every idempotency record, by key.
    async fn idempotency_records(&self) -> BTreeMap<String, Record> {
        let mut records = BTreeMap::new();
        let mut start = None;
        loop {
            let page = self
                .dynamo
                .scan()
                .table_name(&self.table)
                .filter_expression("begins_with(PK, :idemp) AND SK = :record")
                .expression_attribute_values(":idemp", AttributeValue::S("IDEMP#".into()))
                .expression_attribute_values(":record", AttributeValue::S("RECORD".into()))
                .set_exclusive_start_key(start)
                .send()
                .await
                .expect("scan");
            for item in page.items() {
                let key = item
                    .get("PK")
                    .and_then(|v| v.as_s().ok())
                    .and_then(|pk| pk.strip_prefix("IDEMP#"))
                    .unwrap_or_default()
                    .to_owned();
                let body: Value = item
                    .get("body")
                    .and_then(|v| v.as_s().ok())
                    .and_then(|s| serde_json::from_str(s).ok())
                    .unwrap_or(Value::Null);
                let outgoing: Vec<Outgoing> =
                    serde_json::from_value(body["outgoing"].clone()).unwrap_or_default();
                records.insert(
                    key,
                    Record {
                        completed: body["state"] == "completed",
                        sent: item
                            .get("sent")
                            .and_then(|v| v.as_bool().ok())
                            .copied()
                            .unwrap_or(false),
                        outgoing,
                    },
                );
            }
            start = page.last_evaluated_key().cloned();
            if start.is_none() {
                return records;
            }
        }
    }

    /// Every dead letter of the six dead-letter queues: each must say why. Returns the envelope
    /// ids found.
    async fn dead_letters(&self, violations: &mut Vec<String>) -> BTreeSet<String> {
        let mut ids = BTreeSet::new();
        for (queue, url) in &self.dlqs {
            loop {
                let received = self
                    .sqs
                    .receive_message()
                    .queue_url(url)
                    .max_number_of_messages(10)
                    .visibility_timeout(600)
                    .message_attribute_names("All")
                    .message_system_attribute_names(MessageSystemAttributeName::All)
                    .send()
                    .await
                    .expect("receive dead letters");
                let messages = received.messages.unwrap_or_default();
                if messages.is_empty() {
                    break;
                }
                for message in messages {
                    let body = message.body().unwrap_or_default();
                    let reason = message
                        .message_attributes()
                        .and_then(|a| a.get(REASON_ATTRIBUTE))
                        .and_then(|v| v.string_value())
                        .unwrap_or_default();
                    if reason.trim().is_empty() {
                        violations.push(format!(
                            "a dead letter on {} carries no reason: {body}",
                            queue.as_str()
                        ));
                    }
                    if let Ok(envelope) = serde_json::from_str::<Value>(body) {
                        if let Some(id) = envelope["id"].as_str() {
                            ids.insert(id.to_owned());
                        }
                    }
                    eprintln!("dead letter on {}: {reason}", queue.as_str());
                }
            }
        }
        ids
    }

    /// The envelope ids waiting on a topic's subscriber queue.
    async fn drain_tap(&self, url: &str) -> BTreeSet<String> {
        let mut ids = BTreeSet::new();
        loop {
            let received = self
                .sqs
                .receive_message()
                .queue_url(url)
                .max_number_of_messages(10)
                .visibility_timeout(600)
                .send()
                .await
                .expect("receive");
            let messages = received.messages.unwrap_or_default();
            if messages.is_empty() {
                return ids;
            }
            for message in messages {
                if let Ok(envelope) =
                    serde_json::from_str::<Value>(message.body().unwrap_or_default())
                {
                    if let Some(id) = envelope["id"].as_str() {
                        ids.insert(id.to_owned());
                    }
                }
            }
        }
    }
}

/// An idempotency record as the invariants read it.
#[derive(Debug)]
struct Record {
    completed: bool,
    sent: bool,
    outgoing: Vec<Outgoing>,
}

/// What the invariants counted.
#[derive(Debug, Default)]
pub struct Checked {
    pub statuses: BTreeMap<&'static str, usize>,
    /// Sum of the heads' generations.
    pub generations: u64,
    pub events: usize,
    pub decisions: usize,
    pub outboxes: usize,
    pub outbox_messages: usize,
    /// Outboxes delivered but whose `sent` mark was lost (best effort by design).
    pub unmarked_outboxes: usize,
    pub lost: usize,
    pub duplicates: usize,
    pub settled_calls: usize,
    pub spent_nano: u64,
    /// Reservations left by calls that never settled (a worker killed mid-call), reclaimed once
    /// their hold window has passed, as the budget sweep would.
    pub reclaimed_holds: usize,
    pub dead_letters: usize,
    pub alerts: usize,
    /// Envelopes the events topic delivered more than once.
    pub topic_redeliveries: u64,
    /// LLM role calls by outcome: answered by the routed model, a cache hit, or why the local
    /// engine answered.
    pub llm_calls: BTreeMap<String, usize>,
}

/// A sent fitness report, as an outgoing message to check for delivery.
fn report_stand_in(id: &str) -> Outgoing {
    Outgoing {
        destination: Destination::Queue(Queue::Fitness),
        envelope: Envelope {
            id: id.to_owned(),
            causation_id: String::new(),
            system_id: SystemId::global(),
            base_generation: 0,
            sent_at: Utc::now(),
            traceparent: None,
            body: Body::BudgetSweep {},
        },
        delay_seconds: 0,
    }
}

/// A scheduled invocation with the function's timeout (30 s, the template's `FunctionTimeout`)
/// as its deadline: claims made by the invocation expire with it, as on Lambda.
fn lambda_event(payload: Value) -> lambda_runtime::LambdaEvent<Value> {
    let mut context = lambda_runtime::Context::default();
    context.deadline =
        u64::try_from((Utc::now() + chrono::Duration::seconds(30)).timestamp_millis()).unwrap_or(0);
    lambda_runtime::LambdaEvent::new(payload, context)
}

/// The start of the current minute plus `k` minutes: the tick and sweep times of a run.
pub fn minute(k: i64) -> DateTime<Utc> {
    static BASE: std::sync::OnceLock<DateTime<Utc>> = std::sync::OnceLock::new();
    let base = *BASE.get_or_init(|| {
        let now = Utc::now();
        now.duration_trunc(chrono::Duration::minutes(1))
            .unwrap_or(now)
    });
    base + chrono::Duration::minutes(k)
}

/// A seeded generator for the run's own choices (which worker dies when).
pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// A uniformly drawn index below `n`.
pub fn pick(rng: &mut ChaCha8Rng, n: usize) -> usize {
    rng.random_range(0..n)
}

/// The function variables of a stack on moto, as the template sets them.
fn function_env(
    table: &str,
    bucket: &str,
    queues: &BTreeMap<Queue, String>,
    dlqs: &BTreeMap<Queue, String>,
    topics: &BTreeMap<Topic, String>,
) -> HashMap<String, String> {
    let mut env = HashMap::new();
    env.insert(function_vars::TABLE_NAME.into(), table.into());
    env.insert(function_vars::BUCKET_NAME.into(), bucket.into());
    for q in Queue::ALL {
        env.insert(
            function_vars::queue_url_variable(q).into(),
            queues[&q].clone(),
        );
        env.insert(function_vars::dlq_url_variable(q).into(), dlqs[&q].clone());
    }
    for (topic, arn) in topics {
        env.insert(
            function_vars::topic_arn_variable(*topic).into(),
            arn.clone(),
        );
    }
    env.insert(function_vars::LLM.into(), "local".into());
    env.insert(
        function_vars::DAILY_BUDGET_NANO_USD.into(),
        DAILY_BUDGET_NANO_USD.to_string(),
    );
    env
}

/// The analyze or cost-guard function wired as its binary wires it, with its SDK clients on
/// `endpoint` (the proxy) and its bus recording into `fanout`.
async fn function(
    name: &'static str,
    endpoint: &str,
    env: &HashMap<String, String>,
    analyze: bool,
    fanout: Arc<Mutex<Vec<Outgoing>>>,
) -> FunctionDeps {
    let sdk = sdk_config(endpoint).await;
    let dynamo = aws_sdk_dynamodb::Client::new(&sdk);
    let s3 = tests::moto::s3_client(&sdk);
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let sns = aws_sdk_sns::Client::new(&sdk);
    let (common, sources, config) = if analyze {
        let config = AnalyzeConfig::from_map(env).expect("analyze config");
        (config.common.clone(), config.sources(), config.pipeline())
    } else {
        let config = CostGuardConfig::from_map(env).expect("cost-guard config");
        (config.common.clone(), config.sources(), config.pipeline())
    };
    let store = wiring::dynamo_store(&common, dynamo, s3);
    let pipeline = wiring::deps(store, wiring::no_llm(), config);
    let mut deps = wiring::function(name, &common, sources, pipeline, sqs, sns);
    deps.bus = Arc::new(RecordingBus {
        inner: deps.bus,
        sent: fanout,
    });
    deps
}

/// System `i`'s DNA: a few genes of each type, so plans move ints, floats and bools.
fn dna(i: usize) -> String {
    format!(
        r#"{{"system_id": "chaos-{i:05}", "genes": {{
  "batch_size": {{"type": "int", "value": 32, "min": 1, "max": 512, "max_step": 64, "risk_weight": 0.1}},
  "timeout_s": {{"type": "float", "value": 2.5, "min": 0.5, "max": 30.0, "max_step": 2.0, "risk_weight": 0.1}},
  "prefetch": {{"type": "bool", "value": false, "risk_weight": 0.1}},
  "codec": {{"type": "choice", "value": "lz4", "choices": ["none", "lz4", "zstd"], "risk_weight": 0.1}}
}}}}"#
    )
}
