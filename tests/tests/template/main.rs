//! The deployment template (`infra/template.yaml`) checked against the code it deploys: each
//! function's environment equals what its config type reads, every queue has its dead-letter
//! queue and a visibility timeout of at least six times its consumer's timeout, IAM is
//! least-privilege (named actions, named resources, producers named on queues and topics),
//! everything that stores data uses the stack's KMS key, the Bedrock grants cover the model
//! catalog, and alarms and the dashboard name only metrics the code emits. `cfn-lint` runs last.

mod cfn;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use shared::domain::{Queue, Topic};
use shared::lambda::config::{self, FUNCTIONS};
use shared::lambda::metrics;
use shared::llm::catalog::{Invocation, ModelCatalog};
use shared::worker::config as w;

use cfn::{
    Template, actions, alternatives, policy_documents, resources_of, statements, target, template,
    text,
};

/// Every metric the code emits (shared/src/lambda/metrics.rs).
const METRICS: &[&str] = &[
    metrics::MESSAGES_PROCESSED,
    metrics::MESSAGES_RETRIED,
    metrics::MESSAGES_DEAD_LETTERED,
    metrics::MESSAGES_NOT_STARTED,
    metrics::MESSAGES_PANICKED,
    metrics::DUPLICATES,
    metrics::FALLBACKS,
    metrics::LLM_COST_NANO_USD,
    metrics::LLM_TOKENS,
    metrics::GENERATION,
    metrics::FITNESS,
    metrics::ROLLBACKS,
    metrics::BUDGET_MODE,
    metrics::SCHEDULED_RUNS,
    metrics::ALERTS_POSTED,
    metrics::ALERTS_FILTERED,
];

/// The only statements that may say `Resource: '*'`, each with the reason (the template carries
/// the same reason as a comment on each such line).
const STAR_RESOURCES: &[(&str, &str, &str)] = &[
    ("Key", "AccountAdministersAndDelegatesToIam", KEY_POLICY),
    ("Key", "FunctionsThroughStackServices", KEY_POLICY),
    ("Key", "CloudWatchLogsEncryptsTheFunctionLogs", KEY_POLICY),
    (
        "Key",
        "CloudWatchAlarmsPublishToTheEncryptedAlertsTopic",
        KEY_POLICY,
    ),
    ("Key", "SchedulerDecryptsTheScheduleInput", KEY_POLICY),
    (
        "Key",
        "AlertsTopicDeliversToTheEncryptedNotifyQueue",
        KEY_POLICY,
    ),
    ("Key", "RunningSystemSendsFitnessThroughSqs", KEY_POLICY),
    ("Key", "OperatorsSendThroughSqs", KEY_POLICY),
    ("WorkerExecutionRole", "EcrToken", ECR_TOKEN),
];
const KEY_POLICY: &str = "a key policy names its own key as '*'";
const ECR_TOKEN: &str = "ecr:GetAuthorizationToken has no resource-level permissions";

/// The only statements whose actions may hold a wildcard: Denies, which only take away.
const WILDCARD_DENIES: &[(&str, &str, &str)] = &[(
    "BucketPolicy",
    "DenyRequestsWithoutTls",
    "AWS Config's s3-bucket-ssl-requests-only expects s3:* in the TLS Deny",
)];

/// The function resources by package name: `(package, logical id, resource)`.
fn functions(t: &Template) -> Vec<(&'static str, &str, &Value)> {
    FUNCTIONS
        .iter()
        .map(|(package, _)| {
            let code_uri = format!("../functions/{package}");
            let (id, resource) = t
                .of_type("AWS::Serverless::Function")
                .find(|(_, r)| r["Properties"]["CodeUri"] == code_uri.as_str())
                .unwrap_or_else(|| panic!("no function with CodeUri {code_uri}"));
            (*package, id, resource)
        })
        .collect()
}

fn variables_of(package: &str) -> &'static [&'static str] {
    let Some((_, variables)) = FUNCTIONS.iter().find(|(p, _)| *p == package) else {
        panic!("no function {package}")
    };
    variables
}

/// Whether a function calls Bedrock: its config reads the LLM engine.
fn calls_llm(package: &str) -> bool {
    variables_of(package).contains(&config::LLM)
}

/// The logical id of a function's role.
fn role_of(function: &Value) -> &str {
    target(&function["Properties"]["Role"]).expect("every function names its hand-written role")
}

/// Every statement a role holds: its inline policies and the managed policies of the template
/// attached to it.
fn role_statements<'a>(t: &'a Template, role: &str) -> Vec<&'a Value> {
    let properties = &t.resource(role)["Properties"];
    let mut out = Vec::new();
    for policy in alternatives(&properties["Policies"]) {
        out.extend(statements(&policy["PolicyDocument"]));
    }
    for managed in alternatives(&properties["ManagedPolicyArns"]) {
        let id = target(managed).unwrap_or_else(|| {
            panic!("{role} attaches a managed policy from outside the template: {managed}")
        });
        out.extend(statements(&t.resource(id)["Properties"]["PolicyDocument"]));
    }
    out
}

/// The logical ids of the resources the Allow statements of `role` grant `action` on.
fn granted(t: &Template, role: &str, action: &str) -> BTreeSet<String> {
    role_statements(t, role)
        .into_iter()
        .filter(|s| s["Effect"] == "Allow" && actions(s).contains(&action))
        .flat_map(resources_of)
        .map(|r| target(r).map_or_else(|| r.to_string(), str::to_owned))
        .collect()
}

/// `(queue logical id, consumer package)` of every SQS event source.
fn consumed_queues(t: &Template) -> Vec<(String, &'static str, &Value)> {
    let mut out = Vec::new();
    for (package, _, function) in functions(t) {
        let Some(events) = function["Properties"]["Events"].as_object() else {
            continue;
        };
        for event in events.values().filter(|e| e["Type"] == "SQS") {
            let queue =
                target(&event["Properties"]["Queue"]).expect("SQS event on a template queue");
            out.push((queue.to_owned(), package, &event["Properties"]));
        }
    }
    out
}

/// The logical id of the queue a queue URL variable of `function` refers to.
fn env_target<'a>(function: &'a Value, variable: &str) -> &'a str {
    target(&function["Properties"]["Environment"]["Variables"][variable])
        .unwrap_or_else(|| panic!("{variable} does not refer to a template resource"))
}

/// The resources a function's environment says it sends to (queues and dead-letter queues) and
/// publishes to (topics).
fn destinations(function: &Value) -> (BTreeSet<String>, BTreeSet<String>) {
    let variables = function["Properties"]["Environment"]["Variables"]
        .as_object()
        .expect("the function has environment variables");
    let mut sends = BTreeSet::new();
    let mut publishes = BTreeSet::new();
    for name in variables.keys() {
        if name.ends_with("_QUEUE_URL") || name.ends_with("_DLQ_URL") {
            sends.insert(env_target(function, name).to_owned());
        } else if name.ends_with("_TOPIC_ARN") {
            publishes.insert(env_target(function, name).to_owned());
        }
    }
    (sends, publishes)
}

/// The principals an Allow statement of a resource policy names, as logical ids of roles or
/// parameter names.
fn principals(statement: &Value) -> BTreeSet<String> {
    alternatives(&statement["Principal"]["AWS"])
        .into_iter()
        .map(|p| target(p).map_or_else(|| p.to_string(), str::to_owned))
        .collect()
}

/// The principals a `NoOtherProducers`-style Deny exempts.
fn exempted(statement: &Value) -> BTreeSet<String> {
    let condition = alternatives(&statement["Condition"]);
    condition
        .iter()
        .flat_map(|c| alternatives(&c["ArnNotEquals"]["aws:PrincipalArn"]))
        .map(|p| target(p).map_or_else(|| p.to_string(), str::to_owned))
        .collect()
}

