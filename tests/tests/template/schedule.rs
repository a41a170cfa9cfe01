//! The schedules that drive analyze and cost-guard, and the outputs the CLI reads.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use shared::domain::Queue;

use super::cfn::{actions, alternatives, resources_of, statements, target, template};
use super::{functions, queue_id};

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
