//! A stack on moto (table, bucket, the six queues with their dead-letter queues, the two topics
//! and a subscriber queue on `evolution-events`), the Converse stub in this process, and
//! `evolve worker --store aws` as a child process pointed at both.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use shared::bus::aws::Destinations;
use shared::domain::{DnaFile, Queue, SystemId, Topic};
use shared::engine::LocalEngine;
use shared::local::{LocalHome, init_system};
use shared::stages::PipelineConfig;
use shared::store::dynamo::DynamoStore;
use shared::store::{EvolutionStore, SystemSettings};
use shared::worker::config as vars;
use tests::bedrock_stub::StubServer;
use tests::moto::{MotoServer, unique_name};

pub const SYSTEM: &str = "worker-svc";
const DNA: &str = r#"{"system_id": "worker-svc", "genes": {
  "batch_size": {"type": "int", "value": 32, "min": 1, "max": 512, "max_step": 64, "risk_weight": 0.1},
  "timeout_s": {"type": "float", "value": 2.5, "min": 0.5, "max": 30.0, "max_step": 2.0, "risk_weight": 0.1},
  "prefetch": {"type": "bool", "value": false, "risk_weight": 0.1}
}}"#;

pub fn system_id() -> SystemId {
    SystemId::parse(SYSTEM).expect("valid id")
}

/// The `evolve` binary, built once per test process.
pub fn evolve_bin() -> PathBuf {
    tests::bins::workspace_bin("evolve")
}

pub struct Stack {
    pub moto: &'static MotoServer,
    pub stub: StubServer,
    pub store: Arc<DynamoStore>,
    pub sqs: aws_sdk_sqs::Client,
    table: String,
    bucket: String,
    /// URL of each queue.
    pub queues: BTreeMap<Queue, String>,
    pub dlqs: BTreeMap<Queue, String>,
    topics: BTreeMap<Topic, String>,
    /// Subscribed to `evolution-events` (raw delivery): what the running system receives.
    pub running_system: String,
}

impl Stack {
    pub async fn new() -> Self {
        let moto = MotoServer::shared();
        let aws = tests::moto::sdk_config(moto.url()).await;
        let sqs = aws_sdk_sqs::Client::new(&aws);
        let sns = aws_sdk_sns::Client::new(&aws);
        let s3 = tests::moto::s3_client(&aws);
        let table = unique_name("worker-table");
        let bucket = unique_name("worker-bucket");
        let store = DynamoStore::new(
            aws_sdk_dynamodb::Client::new(&aws),
            s3,
            table.clone(),
            bucket.clone(),
        );
        store.create_resources().await.expect("table and bucket");
        let mut queues = BTreeMap::new();
        let mut dlqs = BTreeMap::new();
        for q in Queue::ALL {
            queues.insert(
                q,
                tests::moto::queue(&sqs, &format!("worker-{}", q.as_str()))
                    .await
                    .0,
            );
            dlqs.insert(
                q,
                tests::moto::queue(&sqs, &format!("worker-{}-dlq", q.as_str()))
                    .await
                    .0,
            );
        }
        let topics = tests::moto::topics(&sns).await;
        let (running_system, running_arn) = tests::moto::queue(&sqs, "worker-running").await;
        sns.subscribe()
            .topic_arn(&topics[&Topic::EvolutionEvents])
            .protocol("sqs")
            .endpoint(running_arn)
            .attributes("RawMessageDelivery", "true")
            .send()
            .await
            .expect("subscribe");
        Self {
            moto,
            stub: StubServer::start().await,
            store: Arc::new(store),
            sqs,
            table,
            bucket,
            queues,
            dlqs,
            topics,
            running_system,
        }
    }