/// The role logical id of each function package.
fn roles(t: &Template) -> BTreeMap<String, &'static str> {
    functions(t)
        .into_iter()
        .map(|(package, _, f)| (role_of(f).to_owned(), package))
        .collect()
}

#[test]
fn each_function_is_a_rust_arm64_lambda_built_with_cargo_lambda() {
    let t = template();
    for (package, id, function) in functions(t) {
        let p = &function["Properties"];
        assert_eq!(p["Runtime"], "provided.al2023", "{id}");
        assert_eq!(p["Architectures"], serde_json::json!(["arm64"]), "{id}");
        assert_eq!(p["Handler"], "bootstrap", "{id}");
        assert_eq!(
            function["Metadata"]["BuildMethod"], "rust-cargolambda",
            "{id}"
        );
        assert_eq!(
            function["Metadata"]["BuildProperties"]["Binary"], package,
            "{id}"
        );
        assert!(
            cfn::repo_root()
                .join("functions")
                .join(package)
                .join("Cargo.toml")
                .is_file(),
            "{id}: CodeUri does not point at a crate"
        );
        assert!(
            target(&p["MemorySize"]).is_some(),
            "{id}: MemorySize is a parameter"
        );
        assert!(
            target(&p["Timeout"]).is_some(),
            "{id}: Timeout is a parameter"
        );
        assert!(
            p.get("ReservedConcurrentExecutions").is_none(),
            "{id}: concurrency is capped on the event source mappings"
        );
        assert_eq!(p["LoggingConfig"]["LogFormat"], "JSON", "{id}");
        let group = target(&p["LoggingConfig"]["LogGroup"]).expect("own log group");
        let group = &t.resource(group)["Properties"];
        assert_eq!(
            target(&group["RetentionInDays"]),
            Some("LogRetentionDays"),
            "{id}"
        );
    }
}

#[test]
fn each_function_environment_is_exactly_what_its_config_reads() {
    let t = template();
    for (package, id, function) in functions(t) {
        let variables: BTreeSet<&str> = function["Properties"]["Environment"]["Variables"]
            .as_object()
            .unwrap_or_else(|| panic!("{id} has no environment variables"))
            .keys()
            .map(String::as_str)
            .collect();
        let expected: BTreeSet<&str> = variables_of(package).iter().copied().collect();
        assert_eq!(
            variables, expected,
            "{id}: Environment.Variables must equal the config type's VARIABLES"
        );
    }
}

#[test]
fn each_queue_has_a_dead_letter_queue_after_five_receives_and_its_own_consumer() {
    let t = template();
    let consumed = consumed_queues(t);
    let mut main_queues = BTreeSet::new();
    let mut dead_letter_queues = BTreeSet::new();
    for (id, queue) in t.of_type("AWS::SQS::Queue") {
        let redrive = &queue["Properties"]["RedrivePolicy"];
        if redrive.is_null() {
            continue;
        }
        assert_eq!(redrive["maxReceiveCount"], 5, "{id}");
        let dlq = target(&redrive["deadLetterTargetArn"]).expect("DLQ in the template");
        assert!(
            t.resource(dlq)["Properties"]["RedrivePolicy"].is_null(),
            "{id}: its dead-letter queue has no dead-letter queue of its own"
        );
        assert!(
            dead_letter_queues.insert(dlq.to_owned()),
            "{dlq} serves two queues"
        );
        main_queues.insert(id.to_owned());
        let consumers: Vec<_> = consumed.iter().filter(|(q, _, _)| q == id).collect();
        assert_eq!(consumers.len(), 1, "{id} must have exactly one consumer");
    }
    // One queue per domain queue, named after it.
    let names: BTreeSet<String> = main_queues
        .iter()
        .map(|id| {
            let name = text(&t.resource(id)["Properties"]["QueueName"]).expect("named queue");
            name.trim_start_matches("${AWS::StackName}-").to_owned()
        })
        .collect();
    let mut expected: BTreeSet<String> = Queue::ALL.iter().map(|q| q.as_str().to_owned()).collect();
    // Plus notify's queue, which the alerts topic (not the pipeline) delivers to.
    expected.insert(shared::notify::QUEUE.to_owned());
    assert_eq!(names, expected);
    // Each function consumes the queues whose dead-letter queue it is told about.
    for (package, id, function) in functions(t) {
        let dlqs: BTreeSet<String> = variables_of(package)
            .iter()
            .filter(|v| v.ends_with("_DLQ_URL"))
            .map(|v| env_target(function, v).to_owned())
            .collect();
        let own: BTreeSet<String> = consumed
            .iter()
            .filter(|(_, p, _)| *p == package)
            .map(|(q, _, _)| {
                target(&t.resource(q)["Properties"]["RedrivePolicy"]["deadLetterTargetArn"])
                    .expect("DLQ")
                    .to_owned()
            })
            .collect();
        assert_eq!(
            dlqs, own,
            "{id}: its *_DLQ_URL variables name the DLQs of the queues it consumes"
        );
    }
}

/// The values a numeric property can take: a literal, or the allowed values of a parameter.
fn possible_values(t: &Template, value: &Value) -> Vec<u64> {
    if let Some(n) = value.as_u64() {
        return vec![n];
    }
    let name = target(value).expect("a number or a parameter");
    let parameter = t.parameter(name);
    let allowed: Vec<u64> = alternatives(&parameter["AllowedValues"])
        .into_iter()
        .map(|v| v.as_u64().expect("numeric allowed value"))
        .collect();
    assert!(
        !allowed.is_empty(),
        "parameter {name} must list its AllowedValues"
    );
    let default = parameter["Default"].as_u64().expect("numeric default");
    assert!(allowed.contains(&default), "{name}'s default is allowed");
    allowed
}

#[test]
fn each_queue_hides_a_message_for_at_least_six_times_its_consumer_timeout() {
    let t = template();
    for (queue, package, _) in consumed_queues(t) {
        let (_, _, function) = functions(t)
            .into_iter()
            .find(|(p, _, _)| *p == package)
            .expect("consumer");
        let timeout = &function["Properties"]["Timeout"];
        let visibility = &t.resource(&queue)["Properties"]["VisibilityTimeout"];
        for seconds in possible_values(t, timeout) {
            let hidden = if let Some(lookup) = visibility.get("Fn::FindInMap") {
                let map = lookup[0].as_str().expect("mapping name");
                assert_eq!(
                    lookup[1], *timeout,
                    "{queue}: the visibility timeout is looked up by its consumer's timeout"
                );
                let key = lookup[2].as_str().expect("mapping key");
                t.mapping(map)[seconds.to_string()][key]
                    .as_u64()
                    .unwrap_or_else(|| panic!("{map} has no {key} for {seconds}"))
            } else {
                visibility.as_u64().expect("a number or a lookup")
            };
            assert!(
                hidden >= 6 * seconds,
                "{queue}: visibility timeout {hidden}s < 6 x {seconds}s of {package}"
            );
        }
    }
}

#[test]
fn event_source_mappings_report_item_failures_cap_concurrency_and_take_one_llm_message_at_a_time() {
    let t = template();
    for (queue, package, properties) in consumed_queues(t) {
        assert_eq!(
            properties["FunctionResponseTypes"],
            serde_json::json!(["ReportBatchItemFailures"]),
            "{queue}"
        );
        assert!(
            target(&properties["ScalingConfig"]["MaximumConcurrency"]).is_some(),
            "{queue}: MaximumConcurrency is a parameter"
        );
        if calls_llm(package) {
            assert_eq!(
                properties["BatchSize"], 1,
                "{queue}: {package} calls Bedrock"
            );
        }
    }
}

