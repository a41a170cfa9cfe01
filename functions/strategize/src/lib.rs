//! The strategize function: turns an analysis into a mutation plan and proposes its first step.
//! Sample payload: `infra/events/sqs-strategize.json`.

use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent};
use lambda_runtime::{Error, LambdaEvent};
pub use shared::lambda::FunctionDeps;

/// Handles a batch from the `strategize` queue; failures are reported per message id.
pub async fn handler(
    deps: &FunctionDeps,
    event: LambdaEvent<SqsEvent>,
) -> Result<SqsBatchResponse, Error> {
    Ok(deps.until(event.context.deadline).sqs(&event.payload).await)
}

#[cfg(test)]
mod tests {
    use lambda_runtime::Context;
    use shared::domain::Queue;
    use shared::lambda::QueueSources;
    use shared::lambda::testing::TestFunction;

    use super::*;

    const SQS: &str = include_str!("../../../infra/events/sqs-strategize.json");

    fn event(fixture: &str) -> LambdaEvent<SqsEvent> {
        LambdaEvent::new(
            serde_json::from_str(fixture).expect("fixture"),
            Context::default(),
        )
    }

    async fn world() -> TestFunction {
        TestFunction::new("strategize", QueueSources::Only(Queue::Strategize))
            .await
            .expect("test world")
    }

    #[tokio::test]
    async fn an_analysis_for_an_unknown_system_is_dead_lettered_and_a_stale_one_acknowledged() {
        let t = world().await;
        let response = handler(&t.deps, event(SQS)).await.expect("handled");
        assert!(response.batch_item_failures.is_empty(), "{response:?}");
        let dead = t.dead_letters.sent();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].queue, Queue::Strategize.as_str());
        assert!(
            dead[0].reason.contains("unknown system retired-system"),
            "{}",
            dead[0].reason
        );
        // The head is still measuring its baseline: the analysis is a no-op, nothing is sent.
        assert!(t.drain().is_empty());
    }

    #[tokio::test]
    async fn an_analysis_that_names_no_stored_analysis_is_dead_lettered_once_the_head_is_stable() {
        let t = world().await;
        t.close_baseline().await.expect("baseline");
        let response = handler(&t.deps, event(SQS)).await.expect("handled");
        assert!(response.batch_item_failures.is_empty(), "{response:?}");
        let reasons: Vec<_> = t
            .dead_letters
            .sent()
            .into_iter()
            .map(|d| d.reason)
            .collect();
        assert_eq!(reasons.len(), 2, "{reasons:?}");
        assert!(
            reasons[0].contains("analysis ana-1 not found"),
            "{reasons:?}"
        );
    }

    #[tokio::test]
    async fn a_dead_letter_queue_outage_leaves_the_record_for_redelivery() {
        let t = world().await;
        t.dead_letters.fail_next(1);
        let response = handler(&t.deps, event(SQS)).await.expect("handled");
        let failed: Vec<_> = response
            .batch_item_failures
            .iter()
            .map(|f| f.item_identifier.as_str())
            .collect();
        assert_eq!(failed, ["7b3c2f1e-0000-4000-8000-000000000004"]);
    }
}