    /// The stack's queues and topics, for a bus of the test's own that sends where the
    /// product does.
    pub fn destinations(&self) -> Destinations {
        Destinations {
            queues: self.queues.clone(),
            topics: self.topics.clone(),
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

    /// The running system reports generation 0's fitness: snapshot closes the baseline and
    /// requests the first cycle from analyze.
    pub async fn report_baseline(&self, score: f64) {
        let generation = self
            .store
            .get_generation(&system_id(), 0)
            .await
            .expect("read")
            .expect("generation 0");
        let body = json!({
            "id": format!("fit-0-{}", generation.checksum),
            "system_id": SYSTEM,
            "base_generation": 0,
            "sent_at": chrono::Utc::now().to_rfc3339(),
            "type": "FitnessReported",
            "generation": 0,
            "checksum": generation.checksum,
            "score": score,
            "metrics": {"p99_ms": 12.5},
        });
        self.sqs
            .send_message()
            .queue_url(&self.queues[&Queue::Fitness])
            .message_body(body.to_string())
            .send()
            .await
            .expect("send");
    }

    /// Starts `evolve worker --store aws` on `queues` with extra flags.
    pub fn worker(&self, queues: &str, extra: &[&str]) -> WorkerProcess {
        self.worker_with_env(queues, extra, &[])
    }

    /// [`Stack::worker`] with extra environment variables.
    pub fn worker_with_env(
        &self,
        queues: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> WorkerProcess {
        let log = tempfile::NamedTempFile::new().expect("log file");
        let mut command = Command::new(evolve_bin());
        command
            .args(["worker", "--queues", queues])
            .args(extra)
            .env("EVOLVE_STORE", "aws")
            .env(vars::TABLE_NAME, &self.table)
            .env(vars::BUCKET_NAME, &self.bucket)
            .env(
                vars::EVENTS_TOPIC_ARN,
                &self.topics[&Topic::EvolutionEvents],
            )
            .env(vars::ALERTS_TOPIC_ARN, &self.topics[&Topic::Alerts])
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ENDPOINT_URL", self.moto.url())
            .env("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", self.stub.url())
            .env("RUST_LOG", "info")
            .env_remove("AWS_PROFILE")
            .env_remove("EVOLVE_SYSTEM")
            .env_remove(vars::LLM)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log.reopen().expect("log file"));
        command.envs(env.iter().copied());
        for q in Queue::ALL {
            command.env(vars::queue_url_variable(q), &self.queues[&q]);
            command.env(vars::dlq_url_variable(q), &self.dlqs[&q]);
        }
        let child = command.spawn().expect("evolve worker starts");
        WorkerProcess { child, log }
    }

    /// Receives up to ten messages of `url` (hidden for `visibility` seconds), waiting up to
    /// `wait` seconds; returns their bodies as JSON.
    pub async fn receive(&self, url: &str, wait: i32, visibility: i32) -> Vec<Value> {
        let received = self
            .sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .wait_time_seconds(wait)
            .visibility_timeout(visibility)
            .send()
            .await
            .expect("receive");
        received
            .messages()
            .iter()
            .map(|m| serde_json::from_str(m.body().unwrap_or_default()).expect("JSON body"))
            .collect()
    }

    /// Every message that arrives on `url` within `within`, until `enough` of them did.
    pub async fn collect(&self, url: &str, enough: usize, within: Duration) -> Vec<Value> {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        while seen.len() < enough && Instant::now() < deadline {
            seen.extend(self.receive(url, 1, 600).await);
        }
        seen
    }

    /// Waits until the stub has received `n` requests.
    pub async fn wait_for_requests(&self, n: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while self.stub.request_count() < n {
            assert!(
                Instant::now() < deadline,
                "the stub received {} request(s), not {n}, within {within:?}",
                self.stub.request_count()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A running `evolve worker`; killed when dropped.
pub struct WorkerProcess {
    child: Child,
    log: tempfile::NamedTempFile,
}

impl WorkerProcess {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the worker logged on stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    pub fn sigkill(&mut self) {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
    }

    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Waits for the process to exit.
    pub async fn exit_within(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the worker did not exit within {within:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