#[test]
fn no_allow_statement_has_a_wildcard_action() {
    let t = template();
    let mut denies = BTreeSet::new();
    for (id, path, document) in policy_documents(t) {
        for statement in statements(document) {
            let sid = statement["Sid"].as_str().unwrap_or("");
            assert!(
                statement.get("NotAction").is_none(),
                "{id} {path} {sid}: NotAction"
            );
            let wild: Vec<&str> = actions(statement)
                .into_iter()
                .filter(|a| a.contains('*'))
                .collect();
            if wild.is_empty() {
                continue;
            }
            assert_eq!(
                statement["Effect"], "Deny",
                "{id} {path} {sid}: wildcard actions {wild:?}"
            );
            denies.insert((id.to_owned(), sid.to_owned()));
        }
    }
    let allowed: BTreeSet<(String, String)> = WILDCARD_DENIES
        .iter()
        .map(|(id, sid, _)| ((*id).to_owned(), (*sid).to_owned()))
        .collect();
    assert_eq!(denies, allowed, "wildcard Denies outside the allow-list");
}

#[test]
fn resource_star_appears_only_where_aws_requires_it_and_says_why() {
    let t = template();
    let mut found = BTreeSet::new();
    for (id, _, document) in policy_documents(t) {
        for statement in statements(document) {
            if resources_of(statement).iter().any(|r| *r == "*") {
                let sid = statement["Sid"].as_str().unwrap_or("");
                found.insert((id.to_owned(), sid.to_owned()));
            }
        }
    }
    let allowed: BTreeSet<(String, String)> = STAR_RESOURCES
        .iter()
        .map(|(id, sid, _)| ((*id).to_owned(), (*sid).to_owned()))
        .collect();
    assert_eq!(found, allowed, "Resource '*' outside the allow-list");
    // Each such line carries its reason as a comment.
    let lines: Vec<&str> = t
        .text
        .lines()
        .filter(|l| l.trim_start().starts_with("Resource: '*'"))
        .collect();
    assert_eq!(lines.len(), STAR_RESOURCES.len());
    for line in lines {
        let comment = line.split_once('#').map(|(_, c)| c.trim());
        assert!(
            STAR_RESOURCES
                .iter()
                .any(|(_, _, why)| comment == Some(*why)),
            "{line}"
        );
    }
    // Identity policies (roles and managed policies) never use '*', but for the one action that
    // has no resource to name.
    for (id, _, document) in policy_documents(t) {
        let kind = t.resource(id)["Type"].as_str().unwrap_or("");
        if kind == "AWS::IAM::Role" || kind == "AWS::IAM::ManagedPolicy" {
            for statement in statements(document) {
                if resources_of(statement).iter().any(|r| *r == "*") {
                    assert_eq!(
                        (id, statement["Sid"].as_str(), actions(statement)),
                        (
                            "WorkerExecutionRole",
                            Some("EcrToken"),
                            vec!["ecr:GetAuthorizationToken"]
                        ),
                        "{id}"
                    );
                }
            }
        }
    }
}

#[test]
fn every_store_uses_the_stack_key() {
    let t = template();
    let (key, _) = t.of_type("AWS::KMS::Key").next().expect("a KMS key");
    let uses_key = |value: &Value| target(value) == Some(key);
    let mut stores = 0;
    for (id, table) in t.of_type("AWS::DynamoDB::GlobalTable") {
        let p = &table["Properties"];
        assert_eq!(p["SSESpecification"]["SSEEnabled"], true, "{id}");
        assert_eq!(p["SSESpecification"]["SSEType"], "KMS", "{id}");
        let home = &p["Replicas"][0];
        assert_eq!(
            home["Region"]["Ref"], "AWS::Region",
            "{id}: the first replica is home"
        );
        assert!(
            uses_key(&home["SSESpecification"]["KMSMasterKeyId"]),
            "{id}"
        );
        for replica in alternatives(&p["Replicas"]) {
            assert_eq!(
                replica["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"], true,
                "{id}: every replica has point-in-time recovery"
            );
        }
        stores += 1;
    }
    for (id, bucket) in t.of_type("AWS::S3::Bucket") {
        let rule =
            &bucket["Properties"]["BucketEncryption"]["ServerSideEncryptionConfiguration"][0];
        assert_eq!(
            rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"], "aws:kms",
            "{id}"
        );
        assert!(
            uses_key(&rule["ServerSideEncryptionByDefault"]["KMSMasterKeyID"]),
            "{id}"
        );
        assert_eq!(rule["BucketKeyEnabled"], true, "{id}");
        stores += 1;
    }
    for (kind, property) in [
        ("AWS::SQS::Queue", "KmsMasterKeyId"),
        ("AWS::SNS::Topic", "KmsMasterKeyId"),
        ("AWS::Logs::LogGroup", "KmsKeyId"),
        ("AWS::Scheduler::Schedule", "KmsKeyArn"),
        ("AWS::SecretsManager::Secret", "KmsKeyId"),
    ] {
        for (id, resource) in t.of_type(kind) {
            assert!(
                uses_key(&resource["Properties"][property]),
                "{id}: {property}"
            );
            stores += 1;
        }
    }
    // 1 table, 1 bucket, 14 queues, 2 topics, 6 + 1 log groups (the functions', the worker's),
    // 2 schedules, 1 secret.
    assert_eq!(stores, 1 + 1 + 14 + 2 + 7 + 2 + 1);
}

#[test]
fn the_table_matches_the_dynamo_store() {
    let t = template();
    let (id, table) = t
        .of_type("AWS::DynamoDB::GlobalTable")
        .next()
        .expect("a global table");
    let p = &table["Properties"];
    assert_eq!(p["BillingMode"], "PAY_PER_REQUEST", "{id}");
    assert_eq!(
        p["KeySchema"],
        serde_json::json!([
            {"AttributeName": "PK", "KeyType": "HASH"},
            {"AttributeName": "SK", "KeyType": "RANGE"}
        ])
    );
    assert_eq!(
        p["AttributeDefinitions"],
        serde_json::json!([
            {"AttributeName": "PK", "AttributeType": "S"},
            {"AttributeName": "SK", "AttributeType": "S"}
        ])
    );
    assert_eq!(
        p["TimeToLiveSpecification"],
        serde_json::json!({"AttributeName": "ttl", "Enabled": true})
    );
    assert!(
        p.get("GlobalSecondaryIndexes").is_none(),
        "the store queries no index"
    );
}

#[test]
fn the_bucket_is_private_versioned_tls_only_and_expires_event_bodies() {
    let t = template();
    let (id, bucket) = t.of_type("AWS::S3::Bucket").next().expect("a bucket");
    let p = &bucket["Properties"];
    assert_eq!(p["VersioningConfiguration"]["Status"], "Enabled");
    for flag in [
        "BlockPublicAcls",
        "BlockPublicPolicy",
        "IgnorePublicAcls",
        "RestrictPublicBuckets",
    ] {
        assert_eq!(p["PublicAccessBlockConfiguration"][flag], true, "{flag}");
    }
    let expiry = alternatives(&p["LifecycleConfiguration"]["Rules"])
        .into_iter()
        .find(|r| r.get("ExpirationInDays").is_some())
        .expect("an expiration rule");
    assert_eq!(
        target(&expiry["ExpirationInDays"]),
        Some("EventRetentionDays")
    );
    let (_, policy) = t
        .of_type("AWS::S3::BucketPolicy")
        .find(|(_, r)| target(&r["Properties"]["Bucket"]) == Some(id))
        .expect("a bucket policy");
    let tls = statements(&policy["Properties"]["PolicyDocument"])
        .into_iter()
        .find(|s| s["Effect"] == "Deny" && s["Condition"]["Bool"]["aws:SecureTransport"] == "false")
        .expect("a TLS-only Deny");
    assert_eq!(tls["Principal"], "*");
}

