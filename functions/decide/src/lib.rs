//! The decide function: scores proposed mutations, approves by policy or asks the LLM, writes
//! the audit record, and resolves conflicts. Sample payload: `infra/events/sqs-decide.json`.

use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent};
use lambda_runtime::{Error, LambdaEvent};
pub use shared::lambda::FunctionDeps;

/// Handles a batch from the `decide` queue; failures are reported per message id.
pub async fn handler(
    deps: &FunctionDeps,
    event: LambdaEvent<SqsEvent>,
) -> Result<SqsBatchResponse, Error> {
    Ok(deps.until(event.context.deadline).sqs(&event.payload).await)
}

#[cfg(test)]
mod tests {
    use lambda_runtime::Context;
    use shared::domain::{Body, Destination, Queue};
    use shared::lambda::QueueSources;
    use shared::lambda::testing::TestFunction;

    use super::*;

    const SQS: &str = include_str!("../../../infra/events/sqs-decide.json");
    const PROPOSAL: &str = "7b3c2f1e-0000-4000-8000-000000000005";

    fn event(fixture: &str) -> LambdaEvent<SqsEvent> {
        LambdaEvent::new(
            serde_json::from_str(fixture).expect("fixture"),
            Context::default(),
        )
    }

    async fn world() -> TestFunction {
        TestFunction::new("decide", QueueSources::Only(Queue::Decide))
            .await
            .expect("test world")
    }

    #[tokio::test]
    async fn a_misrouted_message_is_dead_lettered_and_a_stale_proposal_acknowledged() {
        let t = world().await;
        let response = handler(&t.deps, event(SQS)).await.expect("handled");
        assert!(response.batch_item_failures.is_empty(), "{response:?}");
        let dead = t.dead_letters.sent();
        assert_eq!(dead.len(), 1);
        assert!(
            dead[0]
                .reason
                .contains("DnaUpdated does not belong on the decide queue"),
            "{}",
            dead[0].reason
        );
        assert!(t.drain().is_empty());
    }

    #[tokio::test]
    async fn a_decision_that_cannot_be_sent_is_retried_and_then_sent_once() {
        let t = world().await;
        t.close_baseline().await.expect("baseline");
        t.bus.fail_next_sends(1);
        let first = handler(&t.deps, event(SQS)).await.expect("handled");
        let failed: Vec<_> = first
            .batch_item_failures
            .iter()
            .map(|f| f.item_identifier.as_str())
            .collect();
        assert_eq!(failed, [PROPOSAL]);

        let again = handler(&t.deps, event(SQS)).await.expect("handled");
        assert!(again.batch_item_failures.is_empty(), "{again:?}");
        let sent = t.drain();
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert!(
            matches!(
                (&sent[0].destination, &sent[0].envelope.body),
                (
                    Destination::Queue(Queue::Snapshot),
                    Body::MutationApproved { .. }
                ) | (
                    Destination::Queue(Queue::Analyze),
                    Body::CycleRequested { .. }
                )
            ),
            "{sent:?}"
        );
        // The misrouted message was dead-lettered on each delivery, never retried.
        assert_eq!(t.dead_letters.sent().len(), 2);
    }
}
