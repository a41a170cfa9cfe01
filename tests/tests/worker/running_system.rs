//! Fifty running systems at once on moto, each one instance of the example running system
//! (`examples/running-system`) on a subscription of its own, against `evolve worker` and the
//! scheduler's tick: every baseline is measured from the generation 0 that `init` published and
//! kept, every system has a mutation applied, measured and judged, crashes show up as failed
//! samples and inconclusive windows, the rollbacks they cause reach the instances (applied,
//! never measured), and nothing is dead-lettered.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use running_system::sqs::{SqsFitnessQueue, SqsInbox};
use running_system::{
    FitnessQueue, FitnessReport, Instance, InstanceConfig, Pace, SimulatedService, TransportError,
    run,
};
use serde_json::json;
use shared::bus::aws::{AwsBus, aws_sdk_sns};
use shared::domain::{
    DnaFile, EvaluationOutcome, Generation, HistoryEntry, Origin, Queue, SystemId, Topic,
};
use shared::lambda::wiring;
use shared::local::init_system;
use shared::stages::{Deps, PipelineConfig};
use shared::store::{EvolutionStore, SystemSettings};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::stack::{Stack, WorkerProcess};

const SYSTEMS: usize = 50;
/// Reports per generation, each a sample the window waits for.
const MEASUREMENTS: u32 = 2;
/// Every fifth system runs on a host with this little memory: its baseline (128 MB) fits, and
/// the first steps the strategist takes from it (more workers, larger batches, a larger cache)
/// crash the service.
const FRAGILE_MEMORY_MB: f64 = 140.0;
/// How long the fleet may take to measure its baselines and judge a mutation each (about 90 s
/// on two cores; the margin is for a machine busy with something else).
const WITHIN: Duration = Duration::from_secs(240);
/// How often the scheduler's tick runs (its id is per minute, so most runs are duplicates).
const TICK_EVERY: Duration = Duration::from_secs(10);
/// Systems created, or histories read, at once.
const CONCURRENCY: usize = 8;

fn system(i: usize) -> SystemId {
    SystemId::parse(format!("rs-{i:02}")).expect("id")
}

fn fragile(i: usize) -> bool {
    i % 5 == 0
}

fn dna(id: &SystemId) -> String {
    json!({"system_id": id.as_str(), "genes": {
        "workers": {"type": "int", "value": 4, "min": 1, "max": 64, "max_step": 8,
            "risk_weight": 0.2},
        "batch_size": {"type": "int", "value": 16, "min": 1, "max": 256, "max_step": 32,
            "risk_weight": 0.2},
        "cache_mb": {"type": "int", "value": 64, "min": 0, "max": 1024, "max_step": 128,
            "risk_weight": 0.2},
        "compression": {"type": "choice", "value": "none", "choices": ["none", "lz4", "zstd"],
            "risk_weight": 0.1}
    }})
    .to_string()
}

/// The fitness queue, remembering every report the instances sent.
#[derive(Clone)]
struct Recording {
    inner: SqsFitnessQueue,
    sent: Arc<Mutex<Vec<FitnessReport>>>,
}

impl FitnessQueue for Recording {
    async fn send(&self, report: &FitnessReport) -> Result<(), TransportError> {
        self.inner.send(report).await?;
        self.sent.lock().expect("reports").push(report.clone());
        Ok(())
    }
}

/// The stack, the product's side of it as the test drives it (init and the tick), and one
/// instance per system.
struct Fleet {
    stack: Stack,
    sns: aws_sdk_sns::Client,
    deps: Arc<Deps>,
    bus: Arc<AwsBus>,
    /// Each system's subscription queue.
    inboxes: BTreeMap<SystemId, String>,
    reports: Arc<Mutex<Vec<FitnessReport>>>,
    instances: JoinSet<Instance>,
    stop: watch::Sender<bool>,
}