#[test]
fn roles_send_and_publish_exactly_where_the_environment_points() {
    let t = template();
    let consumed = consumed_queues(t);
    for (package, id, function) in functions(t) {
        let role = role_of(function);
        let (sends, publishes) = destinations(function);
        assert_eq!(
            granted(t, role, "sqs:SendMessage"),
            sends,
            "{id}: sqs:SendMessage"
        );
        assert_eq!(
            granted(t, role, "sns:Publish"),
            publishes,
            "{id}: sns:Publish"
        );
        let own: BTreeSet<String> = consumed
            .iter()
            .filter(|(_, p, _)| *p == package)
            .map(|(q, _, _)| q.clone())
            .collect();
        for action in [
            "sqs:ReceiveMessage",
            "sqs:DeleteMessage",
            "sqs:GetQueueAttributes",
        ] {
            assert_eq!(granted(t, role, action), own, "{id}: {action}");
        }
        let (table, _) = t
            .of_type("AWS::DynamoDB::GlobalTable")
            .next()
            .expect("table");
        // notify only claims and completes its idempotency records: no queries.
        let table_actions: &[&str] = if package == "notify" {
            &[
                "dynamodb:GetItem",
                "dynamodb:PutItem",
                "dynamodb:UpdateItem",
            ]
        } else {
            &[
                "dynamodb:GetItem",
                "dynamodb:Query",
                "dynamodb:PutItem",
                "dynamodb:UpdateItem",
            ]
        };
        for &action in table_actions {
            assert_eq!(
                granted(t, role, action),
                BTreeSet::from([table.to_owned()]),
                "{id}: {action}"
            );
        }
        assert!(
            granted(t, role, "dynamodb:BatchWriteItem").is_empty()
                && granted(t, role, "dynamodb:Scan").is_empty(),
            "{id}: no bulk writes or scans"
        );
        let (key, _) = t.of_type("AWS::KMS::Key").next().expect("key");
        for action in ["kms:Decrypt", "kms:GenerateDataKey"] {
            assert_eq!(
                granted(t, role, action),
                BTreeSet::from([key.to_owned()]),
                "{id}: {action}"
            );
        }
    }
}

#[test]
fn queue_and_topic_policies_name_exactly_their_producers() {
    let t = template();
    let roles = roles(t);
    // Who sends where, from the functions' environments.
    let mut producers: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (_, _, function) in functions(t) {
        let role = role_of(function).to_owned();
        let (sends, publishes) = destinations(function);
        for destination in sends.into_iter().chain(publishes) {
            producers
                .entry(destination)
                .or_default()
                .insert(role.clone());
        }
    }
    // Outside the functions: operators send to decide and snapshot, the running system to
    // fitness, nobody else anywhere.
    let decide = queue_id(t, Queue::Decide);
    let snapshot = queue_id(t, Queue::Snapshot);
    let fitness = queue_id(t, Queue::Fitness);
    producers
        .entry(decide.clone())
        .or_default()
        .insert("OperatorRoleArn".into());
    producers
        .entry(snapshot.clone())
        .or_default()
        .insert("OperatorRoleArn".into());
    producers
        .entry(fitness.clone())
        .or_default()
        .insert("RunningSystemRoleArn".into());
    // The worker (when deployed) sends where the stages it runs send.
    let (worker_sends, worker_publishes) = worker_destinations(t);
    for destination in worker_sends.into_iter().chain(worker_publishes) {
        producers
            .entry(destination)
            .or_default()
            .insert(WORKER_TASK_ROLE.into());
    }

    let mut checked = 0;
    for (kind, targets, action) in [
        ("AWS::SQS::QueuePolicy", "Queues", "sqs:SendMessage"),
        ("AWS::SNS::TopicPolicy", "Topics", "sns:Publish"),
    ] {
        for (id, policy) in t.of_type(kind) {
            let p = &policy["Properties"];
            let resource = alternatives(&p[targets]);
            assert_eq!(resource.len(), 1, "{id}: one policy per queue or topic");
            let resource = target(resource[0]).expect("a template resource");
            let expected = producers.get(resource).cloned().unwrap_or_default();
            let document = statements(&p["PolicyDocument"]);
            let allowed: BTreeSet<String> = document
                .iter()
                .filter(|s| s["Effect"] == "Allow" && actions(s).contains(&action))
                .flat_map(|s| principals(s))
                .collect();
            assert_eq!(allowed, expected, "{id}: Allow {action}");
            let deny = document
                .iter()
                .find(|s| s["Effect"] == "Deny" && actions(s).contains(&action))
                .unwrap_or_else(|| panic!("{id}: no Deny of other producers"));
            assert_eq!(deny["Principal"], "*", "{id}");
            assert_eq!(
                exempted(deny),
                expected,
                "{id}: the Deny exempts exactly the producers"
            );
            for role in &allowed {
                assert!(
                    roles.contains_key(role)
                        || role.ends_with("RoleArn")
                        || role == WORKER_TASK_ROLE,
                    "{id}: unknown principal {role}"
                );
            }
            checked += 1;
        }
    }
    assert_eq!(
        checked,
        14 + 2,
        "every queue, dead-letter queue and topic has a policy"
    );

    // The running system only sends to fitness and subscribes to the events topic.
    let events = topic_id(t, Topic::EvolutionEvents);
    for (id, _, document) in policy_documents(t) {
        for statement in statements(document) {
            if principals(statement).contains("RunningSystemRoleArn")
                && statement["Effect"] == "Allow"
            {
                let acts = actions(statement);
                let ok = (id == "FitnessQueuePolicy" && acts == ["sqs:SendMessage"])
                    || (id == format!("{events}Policy") && acts == ["sns:Subscribe"])
                    || id == "Key";
                assert!(
                    ok,
                    "{id}: the running system may only report fitness and subscribe"
                );
            }
        }
    }
}

fn queue_id(t: &Template, queue: Queue) -> String {
    let name = format!("${{AWS::StackName}}-{}", queue.as_str());
    let Some((id, _)) = t
        .of_type("AWS::SQS::Queue")
        .find(|(_, q)| text(&q["Properties"]["QueueName"]) == Some(name.as_str()))
    else {
        panic!("no queue {name}")
    };
    id.to_owned()
}

fn topic_id(t: &Template, topic: Topic) -> String {
    let name = format!("${{AWS::StackName}}-{}", topic.as_str());
    let Some((id, _)) = t
        .of_type("AWS::SNS::Topic")
        .find(|(_, q)| text(&q["Properties"]["TopicName"]) == Some(name.as_str()))
    else {
        panic!("no topic {name}")
    };
    id.to_owned()
}

#[test]
fn bedrock_grants_cover_exactly_the_usable_catalog() {
    let catalog = ModelCatalog::embedded().expect("the embedded catalog");
    let mut expected = BTreeSet::new();
    for model in catalog.usable() {
        match model.invocation {
            Invocation::InferenceProfile => {
                expected.insert(format!(
                    "arn:${{AWS::Partition}}:bedrock:${{AWS::Region}}:${{AWS::AccountId}}:inference-profile/{}",
                    model.id
                ));
                for region in &model.regions {
                    expected.insert(format!(
                        "arn:${{AWS::Partition}}:bedrock:{region}::foundation-model/{}",
                        model.base_model_id
                    ));
                }
                if model.id.starts_with("global.") {
                    expected.insert(format!(
                        "arn:${{AWS::Partition}}:bedrock:::foundation-model/{}",
                        model.base_model_id
                    ));
                }
            }
            Invocation::OnDemand => {
                expected.insert(format!(
                    "arn:${{AWS::Partition}}:bedrock:${{AWS::Region}}::foundation-model/{}",
                    model.id
                ));
            }
        }
    }
    assert!(!expected.is_empty());
    let t = template();
    for (package, id, function) in functions(t) {
        let role = role_of(function);
        let granted: BTreeSet<String> = role_statements(t, role)
            .into_iter()
            .filter(|s| {
                s["Effect"] == "Allow" && actions(s).iter().any(|a| a.starts_with("bedrock:"))
            })
            .flat_map(|s| {
                assert_eq!(
                    actions(s),
                    ["bedrock:InvokeModel"],
                    "{id}: Converse needs InvokeModel only"
                );
                resources_of(s)
            })
            .map(|r| text(r).expect("an ARN").to_owned())
            .collect();
        if calls_llm(package) {
            assert_eq!(granted, expected, "{id}: bedrock:InvokeModel resources");
        } else {
            assert!(granted.is_empty(), "{id} calls no model");
        }
    }
}

