//! The AWS side of the smoke tests: moto standing in for DynamoDB, S3, SQS and SNS, with the
//! resources the deployment template creates (named as the stack `evolve` names them, in the
//! region and account of the sample events), and the Bedrock stub.

use std::collections::BTreeMap;
use std::sync::Arc;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_sqs::types::{Message, MessageSystemAttributeName};
use shared::domain::{Body, DnaFile, Envelope, Queue, SystemId, Topic};
use shared::lambda::config::{self, dlq_url_variable, queue_url_variable, topic_arn_variable};
use shared::lambda::testing;
use shared::lambda::wiring;
use shared::local::init_system;
use shared::stages::{Deps, PipelineConfig};
use shared::store::dynamo::DynamoStore;
use shared::store::{EvolutionStore, SystemSettings};
use tests::bedrock_stub::StubServer;
use tests::moto::MotoServer;

/// The region and account of the ARNs in `infra/events/` (moto's default account).
pub const REGION: &str = "eu-west-1";
pub const ACCOUNT: &str = "123456789012";
/// The stack name the sample events were captured from.
pub const STACK: &str = "evolve";

/// What a queue's consumer is told about it.
#[derive(Debug, Clone)]
pub struct QueueUrls {
    pub url: String,
    pub dead_letters: String,
}

#[derive(Debug)]
pub struct World {
    pub moto: MotoServer,
    pub stub: StubServer,
    pub sqs: aws_sdk_sqs::Client,
    pub queues: BTreeMap<Queue, QueueUrls>,
    pub topics: BTreeMap<Topic, String>,
    pub table: String,
    pub bucket: String,
    pub store: Arc<DynamoStore>,
    pub system: SystemId,
    /// The notify function's queue (the alerts topic's subscription) and its dead-letter queue.
    pub notify: QueueUrls,
    pub secrets: aws_sdk_secretsmanager::Client,
    /// The webhook secret, created holding `{}` as the stack creates it.
    pub webhook_secret: String,
}

/// The ARN a queue of the stack has (what the sample events carry as `eventSourceARN`).
pub fn queue_arn(queue: Queue) -> String {
    format!("arn:aws:sqs:{REGION}:{ACCOUNT}:{STACK}-{}", queue.as_str())
}

impl World {
    /// moto with the table, the bucket, the twelve queues and the two topics, and the stub.
    pub async fn new() -> Self {
        let moto = tokio::task::spawn_blocking(MotoServer::start)
            .await
            .expect("start moto");
        let stub = StubServer::start().await;
        let sdk = sdk(moto.url()).await;
        let sqs = aws_sdk_sqs::Client::new(&sdk);
        let sns = aws_sdk_sns::Client::new(&sdk);
        let mut queues = BTreeMap::new();
        for queue in Queue::ALL {
            let name = format!("{STACK}-{}", queue.as_str());
            let url = create_queue(&sqs, &name).await;
            let dead_letters = create_queue(&sqs, &format!("{name}-dlq")).await;
            queues.insert(queue, QueueUrls { url, dead_letters });
        }
        let mut topics = BTreeMap::new();
        for topic in [Topic::EvolutionEvents, Topic::Alerts] {
            let created = sns
                .create_topic()
                .name(format!("{STACK}-{}", topic.as_str()))
                .send()
                .await
                .expect("create topic");
            topics.insert(topic, created.topic_arn().expect("topic ARN").to_owned());
        }
        let table = format!("{STACK}-table");
        let bucket = format!("{STACK}-bucket");
        let store = Arc::new(DynamoStore::new(
            aws_sdk_dynamodb::Client::new(&sdk),
            aws_sdk_s3::Client::new(&sdk),
            table.clone(),
            bucket.clone(),
        ));
        store
            .create_resources()
            .await
            .expect("create table and bucket");
        let notify = QueueUrls {
            url: create_queue(&sqs, &format!("{STACK}-notify")).await,
            dead_letters: create_queue(&sqs, &format!("{STACK}-notify-dlq")).await,
        };
        let secrets = aws_sdk_secretsmanager::Client::new(&sdk);
        let webhook_secret = secrets
            .create_secret()
            .name(format!("{STACK}-webhooks"))
            .secret_string("{}")
            .send()
            .await
            .expect("create the webhook secret")
            .arn()
            .expect("secret ARN")
            .to_owned();
        Self {
            notify,
            secrets,
            webhook_secret,
            moto,
            stub,
            sqs,
            queues,
            topics,
            table,
            bucket,
            store,
            system: SystemId::parse(testing::SYSTEM).expect("system id"),
        }
    }

