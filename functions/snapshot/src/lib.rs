//! The snapshot function, the DNA keeper: commits approved mutations as generations, collects
//! fitness reports from the `fitness` queue, and keeps or rolls back when a window closes. It
//! consumes two queues and tells their records apart by source ARN.
//! Sample payload: `infra/events/sqs-snapshot.json`.

use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent};
use lambda_runtime::{Error, LambdaEvent};
pub use shared::lambda::FunctionDeps;

/// Handles a batch from the `snapshot` or `fitness` queue; failures are reported per message id.
pub async fn handler(
    deps: &FunctionDeps,
    event: LambdaEvent<SqsEvent>,
) -> Result<SqsBatchResponse, Error> {
    Ok(deps.until(event.context.deadline).sqs(&event.payload).await)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use lambda_runtime::Context;
    use shared::domain::{Body, Destination, Queue, Topic};
    use shared::lambda::QueueSources;
    use shared::lambda::testing::TestFunction;
    use shared::store::EvolutionStore;

    use super::*;

    const SQS: &str = include_str!("../../../infra/events/sqs-snapshot.json");
    const SNAPSHOT_ARN: &str = "arn:aws:sqs:eu-west-1:123456789012:evolve-snapshot";
    const FITNESS_ARN: &str = "arn:aws:sqs:eu-west-1:123456789012:evolve-fitness";

    fn event(fixture: &str) -> LambdaEvent<SqsEvent> {
        LambdaEvent::new(
            serde_json::from_str(fixture).expect("fixture"),
            Context::default(),
        )
    }

    async fn world() -> TestFunction {
        let sources = QueueSources::ByArn(BTreeMap::from([
            (SNAPSHOT_ARN.to_owned(), Queue::Snapshot),
            (FITNESS_ARN.to_owned(), Queue::Fitness),
        ]));
        TestFunction::new("snapshot", sources)
            .await
            .expect("test world")
    }

    #[tokio::test]
    async fn a_fitness_report_closes_the_baseline_and_the_late_due_notice_is_a_no_op() {
        let t = world().await;
        let response = handler(&t.deps, event(SQS)).await.expect("handled");
        assert!(response.batch_item_failures.is_empty(), "{response:?}");

        let history = t
            .store
            .list_history(&TestFunction::system_id(), 10)
            .await
            .expect("history");
        assert_eq!(history.len(), 1, "the baseline window closed");
        let sent = t.drain();
        assert!(
            sent.iter()
                .any(|m| m.destination == Destination::Queue(Queue::Analyze)
                    && matches!(m.envelope.body, Body::CycleRequested { .. })),
            "{sent:?}"
        );
        assert!(
            sent.iter()
                .all(|m| m.destination != Destination::Topic(Topic::EvolutionEvents)),
            "the baseline changes no DNA: {sent:?}"
        );
    }

    #[tokio::test]
    async fn a_malformed_record_goes_to_the_dead_letter_queue_of_its_own_queue() {
        let t = world().await;
        handler(&t.deps, event(SQS)).await.expect("handled");
        let dead = t.dead_letters.sent();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].queue, Queue::Snapshot.as_str());
    }

    #[tokio::test]
    async fn a_record_from_an_unmapped_queue_is_left_for_redelivery() {
        let t = world().await;
        let fixture = SQS.replace("evolve-fitness", "evolve-unknown");
        let response = handler(&t.deps, event(&fixture)).await.expect("handled");
        let failed: Vec<_> = response
            .batch_item_failures
            .iter()
            .map(|f| f.item_identifier.as_str())
            .collect();
        assert_eq!(failed, ["7b3c2f1e-0000-4000-8000-000000000007"]);
    }
}