/// The metric names of namespace `Evolve` a dashboard body names (JSON inside `Fn::Sub`).
fn dashboard_metrics(body: &str) -> BTreeSet<String> {
    // `${...}` substitutions sit inside JSON strings: replace them with a plain word.
    let mut plain = String::with_capacity(body.len());
    let mut rest = body;
    while let Some(start) = rest.find("${") {
        plain.push_str(&rest[..start]);
        plain.push_str("substituted");
        let end = rest[start..].find('}').expect("closed substitution");
        rest = &rest[start + end + 1..];
    }
    plain.push_str(rest);
    let body: Value = serde_json::from_str(&plain).expect("the dashboard body is JSON");
    let mut names = BTreeSet::new();
    for widget in body["widgets"].as_array().expect("widgets") {
        let Some(rows) = widget["properties"]["metrics"].as_array() else {
            continue;
        };
        let mut previous: Vec<Value> = Vec::new();
        for row in rows {
            let row = row.as_array().expect("a metric row");
            if let Some(expression) = row.first().and_then(|v| v["expression"].as_str()) {
                names.extend(search_metrics(expression));
                continue;
            }
            // "." repeats the previous row's value at the same position.
            let resolved: Vec<Value> = row
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    if v == "." {
                        previous.get(i).cloned().unwrap_or(Value::Null)
                    } else {
                        v.clone()
                    }
                })
                .collect();
            if resolved.first().and_then(Value::as_str) == Some(metrics::NAMESPACE) {
                names.insert(resolved[1].as_str().expect("metric name").to_owned());
                if let Some(dimension) = resolved.get(2) {
                    assert_eq!(dimension, metrics::DIMENSION, "dimension of {resolved:?}");
                    let function = resolved[3].as_str().expect("dimension value");
                    assert!(FUNCTIONS.iter().any(|(p, _)| *p == function), "{function}");
                }
            }
            previous = resolved;
        }
    }
    names
}

/// `MetricName="X"` of a `SEARCH('{Evolve,...} ...')` expression in namespace `Evolve`.
fn search_metrics(expression: &str) -> Vec<String> {
    let Some(schema) = expression.split_once('{').map(|(_, s)| s) else {
        return Vec::new();
    };
    let namespace = schema.split([',', '}']).next().unwrap_or("");
    if namespace != metrics::NAMESPACE {
        return Vec::new();
    }
    expression
        .split("MetricName=\"")
        .skip(1)
        .filter_map(|s| s.split_once('"').map(|(name, _)| name.to_owned()))
        .collect()
}

#[test]
fn alarms_and_the_dashboard_name_only_metrics_the_code_emits() {
    let t = template();
    let known: BTreeSet<&str> = METRICS.iter().copied().collect();
    let mut alarmed = BTreeSet::new();
    for (id, alarm) in t.of_type("AWS::CloudWatch::Alarm") {
        let p = &alarm["Properties"];
        let mut stats = vec![p];
        stats.extend(
            alternatives(&p["Metrics"])
                .into_iter()
                .map(|m| &m["MetricStat"]["Metric"]),
        );
        for metric in stats {
            if metric["Namespace"] == metrics::NAMESPACE {
                let name = metric["MetricName"].as_str().expect("metric name");
                assert!(
                    known.contains(name),
                    "{id}: {name} is not emitted by the code"
                );
                for dimension in alternatives(&metric["Dimensions"]) {
                    assert_eq!(dimension["Name"], metrics::DIMENSION, "{id}");
                }
                alarmed.insert(name.to_owned());
            }
        }
        let actions = alternatives(&p["AlarmActions"]);
        assert!(
            actions
                .iter()
                .any(|a| target(a) == Some(topic_id(t, Topic::Alerts).as_str())),
            "{id}: alarms publish to the alerts topic"
        );
        let name = text(&p["AlarmName"]).expect("alarm name");
        assert!(
            name.starts_with("${AWS::StackName}-"),
            "{id}: the key policy lets alarms named after the stack publish"
        );
    }
    for needed in [
        metrics::BUDGET_MODE,
        metrics::FITNESS,
        metrics::MESSAGES_PANICKED,
    ] {
        assert!(alarmed.contains(needed), "no alarm on {needed}");
    }

    let (_, dashboard) = t
        .of_type("AWS::CloudWatch::Dashboard")
        .next()
        .expect("a dashboard");
    let body = text(&dashboard["Properties"]["DashboardBody"]).expect("a dashboard body");
    let shown = dashboard_metrics(body);
    for name in &shown {
        assert!(
            known.contains(name.as_str()),
            "dashboard: {name} is not emitted by the code"
        );
    }
    for needed in [
        metrics::FITNESS,
        metrics::GENERATION,
        metrics::ROLLBACKS,
        metrics::LLM_TOKENS,
        metrics::LLM_COST_NANO_USD,
        metrics::FALLBACKS,
        metrics::BUDGET_MODE,
    ] {
        assert!(
            shown.contains(needed),
            "the dashboard does not show {needed}"
        );
    }
}

#[test]
fn every_dead_letter_queue_and_function_has_alarms() {
    let t = template();
    let alarms: Vec<&Value> = t
        .of_type("AWS::CloudWatch::Alarm")
        .map(|(_, a)| &a["Properties"])
        .collect();
    let watching = |namespace: &str, metric: &str, resource: &str| {
        alarms.iter().any(|a| {
            a["Namespace"] == namespace
                && a["MetricName"] == metric
                && alternatives(&a["Dimensions"])
                    .iter()
                    .any(|d| target(&d["Value"]) == Some(resource))
        })
    };
    for (queue, _, _) in consumed_queues(t) {
        let dlq = target(&t.resource(&queue)["Properties"]["RedrivePolicy"]["deadLetterTargetArn"])
            .expect("DLQ");
        assert!(
            watching("AWS/SQS", "ApproximateNumberOfMessagesVisible", dlq),
            "{dlq}"
        );
    }
    for (_, id, _) in functions(t) {
        assert!(watching("AWS/Lambda", "Errors", id), "{id} errors");
        assert!(watching("AWS/Lambda", "Throttles", id), "{id} throttles");
    }
}

