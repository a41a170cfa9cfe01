//! A deployed stack in miniature: moto's DynamoDB, S3, SQS and SNS, the Converse stub, and the
//! five functions wired exactly as their `main.rs` wires them (typed config from variables, the
//! DynamoDB store, the SQS/SNS bus, Bedrock with the local engine behind it). Messages move only
//! through real queues: each round receives what a queue holds and calls the very handler the
//! function's binary passes to `service_fn`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use aws_config::{BehaviorVersion, Region};
use aws_lambda_events::sqs::{SqsEvent, SqsMessage};
use lambda_runtime::{Context, LambdaEvent};
use serde_json::{Value, json};
use shared::bus::aws::{aws_sdk_sns, aws_sdk_sqs};
use shared::clock::{Random, SeededRandom};
use shared::domain::{DnaFile, Envelope, Queue, SystemId, Topic};
use shared::engine::LocalEngine;
use shared::lambda::FunctionDeps;
use shared::lambda::config::{
    AnalyzeConfig, CostGuardConfig, DecideConfig, SnapshotConfig, StrategizeConfig,
};
use shared::lambda::wiring;
use shared::local::{LocalHome, init_system};
use shared::stages::PipelineConfig;
use shared::store::dynamo::{DynamoStore, aws_sdk_dynamodb, aws_sdk_s3};
use shared::store::{EvolutionStore, SystemSettings};
use tests::bedrock_stub::StubServer;
use tests::moto::{MotoServer, queue, sdk_config, topics as moto_topics, unique_name};

use aws_sdk_sqs::types::MessageAttributeValue;

pub const SYSTEM: &str = "e2e-svc";
const DNA: &str = r#"{"system_id": "e2e-svc", "genes": {
  "batch_size": {"type": "int", "value": 32, "min": 1, "max": 512, "max_step": 64, "risk_weight": 0.1},
  "timeout_s": {"type": "float", "value": 2.5, "min": 0.5, "max": 30.0, "max_step": 2.0, "risk_weight": 0.1},
  "prefetch": {"type": "bool", "value": false, "risk_weight": 0.1}
}}"#;

pub fn system_id() -> SystemId {
    SystemId::parse(SYSTEM).expect("valid id")
}

fn credentials() -> aws_sdk_sqs::config::Credentials {
    aws_sdk_sqs::config::Credentials::new("test", "test", None, None, "static")
}

/// How the test's "running system" and the driver behave.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Deliver every record twice, in a shuffled batch.
    pub twice: bool,
    pub daily_budget_nano: Option<u64>,
    /// decide's approval gate (`APPROVAL_RISK_THRESHOLD`).
    pub approval_threshold: Option<f64>,
}

pub struct World {
    pub store: Arc<DynamoStore>,
    pub stub: StubServer,
    pub sqs: aws_sdk_sqs::Client,
    pub s3: aws_sdk_s3::Client,
    pub bucket: String,
    pub queues: BTreeMap<Queue, (String, String)>,
    pub dlqs: BTreeMap<Queue, String>,
    /// Subscribed to `evolution-events`: what the running system receives.
    pub running_system: String,
    /// Subscribed to `alerts`.
    pub alerts_inbox: String,
    functions: BTreeMap<&'static str, FunctionDeps>,
    options: Options,
    random: SeededRandom,
    /// Every DNA message the running system received, in order.
    pub dna_messages: Vec<Value>,
    /// Every envelope delivered to a queue (first copies), for stale redeliveries.
    pub delivered: Vec<(Queue, String)>,
}

