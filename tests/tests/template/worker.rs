//! The optional Fargate worker: every resource of it behind its condition, its task and service,
//! its environment, and a task role no wider than the functions' together.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use shared::domain::{Queue, Topic};
use shared::worker::config as w;

use super::cfn::{Template, actions, alternatives, resources_of, target, template};
use super::{
    consumed_queues, dead_letter_queue, first, functions, granted, queue_id, role_of,
    role_statements, topic_id,
};

/// The worker's task role, and the variables its container reads besides `shared::worker`'s
/// (the CLI's store, the log filter, the SDK's region: the stack's, where every write goes).
pub(super) const WORKER_TASK_ROLE: &str = "WorkerTaskRole";
const WORKER_CLI_VARIABLES: &[&str] = &["EVOLVE_STORE", "RUST_LOG", "AWS_REGION"];

/// The worker's container definition.
fn worker_container(t: &Template) -> &Value {
    let (_, task) = first(
        t,
        "AWS::ECS::TaskDefinition",
        "the worker's task definition",
    );
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
pub(super) fn worker_destinations(t: &Template) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut sends = BTreeSet::new();
    let mut publishes = BTreeSet::new();
    for queue in Queue::ALL {
        let consumer = shared::topology::consumer_of(queue);
        sends.extend(consumer.sends.iter().map(|q| queue_id(t, *q)));
        publishes.extend(consumer.publishes.iter().map(|topic| topic_id(t, *topic)));
        sends.insert(dead_letter_queue(t, &queue_id(t, queue)).to_owned());
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
    let (_, task) = first(t, "AWS::ECS::TaskDefinition", "task definition");
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
    let (_, service) = first(t, "AWS::ECS::Service", "service");
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
        let dlq = dead_letter_queue(t, &id);
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
