//! The queues: each with its dead-letter queue and one consumer, hiding a message long enough
//! for that consumer's retries, fed through event source mappings that report partial failures.

use std::collections::BTreeSet;

use serde_json::Value;
use shared::domain::Queue;

use super::cfn::{Template, alternatives, target, template, text};
use super::{calls_llm, consumed_queues, dead_letter_queue, env_target, functions, variables_of};

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
            .map(|(q, _, _)| dead_letter_queue(t, q).to_owned())
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