impl World {
    pub async fn new(options: Options) -> Self {
        let moto = MotoServer::shared();
        let aws = sdk_config(moto.url()).await;
        let sqs = aws_sdk_sqs::Client::new(&aws);
        let sns = aws_sdk_sns::Client::new(&aws);
        let dynamo = aws_sdk_dynamodb::Client::new(&aws);
        let s3 = tests::moto::s3_client(&aws);
        let table = unique_name("e2e-table");
        let bucket = unique_name("e2e-bucket");
        let store = DynamoStore::new(dynamo.clone(), s3.clone(), table.clone(), bucket.clone());
        store.create_resources().await.expect("table and bucket");

        let mut queues = BTreeMap::new();
        let mut dlqs = BTreeMap::new();
        for q in Queue::ALL {
            queues.insert(q, queue(&sqs, &format!("e2e-{}", q.as_str())).await);
            dlqs.insert(q, queue(&sqs, &format!("e2e-{}-dlq", q.as_str())).await.0);
        }
        let topics = moto_topics(&sns).await;
        let running_system =
            subscribe(&sqs, &sns, &topics[&Topic::EvolutionEvents], "running").await;
        let alerts_inbox = subscribe(&sqs, &sns, &topics[&Topic::Alerts], "inbox").await;

        let mut env: HashMap<String, String> = HashMap::from([
            ("TABLE_NAME".into(), table.clone()),
            ("BUCKET_NAME".into(), bucket.clone()),
            (
                "EVENTS_TOPIC_ARN".into(),
                topics[&Topic::EvolutionEvents].clone(),
            ),
            ("ALERTS_TOPIC_ARN".into(), topics[&Topic::Alerts].clone()),
            (
                "SNAPSHOT_QUEUE_ARN".into(),
                queues[&Queue::Snapshot].1.clone(),
            ),
            (
                "FITNESS_QUEUE_ARN".into(),
                queues[&Queue::Fitness].1.clone(),
            ),
            ("LLM".into(), "bedrock".into()),
        ]);
        for q in Queue::ALL {
            let var = q.as_str().to_uppercase().replace('-', "_");
            env.insert(format!("{var}_QUEUE_URL"), queues[&q].0.clone());
            env.insert(format!("{var}_DLQ_URL"), dlqs[&q].clone());
        }
        if let Some(threshold) = options.approval_threshold {
            env.insert("APPROVAL_RISK_THRESHOLD".into(), threshold.to_string());
        }
        if let Some(budget) = options.daily_budget_nano {
            env.insert("DAILY_BUDGET_NANO_USD".into(), budget.to_string());
        }

        let stub = StubServer::start().await;
        let bedrock = aws_sdk_bedrockruntime::config::Builder::new()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(credentials())
            .endpoint_url(stub.url());
        let store = Arc::new(store);
        let store_for = |common: &shared::lambda::config::Common| {
            wiring::dynamo_store(common, dynamo.clone(), s3.clone())
        };
        // Each function wired as its `main.rs` wires it, from its own typed config.
        macro_rules! wire {
            ($name:literal, $config:ty, $llm:expr) => {{
                let c = <$config>::from_map(&env).expect(concat!($name, " config"));
                let s = store_for(&c.common);
                let llm = $llm(&c, s.clone());
                let p = wiring::deps(s, llm, c.pipeline());
                let deps =
                    wiring::function($name, &c.common, c.sources(), p, sqs.clone(), sns.clone());
                ($name, deps)
            }};
        }
        let bedrock_for = |llm: &shared::lambda::config::LlmSettings, budgets, s| {
            wiring::language_model(llm, budgets, bedrock.clone(), s).expect("llm")
        };
        let functions = BTreeMap::from([
            wire!(
                "analyze",
                AnalyzeConfig,
                |c: &AnalyzeConfig, s| bedrock_for(&c.llm, c.budgets, s)
            ),
            wire!("strategize", StrategizeConfig, |c: &StrategizeConfig, s| {
                bedrock_for(&c.llm, c.budgets, s)
            }),
            wire!("decide", DecideConfig, |c: &DecideConfig, s| bedrock_for(
                &c.llm, c.budgets, s
            )),
            wire!("snapshot", SnapshotConfig, |_: &SnapshotConfig, _| {
                wiring::no_llm()
            }),
            wire!("cost-guard", CostGuardConfig, |_: &CostGuardConfig, _| {
                wiring::no_llm()
            }),
        ]);

        Self {
            store,
            stub,
            sqs,
            s3,
            bucket,
            queues,
            dlqs,
            running_system,
            alerts_inbox,
            functions,
            options,
            random: SeededRandom::new(7),
            dna_messages: Vec::new(),
            delivered: Vec::new(),
        }
    }

    /// `evolve init` against the stack: the one direct write.
    pub async fn init(&self) {
        let (id, schema, genes) = DnaFile::parse(DNA).expect("DNA");
        let home = LocalHome::new(
            self.store.clone(),
            Arc::new(LocalEngine::new(0)),
            chrono::Utc::now(),
            PipelineConfig::default(),
        );
        init_system(
            &home.deps,
            home.bus.as_ref(),
            &id,
            schema,
            genes,
            SystemSettings::default(),
        )
        .await
        .expect("init");
    }

    pub fn function(&self, name: &str) -> &FunctionDeps {
        &self.functions[name]
    }

    /// The EventBridge Scheduler's one-minute tick to analyze.
    pub async fn tick(&self) {
        self.tick_scheduled(chrono::Utc::now()).await;
    }

    /// A tick scheduled for `at`: each minute's tick is processed once, so a test that ticks
    /// repeatedly names distinct minutes.
    pub async fn tick_scheduled(&self, at: chrono::DateTime<chrono::Utc>) {
        let payload = json!({"kind": "tick", "scheduled_at": at.to_rfc3339()});
        analyze::handler(
            self.function("analyze"),
            LambdaEvent::new(payload, Context::default()),
        )
        .await
        .expect("tick handled");
        self.run_steps().await;
    }