impl Fleet {
    async fn new() -> Self {
        let stack = Stack::new().await;
        let aws = tests::moto::sdk_config(stack.moto.url()).await;
        let sns = aws_sdk_sns::Client::new(&aws);
        let bus = Arc::new(AwsBus::new(
            stack.sqs.clone(),
            sns.clone(),
            stack.destinations(),
        ));
        let deps = Arc::new(wiring::deps(
            stack.store.clone(),
            wiring::no_llm(),
            PipelineConfig::default(),
        ));
        let (stop, _) = watch::channel(false);
        Self {
            stack,
            sns,
            deps,
            bus,
            inboxes: BTreeMap::new(),
            reports: Arc::new(Mutex::new(Vec::new())),
            instances: JoinSet::new(),
            stop,
        }
    }

    /// A queue per system, subscribed to the events topic as the README shows, with the
    /// system's id in the filter policy.
    async fn subscribe(&mut self) {
        let topic = self.stack.destinations().topics[&Topic::EvolutionEvents].clone();
        for id in (0..SYSTEMS).map(system) {
            let (url, arn) = tests::moto::queue(&self.stack.sqs, &format!("dna-{id}")).await;
            let policy = json!({"type": ["DnaUpdated", "DnaRolledBack"], "system_id": [id]});
            self.sns
                .subscribe()
                .topic_arn(&topic)
                .protocol("sqs")
                .endpoint(arn)
                .attributes("RawMessageDelivery", "true")
                .attributes("FilterPolicy", policy.to_string())
                .send()
                .await
                .expect("subscribe");
            self.inboxes.insert(id, url);
        }
    }

    /// One instance per system, in this process.
    fn start_instances(&mut self) {
        let fitness = Recording {
            inner: SqsFitnessQueue::new(
                self.stack.sqs.clone(),
                &self.stack.queues[&Queue::Fitness],
            ),
            sent: self.reports.clone(),
        };
        for (i, (id, url)) in self.inboxes.iter().enumerate() {
            let instance = Instance::new(
                InstanceConfig {
                    system_id: id.to_string(),
                    instance_id: "host-a".into(),
                    measurements_per_generation: MEASUREMENTS,
                },
                SimulatedService {
                    memory_limit_mb: if fragile(i) {
                        FRAGILE_MEMORY_MB
                    } else {
                        1024.0
                    },
                    timeout_rate: 0.0,
                },
            );
            let inbox = SqsInbox::new(self.stack.sqs.clone(), url, 20);
            let fitness = fitness.clone();
            let mut stop = self.stop.subscribe();
            self.instances.spawn(async move {
                let pace = Pace {
                    measurement: Duration::ZERO,
                    retry: Duration::from_millis(500),
                };
                let stopped = async move {
                    let _ = stop.wait_for(|stop| *stop).await;
                };
                run(instance, &inbox, &fitness, pace, stopped).await
            });
        }
    }

