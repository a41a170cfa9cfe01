//! Resource policies: each queue and topic names exactly its producers, and notify alone hears
//! the alerts topic and reads the webhook secret.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use shared::domain::{Queue, Topic};
use shared::lambda::config;

use super::cfn::{Template, actions, alternatives, statements, target, template, text};
use super::worker::{WORKER_TASK_ROLE, worker_destinations};
use super::{
    consumed_queues, destinations, env_target, every_statement, first, functions, granted,
    queue_id, role_of, role_statements, topic_id,
};

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

/// Who may send to each queue and publish to each topic, as role logical ids or the parameters
/// naming outside roles.
fn producers(t: &Template) -> BTreeMap<String, BTreeSet<String>> {
    let mut producers: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut add = |destination: String, producer: &str| {
        producers
            .entry(destination)
            .or_default()
            .insert(producer.to_owned());
    };
    // Who sends where, from the functions' environments.
    for (_, _, function) in functions(t) {
        let role = role_of(function);
        let (sends, publishes) = destinations(function);
        for destination in sends.into_iter().chain(publishes) {
            add(destination, role);
        }
    }
    // Outside the functions: operators send to decide and snapshot, the running system to
    // fitness, nobody else anywhere.
    add(queue_id(t, Queue::Decide), "OperatorRoleArn");
    add(queue_id(t, Queue::Snapshot), "OperatorRoleArn");
    add(queue_id(t, Queue::Fitness), "RunningSystemRoleArn");
    // The worker (when deployed) sends where the stages it runs send.
    let (worker_sends, worker_publishes) = worker_destinations(t);
    for destination in worker_sends.into_iter().chain(worker_publishes) {
        add(destination, WORKER_TASK_ROLE);
    }
    producers
}

#[test]
fn queue_and_topic_policies_name_exactly_their_producers() {
    let t = template();
    let roles = roles(t);
    let producers = producers(t);
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
    for (id, _, statement) in every_statement(t) {
        if principals(statement).contains("RunningSystemRoleArn") && statement["Effect"] == "Allow"
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

#[test]
fn notify_hears_only_alerts_from_the_alerts_topic_and_alone_reads_the_webhook_secret() {
    let t = template();
    let alerts = topic_id(t, Topic::Alerts);
    let (secret, resource) = first(t, "AWS::SecretsManager::Secret", "the webhook secret");
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
    // Its table access is confined to its own idempotency records, and to checking (not
    // writing) the writer's fence copies, which every transaction checks.
    let table_statements: Vec<&Value> = role_statements(t, notify_role)
        .into_iter()
        .filter(|s| actions(s).iter().any(|a| a.starts_with("dynamodb:")))
        .collect();
    assert!(!table_statements.is_empty());
    for statement in table_statements {
        if actions(statement) == ["dynamodb:ConditionCheckItem"] {
            assert_eq!(
                statement["Condition"]["ForAllValues:StringEquals"]["dynamodb:LeadingKeys"],
                serde_json::json!(["FENCE"])
            );
            continue;
        }
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
    let (key, _) = first(t, "AWS::KMS::Key", "key");
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