    /// Hands the tick's per-system messages on the analyze queue to the analyze function, as
    /// its event source mapping would; other messages there are made visible again at once.
    async fn run_steps(&self) {
        let (url, arn) = self.queues[&Queue::Analyze].clone();
        loop {
            let received = tests::moto::receive(&self.sqs, &url).await;
            let mut records = Vec::new();
            for m in &received {
                let body = m.body().unwrap_or_default();
                let handle = m.receipt_handle().unwrap_or_default();
                if body.contains("\"type\":\"SystemTick\"") {
                    records.push(sqs_record(m, &arn));
                    self.sqs
                        .delete_message()
                        .queue_url(&url)
                        .receipt_handle(handle)
                        .send()
                        .await
                        .expect("delete");
                } else {
                    self.sqs
                        .change_message_visibility()
                        .queue_url(&url)
                        .receipt_handle(handle)
                        .visibility_timeout(0)
                        .send()
                        .await
                        .expect("visible again");
                }
            }
            if records.is_empty() {
                return;
            }
            let mut event = SqsEvent::default();
            event.records = records;
            let response = self.invoke(Queue::Analyze, event).await;
            assert_eq!(
                response["batchItemFailures"].as_array().map(Vec::len),
                Some(0),
                "the tick's steps: {response}"
            );
        }
    }

    pub async fn send(&self, queue: Queue, body: &str) {
        self.sqs
            .send_message()
            .queue_url(&self.queues[&queue].0)
            .message_body(body)
            .send()
            .await
            .expect("send");
    }