#[test]
fn the_scheduler_ticks_analyze_and_sweeps_cost_guard_every_minute() {
    let t = template();
    let mut kinds = BTreeMap::new();
    for (id, schedule) in t.of_type("AWS::Scheduler::Schedule") {
        let p = &schedule["Properties"];
        assert_eq!(p["ScheduleExpression"], "rate(1 minute)", "{id}");
        let function = target(&p["Target"]["Arn"]).expect("a template function");
        let input: Value = serde_json::from_str(p["Target"]["Input"].as_str().expect("input"))
            .expect("JSON input");
        assert_eq!(
            input["scheduled_at"], "<aws.scheduler.scheduled-time>",
            "{id}"
        );
        kinds.insert(
            input["kind"].as_str().expect("kind").to_owned(),
            function.to_owned(),
        );
        // Its own role, which may invoke that one function.
        let role = target(&p["Target"]["RoleArn"]).expect("role");
        let statements: Vec<&Value> = alternatives(&t.resource(role)["Properties"]["Policies"])
            .into_iter()
            .flat_map(|p| statements(&p["PolicyDocument"]))
            .collect();
        let invokes: BTreeSet<&str> = statements
            .iter()
            .filter(|s| actions(s).contains(&"lambda:InvokeFunction"))
            .flat_map(|s| resources_of(s))
            .filter_map(target)
            .collect();
        assert_eq!(invokes, BTreeSet::from([function]), "{id}: {role}");
        let trust = &t.resource(role)["Properties"]["AssumeRolePolicyDocument"]["Statement"][0];
        assert_eq!(
            trust["Principal"]["Service"], "scheduler.amazonaws.com",
            "{id}"
        );
    }
    let by_package: BTreeMap<&str, &str> =
        functions(t).into_iter().map(|(p, id, _)| (p, id)).collect();
    assert_eq!(
        kinds.get("tick").map(String::as_str),
        Some(by_package["analyze"])
    );
    assert_eq!(
        kinds.get("sweep").map(String::as_str),
        Some(by_package["cost-guard"])
    );
}

#[test]
fn the_outputs_name_everything_the_cli_needs() {
    let t = template();
    let outputs = t.root["Outputs"].as_object().expect("outputs");
    let mut needed = vec!["TableName".to_owned(), "BucketName".to_owned()];
    for queue in Queue::ALL {
        let camel: String = queue
            .as_str()
            .split('-')
            .map(|w| {
                let mut c = w.chars();
                c.next()
                    .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                    .unwrap_or_default()
            })
            .collect();
        needed.push(format!("{camel}QueueUrl"));
        needed.push(format!("{camel}DeadLetterQueueUrl"));
        assert_eq!(
            target(&outputs[&format!("{camel}QueueUrl")]["Value"]),
            Some(queue_id(t, queue).as_str())
        );
    }
    needed.push("EvolutionEventsTopicArn".into());
    needed.push("AlertsTopicArn".into());
    for name in needed {
        assert!(outputs.contains_key(&name), "no output {name}");
    }
}

#[test]
fn notify_hears_only_alerts_from_the_alerts_topic_and_alone_reads_the_webhook_secret() {
    let t = template();
    let alerts = topic_id(t, Topic::Alerts);
    let (secret, resource) = t
        .of_type("AWS::SecretsManager::Secret")
        .next()
        .expect("the webhook secret");
    assert_eq!(
        resource["Properties"]["SecretString"], "{}",
        "the stack creates the secret with no webhook; operators put the URLs in it"
    );
    let (_, _, notify) = functions(t)
        .into_iter()
        .find(|(p, _, _)| *p == "notify")
        .expect("the notify function");
    assert_eq!(env_target(notify, config::WEBHOOK_SECRET_ARN), secret);
    let notify_role = role_of(notify);
    for (package, id, function) in functions(t) {
        let readers = granted(t, role_of(function), "secretsmanager:GetSecretValue");
        if package == "notify" {
            assert_eq!(readers, BTreeSet::from([secret.to_owned()]), "{id}");
        } else {
            assert!(readers.is_empty(), "{id} reads no secret");
        }
    }
    // Its table access is confined to its own idempotency records.
    let table_statements: Vec<&Value> = role_statements(t, notify_role)
        .into_iter()
        .filter(|s| actions(s).iter().any(|a| a.starts_with("dynamodb:")))
        .collect();
    assert!(!table_statements.is_empty());
    for statement in table_statements {
        assert_eq!(
            statement["Condition"]["ForAllValues:StringLike"]["dynamodb:LeadingKeys"],
            serde_json::json!(["IDEMP#notify:*"])
        );
    }
    // The alerts topic delivers alerts (not alarms) to the queue, as SNS notifications.
    let (_, _, events) = consumed_queues(t)
        .into_iter()
        .find(|(_, p, _)| *p == "notify")
        .expect("notify consumes a queue");
    let queue = target(&events["Queue"])
        .expect("a template queue")
        .to_owned();
    let subscriptions: Vec<&Value> = t
        .of_type("AWS::SNS::Subscription")
        .map(|(_, s)| &s["Properties"])
        .filter(|p| p["Protocol"] == "sqs")
        .collect();
    assert_eq!(subscriptions.len(), 1);
    let p = subscriptions[0];
    assert_eq!(target(&p["TopicArn"]), Some(alerts.as_str()));
    assert_eq!(target(&p["Endpoint"]), Some(queue.as_str()));
    assert_eq!(
        p["RawMessageDelivery"], false,
        "the handler reads SNS notifications"
    );
    assert_eq!(
        p["FilterPolicy"],
        serde_json::json!({"type": ["AlertRaised"]})
    );
    // Only that topic may send to the queue.
    let (_, policy) = t
        .of_type("AWS::SQS::QueuePolicy")
        .find(|(_, r)| target(&r["Properties"]["Queues"][0]) == Some(queue.as_str()))
        .expect("the queue's policy");
    let allows: Vec<&Value> = statements(&policy["Properties"]["PolicyDocument"])
        .into_iter()
        .filter(|s| s["Effect"] == "Allow")
        .collect();
    assert_eq!(allows.len(), 1);
    assert_eq!(allows[0]["Principal"]["Service"], "sns.amazonaws.com");
    assert_eq!(
        target(&allows[0]["Condition"]["ArnEquals"]["aws:SourceArn"]),
        Some(alerts.as_str())
    );
    // SNS may use the key to deliver to the encrypted queue, for that topic only.
    let (key, _) = t.of_type("AWS::KMS::Key").next().expect("key");
    let sns = statements(&t.resource(key)["Properties"]["KeyPolicy"])
        .into_iter()
        .find(|s| s["Principal"]["Service"] == "sns.amazonaws.com")
        .expect("a key statement for SNS");
    let topic_name = text(&t.resource(&alerts)["Properties"]["TopicName"]).expect("name");
    let source = text(&sns["Condition"]["ArnEquals"]["aws:SourceArn"]).expect("source ARN");
    assert!(
        source.ends_with(&format!(":{topic_name}")),
        "{source} is the alerts topic"
    );
}

/// The JSON field names a Glue table reads: each column (renamed back through the JSON SerDe's
/// `mapping.<column>` parameters) and, for `struct<...>` columns, their fields as
/// `column.field`.
fn glue_fields(table: &Value) -> BTreeSet<String> {
    let storage = &table["Properties"]["TableInput"]["StorageDescriptor"];
    let mappings = &storage["SerdeInfo"]["Parameters"];
    let mut fields = BTreeSet::new();
    for column in alternatives(&storage["Columns"]) {
        let name = column["Name"].as_str().expect("column name");
        let json = mappings[format!("mapping.{name}")]
            .as_str()
            .unwrap_or(name)
            .to_owned();
        let kind = column["Type"].as_str().expect("column type");
        if let Some(inner) = kind
            .strip_prefix("struct<")
            .and_then(|k| k.strip_suffix('>'))
        {
            for field in inner.split(',') {
                let (field, _) = field.split_once(':').expect("field:type");
                fields.insert(format!("{json}.{field}"));
            }
        }
        fields.insert(json);
    }
    fields
}

/// The field names of a record's JSON, nested objects as `field.inner`.
fn json_fields(value: &Value) -> BTreeSet<String> {
    let mut fields = BTreeSet::new();
    for (name, inner) in value.as_object().expect("a JSON object") {
        if let Some(object) = inner.as_object() {
            for field in object.keys() {
                fields.insert(format!("{name}.{field}"));
            }
        }
        fields.insert(name.clone());
    }
    fields
}

