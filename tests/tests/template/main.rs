//! The deployment template (`infra/template.yaml`) checked against the code it deploys: each
//! function's environment equals what its config type reads, every queue has its dead-letter
//! queue and a visibility timeout of at least six times its consumer's timeout, IAM is
//! least-privilege (named actions, named resources, producers named on queues and topics),
//! everything that stores data uses the stack's KMS key, the Bedrock grants cover the model
//! catalog, and alarms and the dashboard name only metrics the code emits. `cfn-lint` runs last.

mod audit;
mod cfn;
mod functions;
mod iam;
mod lint;
mod observability;
mod policies;
mod queues;
mod reconcile;
mod replication;
mod schedule;
mod storage;
mod worker;

use std::collections::BTreeSet;

use serde_json::Value;
use shared::domain::{Queue, Topic};
use shared::lambda::config;
use shared::topology;

use cfn::{
    Template, actions, alternatives, policy_documents, resources_of, statements, target, text,
};

/// The function resources by package name: `(package, logical id, resource)`.
fn functions(t: &Template) -> Vec<(&'static str, &str, &Value)> {
    config::functions()
        .into_iter()
        .map(|(package, _)| {
            let code_uri = format!("../functions/{package}");
            let (id, resource) = t
                .of_type("AWS::Serverless::Function")
                .find(|(_, r)| r["Properties"]["CodeUri"] == code_uri.as_str())
                .unwrap_or_else(|| panic!("no function with CodeUri {code_uri}"));
            (package, id, resource)
        })
        .collect()
}

fn variables_of(package: &str) -> Vec<&'static str> {
    let Some((_, variables)) = config::functions().into_iter().find(|(p, _)| *p == package) else {
        panic!("no function {package}")
    };
    variables
}

/// Whether a function calls Bedrock, as the topology says.
fn calls_llm(package: &str) -> bool {
    topology::consumer(package).is_some_and(|c| c.calls_llm)
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

/// Every statement of every policy document in the template: `(logical id, path, statement)`.
fn every_statement(t: &Template) -> Vec<(&str, String, &Value)> {
    policy_documents(t)
        .into_iter()
        .flat_map(|(id, path, document)| {
            statements(document)
                .into_iter()
                .map(move |statement| (id, path.clone(), statement))
        })
        .collect()
}

/// The first resource of `kind`, `(logical id, resource)`; `what` says which one was expected.
fn first<'a>(t: &'a Template, kind: &'a str, what: &str) -> (&'a str, &'a Value) {
    t.of_type(kind).next().expect(what)
}

/// The logical id of the dead-letter queue of the queue `queue`.
fn dead_letter_queue<'a>(t: &'a Template, queue: &str) -> &'a str {
    target(&t.resource(queue)["Properties"]["RedrivePolicy"]["deadLetterTargetArn"]).expect("DLQ")
}

/// The logical id of the resource of `kind` whose `property` names it `<stack>-<name>`.
fn stack_named(t: &Template, kind: &str, property: &str, what: &str, name: &str) -> String {
    let name = format!("${{AWS::StackName}}-{name}");
    let Some((id, _)) = t
        .of_type(kind)
        .find(|(_, r)| text(&r["Properties"][property]) == Some(name.as_str()))
    else {
        panic!("no {what} {name}")
    };
    id.to_owned()
}

fn queue_id(t: &Template, queue: Queue) -> String {
    stack_named(t, "AWS::SQS::Queue", "QueueName", "queue", queue.as_str())
}

fn topic_id(t: &Template, topic: Topic) -> String {
    stack_named(t, "AWS::SNS::Topic", "TopicName", "topic", topic.as_str())
}