    /// `evolve init` for every system, through the stack's bus: generation 0 goes out on the
    /// events topic.
    async fn create_systems(&self) {
        let settings = SystemSettings {
            samples_required: MEASUREMENTS,
            evaluation_window_seconds: 300,
            ..SystemSettings::default()
        };
        let gate = Arc::new(Semaphore::new(CONCURRENCY));
        let mut tasks = JoinSet::new();
        for id in self.inboxes.keys() {
            let (id, deps, bus, gate, settings) = (
                id.clone(),
                self.deps.clone(),
                self.bus.clone(),
                gate.clone(),
                settings.clone(),
            );
            tasks.spawn(async move {
                let _permit = gate.acquire().await.expect("gate");
                let (_, schema, genes) = DnaFile::parse(&dna(&id)).expect("DNA");
                init_system(&deps, bus.as_ref(), &id, schema, genes, settings)
                    .await
                    .expect("init");
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("init task");
        }
    }

    /// The scheduler: the tick every few seconds until the fleet stops.
    fn start_tick(&self) -> tokio::task::JoinHandle<()> {
        let (deps, bus) = (self.deps.clone(), self.bus.clone());
        let mut stop = self.stop.subscribe();
        tokio::spawn(async move {
            while !*stop.borrow() {
                if let Err(e) =
                    shared::pipeline::tick(&deps, bus.as_ref(), chrono::Utc::now()).await
                {
                    eprintln!("tick failed: {e}");
                }
                let _ = tokio::time::timeout(TICK_EVERY, stop.changed()).await;
            }
        })
    }

    /// The histories of `ids`, read a few systems at a time.
    async fn histories(
        &self,
        ids: impl IntoIterator<Item = SystemId>,
    ) -> BTreeMap<SystemId, Vec<HistoryEntry>> {
        let gate = Arc::new(Semaphore::new(CONCURRENCY));
        let mut tasks = JoinSet::new();
        for id in ids {
            let (store, gate) = (self.stack.store.clone(), gate.clone());
            tasks.spawn(async move {
                let _permit = gate.acquire().await.expect("gate");
                let history = store.list_history(&id, 100).await.expect("history");
                (id, history)
            });
        }
        let mut histories = BTreeMap::new();
        while let Some(done) = tasks.join_next().await {
            let (id, history) = done.expect("history task");
            histories.insert(id, history);
        }
        histories
    }

    /// Waits until every baseline is kept, every system had a mutation judged and a crash was
    /// judged somewhere. Systems done are not read again: moto serializes DynamoDB, so every
    /// read here slows the worker down.
    async fn wait_for_judgements(&self, worker: &WorkerProcess) {
        let deadline = Instant::now() + WITHIN;
        let mut waiting: BTreeSet<SystemId> = self.inboxes.keys().cloned().collect();
        let mut crashed = false;
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            let read = if waiting.is_empty() {
                self.inboxes.keys().cloned().collect()
            } else {
                waiting.clone()
            };
            for (id, history) in self.histories(read).await {
                crashed |= judged(&history).any(|e| e.fitness.is_none());
                if baseline(&history).is_some() && judged(&history).next().is_some() {
                    waiting.remove(&id);
                }
            }
            if waiting.is_empty() && crashed {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "within {WITHIN:?}, {} system(s) lack a kept baseline or a judged mutation \
                 ({waiting:?}), or no crash was judged ({crashed}):\n{}",
                waiting.len(),
                worker.log()
            );
        }
    }

    /// Waits until the instances have taken every DNA message from their queues.
    async fn wait_for_empty_inboxes(&self) {
        use shared::bus::aws::aws_sdk_sqs::types::QueueAttributeName;
        let deadline = Instant::now() + Duration::from_secs(30);
        for url in self.inboxes.values() {
            loop {
                let attributes = self
                    .stack
                    .sqs
                    .get_queue_attributes()
                    .queue_url(url)
                    .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
                    .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
                    .send()
                    .await
                    .expect("attributes");
                let pending: u64 = attributes
                    .attributes()
                    .into_iter()
                    .flat_map(|a| a.values())
                    .filter_map(|v| v.parse::<u64>().ok())
                    .sum();
                if pending == 0 {
                    break;
                }
                assert!(Instant::now() < deadline, "{url} still holds {pending}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    /// Waits until no report has been sent for a while: the measurements of the last messages
    /// taken are done.
    async fn wait_for_quiet_reports(&self) {
        let count = || self.reports.lock().expect("reports").len();
        let mut last = count();
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let now = count();
            if now == last {
                return;
            }
            last = now;
        }
    }

    /// Stops the instances and hands them back, by system.
    async fn stop_instances(&mut self) -> BTreeMap<String, Instance> {
        self.stop.send_replace(true);
        let mut instances = BTreeMap::new();
        while let Some(done) = self.instances.join_next().await {
            let instance = done.expect("instance task");
            instances.insert(instance.config().system_id.clone(), instance);
        }
        instances
    }

    fn reports_of(&self, id: &SystemId) -> Vec<FitnessReport> {
        self.reports
            .lock()
            .expect("reports")
            .iter()
            .filter(|r| r.system_id == id.as_str())
            .cloned()
            .collect()
    }
}

/// Generation 0's entry, if it was measured and kept.
fn baseline(history: &[HistoryEntry]) -> Option<&HistoryEntry> {
    history
        .iter()
        .find(|e| e.generation == 0 && e.outcome == EvaluationOutcome::Keep && e.fitness.is_some())
}

/// The mutations whose windows closed.
fn judged(history: &[HistoryEntry]) -> impl Iterator<Item = &HistoryEntry> {
    history.iter().filter(|e| e.generation > 0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_running_systems_measure_their_baselines_and_mutations_and_apply_their_rollbacks() {
    let started = Instant::now();
    let mut fleet = Fleet::new().await;
    fleet.subscribe().await;
    fleet.start_instances();
    let mut worker = fleet
        .stack
        .worker("all", &["--llm", "local", "--concurrency", "8"]);
    fleet.create_systems().await;
    let tick = fleet.start_tick();

    fleet.wait_for_judgements(&worker).await;
    worker.sigterm();
    let status = worker.exit_within(Duration::from_secs(60)).await;
    assert!(status.success(), "{status}:\n{}", worker.log());
    fleet.wait_for_empty_inboxes().await;
    fleet.wait_for_quiet_reports().await;
    let instances = fleet.stop_instances().await;
    tick.await.expect("tick task");

    for q in Queue::ALL {
        assert!(
            fleet
                .stack
                .receive(&fleet.stack.dlqs[&q], 0, 30)
                .await
                .is_empty(),
            "{} dead-lettered something:\n{}",
            q.as_str(),
            worker.log()
        );
    }
    let histories = fleet.histories(fleet.inboxes.keys().cloned()).await;
    let mut tally = Tally::default();
    for (id, history) in &histories {
        let system = SystemCheck {
            fleet: &fleet,
            id,
            history,
            instance: &instances[id.as_str()],
            reports: fleet.reports_of(id),
            generations: fleet
                .stack
                .store
                .list_generations(id, None, 100)
                .await
                .expect("generations"),
        };
        system.check(&mut tally).await;
    }
    assert!(tally.crashes > 0, "no crash judged: {tally:?}");
    assert!(tally.rollbacks > 0, "no rollback applied: {tally:?}");
    eprintln!(
        "{SYSTEMS} systems: {tally:?} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// What the fleet went through, summed over its systems.
#[derive(Debug, Default)]
struct Tally {
    generations: usize,
    judged: usize,
    crashes: usize,
    rollbacks: usize,
    reports: usize,
}

/// One system's records in the store set against what its instance applied and reported.
struct SystemCheck<'a> {
    fleet: &'a Fleet,
    id: &'a SystemId,
    history: &'a [HistoryEntry],
    instance: &'a Instance,
    reports: Vec<FitnessReport>,
    generations: Vec<Generation>,
}

impl SystemCheck<'_> {
    async fn check(&self, tally: &mut Tally) {
        self.every_generation_applied();
        self.reports_name_what_was_measured();
        self.baseline_measured_from_generation_0();
        for entry in judged(self.history) {
            self.mutation_judged(entry).await;
            if entry.fitness.is_none() {
                tally.crashes += 1;
            }
        }
        tally.generations += self.generations.len();
        tally.judged += judged(self.history).count();
        tally.rollbacks += self.rollbacks().count();
        tally.reports += self.reports.len();
    }

    fn rollbacks(&self) -> impl Iterator<Item = (&Generation, u64, u64)> {
        self.generations.iter().filter_map(|g| match g.origin {
            Origin::Rollback {
                restored,
                rolled_back,
                ..
            } => Some((g, restored, rolled_back)),
            _ => None,
        })
    }

    /// Every generation committed reached the instance, in order, rollbacks as rollbacks.
    fn every_generation_applied(&self) {
        let applied: Vec<(u64, &str, Option<u64>)> = self
            .instance
            .applied()
            .map(|a| (a.generation, a.checksum.as_str(), a.restored))
            .collect();
        let committed: Vec<(u64, &str, Option<u64>)> = self
            .generations
            .iter()
            .map(|g| {
                let restored = match g.origin {
                    Origin::Rollback { restored, .. } => Some(restored),
                    _ => None,
                };
                (g.generation, g.checksum.as_str(), restored)
            })
            .collect();
        assert_eq!(applied, committed, "{}", self.id);
    }

    /// Each update was measured the configured number of times, on its own checksum; no
    /// rollback was measured.
    fn reports_name_what_was_measured(&self) {
        for generation in &self.generations {
            let reports: Vec<&FitnessReport> = self
                .reports
                .iter()
                .filter(|r| r.generation == generation.generation)
                .collect();
            let expected = match generation.origin {
                Origin::Rollback { .. } => 0,
                _ => MEASUREMENTS as usize,
            };
            assert_eq!(
                reports.len(),
                expected,
                "{} generation {}",
                self.id,
                generation.generation
            );
            assert!(reports.iter().all(|r| r.checksum == generation.checksum));
        }
    }

    /// The baseline's fitness is the mean of what the instance measured on generation 0.
    fn baseline_measured_from_generation_0(&self) {
        let kept = baseline(self.history)
            .unwrap_or_else(|| panic!("{}: no kept baseline: {:?}", self.id, self.history));
        let scores: Vec<f64> = self
            .reports
            .iter()
            .filter(|r| r.generation == 0)
            .filter_map(|r| r.score)
            .collect();
        let mean = scores.iter().sum::<f64>() / scores.len() as f64;
        let fitness = kept.fitness.expect("measured");
        assert_eq!(
            (kept.reports, kept.failed),
            (MEASUREMENTS, 0),
            "{}",
            self.id
        );
        assert!(
            (fitness - mean).abs() < 1e-9,
            "{}: {fitness} vs {mean}",
            self.id
        );
    }

    /// A judged mutation was measured: kept or rolled back on its scores, or, when its every
    /// measurement failed, recorded as failed samples, inconclusive, and rolled back.
    async fn mutation_judged(&self, entry: &HistoryEntry) {
        assert!(!entry.changes.is_empty(), "{}: {entry:?}", self.id);
        let samples = self
            .fleet
            .stack
            .store
            .list_fitness(self.id, entry.generation)
            .await
            .expect("samples");
        assert_eq!(
            samples.len(),
            MEASUREMENTS as usize,
            "{}: {samples:?}",
            self.id
        );
        let failed = samples.iter().filter(|s| s.error.is_some()).count();
        assert_eq!(
            (entry.reports, entry.failed as usize),
            (MEASUREMENTS, failed),
            "{}: {entry:?}",
            self.id
        );
        let restored_by = self
            .rollbacks()
            .find(|(_, _, rolled_back)| *rolled_back == entry.generation);
        if entry.fitness.is_some() {
            assert!(
                samples
                    .iter()
                    .all(|s| s.score.is_some() && s.error.is_none())
            );
            if entry.outcome == EvaluationOutcome::Keep {
                assert!(restored_by.is_none(), "{}: {entry:?}", self.id);
            }
            return;
        }
        assert_eq!(
            entry.outcome,
            EvaluationOutcome::Inconclusive,
            "{}",
            self.id
        );
        for sample in &samples {
            assert_eq!(sample.score, None);
            let error = sample.error.as_deref().unwrap_or_default();
            assert!(error.contains("out of memory"), "{}: {error}", self.id);
        }
        assert!(
            restored_by.is_some(),
            "{}: a crash not rolled back",
            self.id
        );
    }
}