#[test]
fn the_athena_tables_read_exactly_what_the_store_writes_where_it_writes_it() {
    use shared::domain::{
        BedrockAnalysis, EventType, EvolutionEvent, Role, StorageMetadata, SystemContext, SystemId,
    };
    use shared::store::{LlmCallRecord, Usage};
    let t = template();
    let at = chrono::DateTime::parse_from_rfc3339("2026-03-01T12:00:00Z")
        .expect("time")
        .with_timezone(&chrono::Utc);
    // Every optional field set, so every field the store can write shows.
    let event = EvolutionEvent {
        id: "evt-1".into(),
        timestamp: at,
        event_type: EventType::MutationKept,
        generation: 3,
        fitness_delta: Some(0.1),
        mutation_id: Some("mut-1".into()),
        bedrock_analysis: Some(BedrockAnalysis {
            model_used: "m".into(),
            confidence: 0.5,
            reasoning: "r".into(),
            predicted_impact: 0.1,
            actual_impact: 0.1,
        }),
        system_context: Some(SystemContext {
            cpu_usage: 0.1,
            memory_usage: 0.1,
            active_processes: 1,
            recent_errors: 0,
        }),
        storage_metadata: Some(StorageMetadata {
            s3_location: "s3://b/k".into(),
            size_bytes: 1,
            storage_class: "STANDARD".into(),
        }),
        system_id: Some(SystemId::parse("checkout-api").expect("id")),
        detail: Some("d".into()),
    };
    let call = LlmCallRecord {
        call_id: "c".into(),
        system_id: SystemId::parse("checkout-api").expect("id"),
        envelope_id: "e".into(),
        role: Role::Decide,
        model_id: "m".into(),
        usage: Usage::default(),
        cost_nano_usd: 1,
        latency_ms: 1,
        bedrock_requests: 1,
        fallback: Some("throttled".into()),
        cache_hit: true,
        at,
    };
    let (bucket, _) = t.of_type("AWS::S3::Bucket").next().expect("bucket");
    let mut tables = 0;
    for (id, table) in t.of_type("AWS::Glue::Table") {
        let input = &table["Properties"]["TableInput"];
        let storage = &input["StorageDescriptor"];
        assert_eq!(
            storage["SerdeInfo"]["SerializationLibrary"], "org.openx.data.jsonserde.JsonSerDe",
            "{id}"
        );
        assert_eq!(input["Parameters"]["projection.enabled"], "true", "{id}");
        let template_path =
            text(&input["Parameters"]["storage.location.template"]).expect("a location template");
        let location = text(&storage["Location"]).expect("a location");
        assert!(
            template_path.starts_with(location),
            "{id}: {template_path} under {location}"
        );
        assert!(
            location.starts_with(&format!("s3://${{{bucket}}}/")),
            "{id}: {location}"
        );
        for partition in alternatives(&input["PartitionKeys"]) {
            let name = partition["Name"].as_str().expect("partition name");
            assert!(
                input["Parameters"][format!("projection.{name}.type")].is_string(),
                "{id}: {name} is projected"
            );
            assert!(
                template_path.contains(&format!("${{!{name}}}")),
                "{id}: {name} in the location template"
            );
        }
        let (written, expected_path) = match input["Name"].as_str() {
            Some("evolution_events") => (
                serde_json::to_value(&event).expect("event JSON"),
                "s3://${Bucket}/evolution-events/system=${!system}/${!year}/${!month}/",
            ),
            Some("llm_calls") => (
                serde_json::to_value(&call).expect("call JSON"),
                "s3://${Bucket}/llm-calls/year=${!year}/month=${!month}/",
            ),
            other => panic!("{id}: unexpected table {other:?}"),
        };
        assert_eq!(template_path, expected_path, "{id}");
        assert_eq!(glue_fields(table), json_fields(&written), "{id}: columns");
        tables += 1;
    }
    assert_eq!(tables, 2);
    let (id, workgroup) = t
        .of_type("AWS::Athena::WorkGroup")
        .next()
        .expect("an Athena workgroup");
    let results = &workgroup["Properties"]["WorkGroupConfiguration"]["ResultConfiguration"];
    assert_eq!(
        results["EncryptionConfiguration"]["EncryptionOption"], "SSE_KMS",
        "{id}"
    );
    let (key, _) = t.of_type("AWS::KMS::Key").next().expect("key");
    assert_eq!(
        target(&results["EncryptionConfiguration"]["KmsKey"]),
        Some(key),
        "{id}"
    );
}

/// Runs `cfn-lint` from the repository's virtualenv; it must report nothing at all.
#[test]
fn cfn_lint_reports_nothing() {
    const LIMIT: Duration = Duration::from_secs(180);
    let root = cfn::repo_root();
    let executable = root.join(".venv/bin/cfn-lint");
    assert!(
        executable.is_file(),
        "{} not found: run `make test-tools` to install cfn-lint",
        executable.display()
    );
    let mut child = Command::new(&executable)
        .arg(cfn::TEMPLATE)
        .current_dir(&root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run cfn-lint");
    // Drain both pipes on their own threads so a chatty run cannot block on a full pipe.
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    );
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for cfn-lint") {
            break status;
        }
        if started.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("cfn-lint did not finish within {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = stdout.join().unwrap_or_default() + &stderr.join().unwrap_or_default();
    assert!(
        status.success() && output.trim().is_empty(),
        "cfn-lint ({status}):\n{output}"
    );
}

/// The worker's task role, and the variables its container reads besides `shared::worker`'s
/// (the CLI's store, the log filter, the SDK's region: the stack's, where every write goes).
const WORKER_TASK_ROLE: &str = "WorkerTaskRole";
const WORKER_CLI_VARIABLES: &[&str] = &["EVOLVE_STORE", "RUST_LOG", "AWS_REGION"];

/// The worker's container definition.
fn worker_container(t: &Template) -> &Value {
    let (_, task) = t
        .of_type("AWS::ECS::TaskDefinition")
        .next()
        .expect("the worker's task definition");
    let containers = alternatives(&task["Properties"]["ContainerDefinitions"]);
    assert_eq!(containers.len(), 1, "one container");
    containers[0]
}

/// The worker container's environment, by name.
fn worker_environment(t: &Template) -> BTreeMap<String, &Value> {
    alternatives(&worker_container(t)["Environment"])
        .into_iter()
        .map(|e| {
            (
                e["Name"].as_str().expect("named variable").to_owned(),
                &e["Value"],
            )
        })
        .collect()
}

/// Where the worker's stages send (queues and every dead-letter queue) and publish, as logical
/// ids: what the functions consuming the same queues do together.
fn worker_destinations(t: &Template) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut sends = BTreeSet::new();
    let mut publishes = BTreeSet::new();
    for queue in Queue::ALL {
        let (to_queues, to_topics) = config::consumer_routes(queue);
        sends.extend(to_queues.iter().map(|q| queue_id(t, *q)));
        publishes.extend(to_topics.iter().map(|topic| topic_id(t, *topic)));
        let dlq =
            &t.resource(&queue_id(t, queue))["Properties"]["RedrivePolicy"]["deadLetterTargetArn"];
        sends.insert(target(dlq).expect("DLQ").to_owned());
    }
    (sends, publishes)
}