    /// Receives what `queue` holds and hands it to the function that consumes it, the way the
    /// event source mapping would; deletes what the handler acknowledged. Returns the batch
    /// response as JSON.
    pub async fn deliver(&mut self, queue: Queue) -> Option<Value> {
        let (url, arn) = self.queues[&queue].clone();
        let received = tests::moto::receive(&self.sqs, &url).await;
        let messages = &received;
        if messages.is_empty() {
            return None;
        }
        let mut records = Vec::new();
        for m in messages {
            self.delivered
                .push((queue, m.body().unwrap_or_default().to_owned()));
            records.push(sqs_record(m, &arn));
        }
        if self.options.twice {
            let copies = records.clone();
            records.extend(copies);
            self.shuffle(&mut records);
        }
        let mut event = SqsEvent::default();
        event.records = records;
        let response = self.invoke(queue, event).await;
        let failed: Vec<String> = response["batchItemFailures"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|f| f["itemIdentifier"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        for m in messages {
            if !failed.iter().any(|f| Some(f.as_str()) == m.message_id()) {
                self.sqs
                    .delete_message()
                    .queue_url(&url)
                    .receipt_handle(m.receipt_handle().unwrap_or_default())
                    .send()
                    .await
                    .expect("delete");
            }
        }
        Some(response)
    }

    fn shuffle<T>(&self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = (self.random.next_u64() % (i as u64 + 1)) as usize;
            items.swap(i, j);
        }
    }

    async fn invoke(&self, queue: Queue, event: SqsEvent) -> Value {
        let ctx = Context::default();
        let value = |e: &SqsEvent| serde_json::to_value(e).expect("event JSON");
        let response = match queue {
            Queue::Analyze => serde_json::to_value(
                analyze::handler(
                    self.function("analyze"),
                    LambdaEvent::new(value(&event), ctx),
                )
                .await
                .expect("analyze"),
            ),
            Queue::Strategize => serde_json::to_value(
                strategize::handler(self.function("strategize"), LambdaEvent::new(event, ctx))
                    .await
                    .expect("strategize"),
            ),
            Queue::Decide => serde_json::to_value(
                decide::handler(self.function("decide"), LambdaEvent::new(event, ctx))
                    .await
                    .expect("decide"),
            ),
            Queue::Snapshot | Queue::Fitness => serde_json::to_value(
                snapshot::handler(self.function("snapshot"), LambdaEvent::new(event, ctx))
                    .await
                    .expect("snapshot"),
            ),
            Queue::CostGuard => serde_json::to_value(
                cost_guard::handler(
                    self.function("cost-guard"),
                    LambdaEvent::new(value(&event), ctx),
                )
                .await
                .expect("cost-guard"),
            ),
        };
        response.expect("response JSON")
    }

    /// The running system: applies what `evolution-events` delivers and reports the fitness of
    /// each new generation to the `fitness` queue, as a user's system would.
    pub async fn run_system(&mut self, score: impl Fn(u64) -> f64) {
        let received = self
            .sqs
            .receive_message()
            .queue_url(&self.running_system)
            .max_number_of_messages(10)
            .message_attribute_names("All")
            .send()
            .await
            .expect("receive");
        for m in received.messages() {
            let body: Value = serde_json::from_str(m.body().unwrap_or_default()).expect("JSON");
            self.dna_messages.push(body.clone());
            if body["type"] == "DnaUpdated" {
                let generation = body["generation"].as_u64().expect("generation");
                self.report(
                    generation,
                    body["checksum"].as_str().expect("checksum"),
                    score(generation),
                )
                .await;
            }
            self.sqs
                .delete_message()
                .queue_url(&self.running_system)
                .receipt_handle(m.receipt_handle().unwrap_or_default())
                .send()
                .await
                .expect("delete");
        }
    }

    /// A `FitnessReported` message, as the running system sends it.
    pub async fn report(&self, generation: u64, checksum: &str, score: f64) {
        let body = json!({
            "id": format!("fit-{generation}-{checksum}"),
            "system_id": SYSTEM,
            "base_generation": generation,
            "sent_at": chrono::Utc::now().to_rfc3339(),
            "type": "FitnessReported",
            "generation": generation,
            "checksum": checksum,
            "score": score,
            "metrics": {"p99_ms": 12.5},
        });
        self.send(Queue::Fitness, &body.to_string()).await;
    }

    /// The running system starts: it fetches the head and measures generation 0.
    pub async fn report_baseline(&self, score: f64) {
        let generation = self
            .store
            .get_generation(&system_id(), 0)
            .await
            .expect("read")
            .expect("generation 0");
        self.report(0, &generation.checksum, score).await;
    }

    /// One round: every queue delivered once, then the running system.
    pub async fn round(&mut self, score: &impl Fn(u64) -> f64) {
        for q in Queue::ALL {
            self.deliver(q).await;
        }
        self.run_system(score).await;
    }

    pub async fn dead_letters(&self, queue: Queue) -> Vec<(String, String)> {
        let received = self
            .sqs
            .receive_message()
            .queue_url(&self.dlqs[&queue])
            .max_number_of_messages(10)
            .message_attribute_names("All")
            .send()
            .await
            .expect("receive");
        received
            .messages()
            .iter()
            .map(|m| {
                let reason = m
                    .message_attributes()
                    .and_then(|a| a.get("reason"))
                    .and_then(MessageAttributeValue::string_value)
                    .unwrap_or_default()
                    .to_owned();
                (m.body().unwrap_or_default().to_owned(), reason)
            })
            .collect()
    }

    pub async fn inbox(&self) -> Vec<Value> {
        let received = self
            .sqs
            .receive_message()
            .queue_url(&self.alerts_inbox)
            .max_number_of_messages(10)
            .send()
            .await
            .expect("receive");
        received
            .messages()
            .iter()
            .map(|m| serde_json::from_str(m.body().unwrap_or_default()).expect("alert JSON"))
            .collect()
    }

    /// The number of event bodies in S3 for the system.
    pub async fn s3_event_bodies(&self) -> Vec<String> {
        let listed = self
            .s3
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(format!("evolution-events/system={SYSTEM}/"))
            .send()
            .await
            .expect("list");
        listed
            .contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_owned))
            .collect()
    }

    /// The envelope of an earlier delivery, e.g. for a stale redelivery.
    pub fn earlier(&self, type_name: &str) -> Option<Envelope> {
        self.delivered
            .iter()
            .filter_map(|(_, body)| serde_json::from_str::<Envelope>(body).ok())
            .find(|e| e.body.type_name() == type_name)
    }
}

/// An SQS queue subscribed to `topic` with raw message delivery.
async fn subscribe(
    sqs: &aws_sdk_sqs::Client,
    sns: &aws_sdk_sns::Client,
    topic: &str,
    name: &str,
) -> String {
    let (url, arn) = queue(sqs, name).await;
    sns.subscribe()
        .topic_arn(topic)
        .protocol("sqs")
        .endpoint(arn)
        .attributes("RawMessageDelivery", "true")
        .send()
        .await
        .expect("subscribe");
    url
}

/// A received message as the event source mapping hands it to the function.
fn sqs_record(m: &aws_sdk_sqs::types::Message, arn: &str) -> SqsMessage {
    let mut record = SqsMessage::default();
    record.message_id = m.message_id().map(str::to_owned);
    record.receipt_handle = m.receipt_handle().map(str::to_owned);
    record.body = m.body().map(str::to_owned);
    record.event_source_arn = Some(arn.to_owned());
    record
}