    /// The environment of `package`: exactly the variables its config type reads, pointing at
    /// this world, plus the SDK's endpoint, region and credentials.
    pub fn env(&self, variables: &[&str]) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = variables
            .iter()
            .map(|&name| (name.to_owned(), self.value_of(name)))
            .collect();
        let scratch = std::env::temp_dir().join("evolve-smoke-no-aws-config");
        for (name, value) in [
            ("AWS_REGION", REGION.to_owned()),
            ("AWS_ACCESS_KEY_ID", "smoke".to_owned()),
            ("AWS_SECRET_ACCESS_KEY", "smoke".to_owned()),
            ("AWS_ENDPOINT_URL", self.moto.url().to_owned()),
            ("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", self.stub.url()),
            ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
            (
                "AWS_CONFIG_FILE",
                scratch.join("config").display().to_string(),
            ),
            (
                "AWS_SHARED_CREDENTIALS_FILE",
                scratch.join("credentials").display().to_string(),
            ),
            ("AWS_LAMBDA_LOG_LEVEL", "INFO".to_owned()),
        ] {
            env.push((name.to_owned(), value));
        }
        env
    }

    fn value_of(&self, name: &str) -> String {
        for queue in Queue::ALL {
            if name == queue_url_variable(queue) {
                return self.queues[&queue].url.clone();
            }
            if name == dlq_url_variable(queue) {
                return self.queues[&queue].dead_letters.clone();
            }
        }
        for topic in [Topic::EvolutionEvents, Topic::Alerts] {
            if name == topic_arn_variable(topic) {
                return self.topics[&topic].clone();
            }
        }
        match name {
            config::TABLE_NAME => self.table.clone(),
            config::BUCKET_NAME => self.bucket.clone(),
            config::SNAPSHOT_QUEUE_ARN => queue_arn(Queue::Snapshot),
            config::FITNESS_QUEUE_ARN => queue_arn(Queue::Fitness),
            // What the template passes when its budget parameters are left empty.
            config::DAILY_BUDGET_NANO_USD
            | config::MONTHLY_BUDGET_NANO_USD
            | config::MODEL_CATALOG
            | config::NOTIFY_KINDS
            | config::APPROVAL_RISK_THRESHOLD => String::new(),
            config::APPROVAL_TTL_SECONDS => "86400".to_owned(),
            config::LLM => "bedrock".to_owned(),
            // The template's default.
            config::RESPONSE_CACHE_TTL_SECONDS => "900".to_owned(),
            config::NOTIFY_DLQ_URL => self.notify.dead_letters.clone(),
            config::WEBHOOK_SECRET_ARN => self.webhook_secret.clone(),
            // What the template passes by default.
            config::NOTIFY_MIN_LEVEL => "warning".to_owned(),
            config::WEBHOOK_SECRET_TTL_SECONDS => "300".to_owned(),
            config::WEBHOOK_TIMEOUT_MS => "5000".to_owned(),
            // The template's defaults.
            config::RECONCILE_THRESHOLD_BP => "200".to_owned(),
            config::RECONCILE_HOUR_UTC => "6".to_owned(),
            other => panic!("the smoke test does not know how to set {other}"),
        }
    }

    fn deps(&self) -> Deps {
        wiring::deps(
            self.store.clone(),
            wiring::no_llm(),
            PipelineConfig::default(),
        )
    }

    /// Registers the sample events' system, as `evolve init` does: generation 0 under its
    /// baseline evaluation.
    pub async fn init_system(&self) {
        let (system_id, schema, genes) = DnaFile::parse(testing::DNA).expect("test DNA");
        // Generation 0's `DnaUpdated` stays on a local bus: the smoke tests look at their own.
        let deps = self.deps();
        let bus = shared::bus::local::LocalBus::new(deps.clock.clone());
        init_system(
            &deps,
            &bus,
            &system_id,
            schema,
            genes,
            SystemSettings::default(),
        )
        .await
        .expect("init the system");
    }

    /// Reports the baseline's fitness, so the head is stable and a cycle runs the analysis.
    pub async fn close_baseline(&self) {
        let deps = self.deps();
        let generation = self
            .store
            .get_generation(&self.system, 0)
            .await
            .expect("read generation 0")
            .expect("generation 0");
        let report = Envelope {
            id: "smoke-baseline-fitness".into(),
            causation_id: String::new(),
            system_id: self.system.clone(),
            base_generation: 0,
            sent_at: deps.clock.now(),
            traceparent: None,
            body: Body::FitnessReported {
                generation: 0,
                checksum: generation.checksum,
                score: Some(0.5),
                metrics: BTreeMap::new(),
                error: None,
                cohort: None,
            },
        };
        // The messages it causes stay on a local bus: the smoke tests look at their own.
        let bus = shared::bus::local::LocalBus::new(deps.clock.clone());
        shared::pipeline::handle(&deps, &bus, &report)
            .await
            .expect("close the baseline");
    }

    /// Every message waiting on a queue (received once, with its attributes).
    pub async fn drain(&self, url: &str) -> Vec<Message> {
        let mut messages = Vec::new();
        // moto answers at once; a few empty rounds in a row mean the queue is empty.
        let mut empty_rounds = 0;
        for _ in 0..50 {
            let received = self
                .sqs
                .receive_message()
                .queue_url(url)
                .max_number_of_messages(10)
                .message_attribute_names("All")
                .message_system_attribute_names(MessageSystemAttributeName::All)
                .wait_time_seconds(0)
                .send()
                .await
                .expect("receive");
            let batch = received.messages();
            if batch.is_empty() {
                empty_rounds += 1;
                if empty_rounds == 2 {
                    break;
                }
                continue;
            }
            empty_rounds = 0;
            messages.extend_from_slice(batch);
        }
        messages
    }

    pub fn queue(&self, queue: Queue) -> &QueueUrls {
        &self.queues[&queue]
    }
}

/// A string message attribute.
pub fn attribute<'a>(message: &'a Message, name: &str) -> Option<&'a str> {
    message
        .message_attributes()
        .and_then(|a| a.get(name))
        .and_then(|v| v.string_value())
}

async fn sdk(endpoint: &str) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "smoke", "smoke", None, None, "smoke",
        ))
        .endpoint_url(endpoint)
        .load()
        .await
}

async fn create_queue(sqs: &aws_sdk_sqs::Client, name: &str) -> String {
    sqs.create_queue()
        .queue_name(name)
        .send()
        .await
        .unwrap_or_else(|e| panic!("create queue {name}: {e}"))
        .queue_url()
        .expect("queue URL")
        .to_owned()
}