#[test]
fn the_worker_is_optional_and_every_resource_of_it_is_conditional() {
    let t = template();
    assert_eq!(t.parameter("WorkerImageUri")["Default"], "");
    assert_eq!(
        t.root["Conditions"]["DeployWorker"],
        serde_json::json!({"Fn::Not": [{"Fn::Equals": [{"Ref": "WorkerImageUri"}, ""]}]})
    );
    let mut kinds = BTreeSet::new();
    for (id, resource) in t.resources() {
        let references_worker = resource.to_string().contains("\"Worker");
        if id.starts_with("Worker") {
            assert_eq!(resource["Condition"], "DeployWorker", "{id}");
            kinds.insert(resource["Type"].as_str().unwrap_or_default().to_owned());
        } else if references_worker {
            // Outside the worker's own resources, it is named only behind its condition.
            let text = resource.to_string();
            assert!(
                text.contains("{\"Fn::If\":[\"DeployWorker\",{\"Fn::GetAtt\":[\"WorkerTaskRole\",\"Arn\"]},{\"Ref\":\"AWS::NoValue\"}]}"),
                "{id} names the worker unconditionally"
            );
        }
    }
    for kind in [
        "AWS::ECS::Cluster",
        "AWS::ECS::TaskDefinition",
        "AWS::ECS::Service",
        "AWS::Logs::LogGroup",
        "AWS::IAM::Role",
    ] {
        assert!(kinds.contains(kind), "no conditional {kind}");
    }
    for (name, output) in t.root["Outputs"].as_object().expect("outputs") {
        if name.starts_with("Worker") {
            assert_eq!(output["Condition"], "DeployWorker", "{name}");
        }
    }
    // The functions' event source mappings can be turned off for the worker alone; notify's
    // queue is no pipeline queue (the worker does not consume it), so its mapping stays on.
    for (queue, package, properties) in consumed_queues(t) {
        if package == "notify" {
            assert!(properties.get("Enabled").is_none(), "{queue}");
            continue;
        }
        assert_eq!(
            properties["Enabled"],
            serde_json::json!({"Fn::If": ["LambdaQueueConsumersEnabled", true, false]}),
            "{queue}"
        );
    }
}

#[test]
fn the_worker_runs_on_arm64_fargate_with_its_logs_and_a_drain_shorter_than_the_stop_timeout() {
    let t = template();
    let (_, task) = t
        .of_type("AWS::ECS::TaskDefinition")
        .next()
        .expect("task definition");
    let p = &task["Properties"];
    assert_eq!(p["RequiresCompatibilities"], serde_json::json!(["FARGATE"]));
    assert_eq!(p["NetworkMode"], "awsvpc");
    assert_eq!(p["RuntimePlatform"]["CpuArchitecture"], "ARM64");
    assert_eq!(target(&p["TaskRoleArn"]), Some(WORKER_TASK_ROLE));
    assert_eq!(target(&p["ExecutionRoleArn"]), Some("WorkerExecutionRole"));
    assert_eq!(target(&p["Cpu"]), Some("WorkerCpu"));
    assert_eq!(target(&p["Memory"]), Some("WorkerMemory"));
    let container = worker_container(t);
    assert_eq!(target(&container["Image"]), Some("WorkerImageUri"));
    let logs = &container["LogConfiguration"];
    assert_eq!(logs["LogDriver"], "awslogs");
    let group = target(&logs["Options"]["awslogs-group"]).expect("a template log group");
    assert_eq!(
        target(&t.resource(group)["Properties"]["RetentionInDays"]),
        Some("LogRetentionDays")
    );
    let env = worker_environment(t);
    let drain: u64 = env["EVOLVE_WORKER_DRAIN_TIMEOUT"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .expect("a literal drain timeout");
    let stop = container["StopTimeout"].as_u64().expect("StopTimeout");
    assert!(
        drain < stop && stop <= 120,
        "drain {drain}s must end before SIGKILL at {stop}s (Fargate allows 120s)"
    );
    let (_, service) = t.of_type("AWS::ECS::Service").next().expect("service");
    let s = &service["Properties"];
    assert_eq!(target(&s["DesiredCount"]), Some("WorkerDesiredCount"));
    let network = &s["NetworkConfiguration"]["AwsvpcConfiguration"];
    assert_eq!(target(&network["Subnets"]), Some("WorkerSubnetIds"));
    assert_eq!(
        target(&network["SecurityGroups"]),
        Some("WorkerSecurityGroupIds")
    );
    assert_eq!(
        target(&network["AssignPublicIp"]),
        Some("WorkerAssignPublicIp")
    );
}

#[test]
fn the_worker_environment_is_what_the_worker_reads_and_points_at_the_right_resources() {
    let t = template();
    let env = worker_environment(t);
    let known: BTreeSet<&str> = w::VARIABLES
        .iter()
        .chain(WORKER_CLI_VARIABLES)
        .copied()
        .collect();
    for name in env.keys() {
        assert!(
            known.contains(name.as_str()),
            "the worker does not read {name}"
        );
    }
    let points_at = |name: &str| {
        target(
            env.get(name)
                .unwrap_or_else(|| panic!("the worker has no {name}")),
        )
        .unwrap_or_else(|| panic!("{name} does not name a template resource"))
        .to_owned()
    };
    assert_eq!(points_at(w::TABLE_NAME), "Table");
    assert_eq!(points_at(w::BUCKET_NAME), "Bucket");
    for queue in Queue::ALL {
        let id = queue_id(t, queue);
        assert_eq!(points_at(w::queue_url_variable(queue)), id);
        let dlq = target(&t.resource(&id)["Properties"]["RedrivePolicy"]["deadLetterTargetArn"])
            .expect("DLQ");
        assert_eq!(points_at(w::dlq_url_variable(queue)), dlq);
    }
    for topic in [Topic::EvolutionEvents, Topic::Alerts] {
        assert_eq!(points_at(w::topic_arn_variable(topic)), topic_id(t, topic));
    }
    assert_eq!(env["EVOLVE_STORE"], "aws");
    assert_eq!(env[w::QUEUES], "all");
    // The same engine and budgets as the functions.
    assert_eq!(points_at(w::LLM), "Llm");
    assert_eq!(points_at(w::DAILY_BUDGET_NANO_USD), "DailyBudgetNanoUsd");
    assert_eq!(
        points_at(w::MONTHLY_BUDGET_NANO_USD),
        "MonthlyBudgetNanoUsd"
    );
}

#[test]
fn the_worker_task_role_is_least_privilege() {
    let t = template();
    let statements = role_statements(t, WORKER_TASK_ROLE);
    for statement in &statements {
        assert_eq!(statement["Effect"], "Allow");
        for action in actions(statement) {
            assert!(!action.contains('*'), "wildcard action {action}");
        }
        assert!(
            !resources_of(statement).iter().any(|r| *r == "*"),
            "Resource '*' in {statement}"
        );
    }
    let (sends, publishes) = worker_destinations(t);
    assert_eq!(granted(t, WORKER_TASK_ROLE, "sqs:SendMessage"), sends);
    assert_eq!(granted(t, WORKER_TASK_ROLE, "sns:Publish"), publishes);
    let all: BTreeSet<String> = Queue::ALL.iter().map(|q| queue_id(t, *q)).collect();
    for action in [
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "sqs:ChangeMessageVisibility",
        "sqs:GetQueueAttributes",
    ] {
        assert_eq!(granted(t, WORKER_TASK_ROLE, action), all, "{action}");
    }
    // The store and Bedrock exactly as the functions have them.
    let (_, _, analyze) = functions(t)
        .into_iter()
        .find(|(p, _, _)| *p == "analyze")
        .expect("analyze");
    let function_role = role_of(analyze);
    for action in [
        "dynamodb:GetItem",
        "dynamodb:PutItem",
        "dynamodb:DeleteItem",
        "s3:PutObject",
        "kms:Decrypt",
        "kms:GenerateDataKey",
        "bedrock:InvokeModel",
    ] {
        assert_eq!(
            granted(t, WORKER_TASK_ROLE, action),
            granted(t, function_role, action),
            "{action}"
        );
    }
    let every_action: BTreeSet<&str> = statements.iter().flat_map(|s| actions(s)).collect();
    let services: BTreeSet<&str> = every_action
        .iter()
        .filter_map(|a| a.split_once(':').map(|(service, _)| service))
        .collect();
    assert_eq!(
        services,
        BTreeSet::from(["bedrock", "dynamodb", "kms", "s3", "sns", "sqs"])
    );
}
