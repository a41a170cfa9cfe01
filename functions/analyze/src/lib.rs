//! The analyze function: consumes the `analyze` queue and runs the scheduler's one-minute tick.
//! Sample payloads: `infra/events/sqs-analyze.json`, `tick.json`, `scheduled-event.json`.

use lambda_runtime::{Diagnostic, LambdaEvent};
use serde_json::Value;
pub use shared::lambda::FunctionDeps;
use shared::lambda::{Invocation, Response, ScheduleKind};

/// One function, two triggers told apart by the payload's shape: an SQS batch from the
/// `analyze` queue (answered with its batch item failures), or the tick.
pub async fn handler(
    deps: &FunctionDeps,
    event: LambdaEvent<Value>,
) -> Result<Response, Diagnostic> {
    let deps = &deps.until(event.context.deadline);
    match Invocation::parse(event.payload)? {
        Invocation::Sqs(batch) => Ok(Response::Batch(deps.sqs(&batch).await)),
        Invocation::Schedule(schedule) => {
            let ran = deps.schedule(ScheduleKind::Tick, schedule).await?;
            tracing::info!(id = %ran.id, outcome = ran.outcome, sent = ran.sent, "tick");
            Ok(Response::Schedule(ran))
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::Duration;
    use lambda_runtime::Context;
    use shared::domain::{Body, Destination, Queue};
    use shared::lambda::QueueSources;
    use shared::lambda::testing::TestFunction;

    use super::*;

    const SQS: &str = include_str!("../../../infra/events/sqs-analyze.json");
    const TICK: &str = include_str!("../../../infra/events/tick.json");
    const SCHEDULED: &str = include_str!("../../../infra/events/scheduled-event.json");

    fn event(fixture: &str) -> LambdaEvent<Value> {
        LambdaEvent::new(
            serde_json::from_str(fixture).expect("fixture"),
            Context::default(),
        )
    }

    async fn world() -> TestFunction {
        TestFunction::new("analyze", QueueSources::Only(Queue::Analyze))
            .await
            .expect("test world")
    }

    fn batch(response: Response) -> Value {
        let Response::Batch(batch) = response else {
            panic!("not a batch response: {response:?}")
        };
        serde_json::to_value(batch).expect("json")
    }

    #[tokio::test]
    async fn the_malformed_record_is_dead_lettered_and_the_good_one_is_acknowledged() {
        let t = world().await;
        let response = handler(&t.deps, event(SQS)).await.expect("handled");
        assert_eq!(
            batch(response),
            serde_json::json!({"batchItemFailures": []})
        );
        let dead = t.dead_letters.sent();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].queue, Queue::Analyze.as_str());
        assert!(dead[0].body.starts_with("{\"id\":\"msg-truncated\""));
        assert!(
            dead[0].reason.contains("malformed message"),
            "{}",
            dead[0].reason
        );
    }

    #[tokio::test]
    async fn a_cycle_whose_analysis_cannot_be_sent_is_left_for_redelivery() {
        let t = world().await;
        t.close_baseline().await.expect("baseline");
        t.bus.fail_next_sends(1);
        let response = handler(&t.deps, event(SQS)).await.expect("handled");
        assert_eq!(
            batch(response),
            serde_json::json!({"batchItemFailures": [
                {"itemIdentifier": "7b3c2f1e-0000-4000-8000-000000000001"}
            ]})
        );

        // The redelivery sends the committed analysis from the outbox.
        let again = handler(&t.deps, event(SQS)).await.expect("handled");
        assert_eq!(batch(again), serde_json::json!({"batchItemFailures": []}));
        let sent = t.drain();
        assert!(
            sent.iter()
                .any(|m| matches!(m.envelope.body, Body::AnalysisReady { .. })),
            "{sent:?}"
        );
    }

    #[tokio::test]
    async fn the_tick_sends_the_expired_evaluation_to_snapshot() {
        let t = world().await;
        t.clock.advance(Duration::minutes(11));
        let response = handler(&t.deps, event(TICK)).await.expect("tick");
        let Response::Schedule(ran) = response else {
            panic!("not a schedule response: {response:?}")
        };
        assert_eq!(ran.id, "tick:2026-03-01T12:11");
        assert_eq!(ran.sent, 1);
        // The tick asks the system's own step, on this function's queue...
        let sent = t.drain();
        assert_eq!(sent[0].destination, Destination::Queue(Queue::Analyze));
        let step = serde_json::json!({"Records": [{
            "messageId": "step-1",
            "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:analyze",
            "body": serde_json::to_string(&sent[0].envelope).expect("json"),
        }]});
        let response = handler(&t.deps, LambdaEvent::new(step, Context::default()))
            .await
            .expect("step");
        assert_eq!(
            batch(response),
            serde_json::json!({"batchItemFailures": []})
        );
        // ...which sends the expired window to snapshot.
        let sent = t.drain();
        assert_eq!(sent[0].destination, Destination::Queue(Queue::Snapshot));
        assert!(matches!(
            sent[0].envelope.body,
            Body::EvaluationDue { generation: 0 }
        ));
    }

    #[tokio::test]
    async fn an_eventbridge_scheduled_event_is_a_tick_too() {
        let t = world().await;
        let response = handler(&t.deps, event(SCHEDULED)).await.expect("tick");
        assert!(
            matches!(response, Response::Schedule(ref r) if r.id == "tick:2026-03-01T12:11"),
            "{response:?}"
        );
    }

    #[tokio::test]
    async fn a_sweep_or_an_unknown_payload_fails_the_invocation() {
        let t = world().await;
        let sweep = serde_json::json!({"kind": "sweep"}).to_string();
        assert!(handler(&t.deps, event(&sweep)).await.is_err());
        assert!(handler(&t.deps, event("{\"hello\": 1}")).await.is_err());
    }
}
