//! The cost-guard function: consumes the `cost-guard` queue (budget thresholds crossed by the
//! ledger) and runs its own one-minute budget sweep; sets the budget mode and publishes alerts.
//! Sample payloads: `infra/events/sqs-cost-guard.json`, `sweep.json`, `scheduled-event.json`.

use lambda_runtime::{Diagnostic, LambdaEvent};
use serde_json::Value;
pub use shared::lambda::FunctionDeps;
use shared::lambda::{Invocation, Response, ScheduleKind};

/// One function, two triggers told apart by the payload's shape: an SQS batch from the
/// `cost-guard` queue (answered with its batch item failures), or the sweep.
pub async fn handler(
    deps: &FunctionDeps,
    event: LambdaEvent<Value>,
) -> Result<Response, Diagnostic> {
    let deps = &deps.until(event.context.deadline);
    match Invocation::parse(event.payload)? {
        Invocation::Sqs(batch) => Ok(Response::Batch(deps.sqs(&batch).await)),
        Invocation::Schedule(schedule) => {
            let ran = deps.schedule(ScheduleKind::Sweep, schedule).await?;
            tracing::info!(id = %ran.id, outcome = ran.outcome, sent = ran.sent, "sweep");
            Ok(Response::Schedule(ran))
        }
    }
}

#[cfg(test)]
mod tests {
    use lambda_runtime::Context;
    use shared::domain::Queue;
    use shared::lambda::QueueSources;
    use shared::lambda::testing::TestFunction;

    use super::*;

    const SQS: &str = include_str!("../../../infra/events/sqs-cost-guard.json");
    const SWEEP: &str = include_str!("../../../infra/events/sweep.json");
    const SCHEDULED: &str = include_str!("../../../infra/events/scheduled-event.json");
    const TICK: &str = include_str!("../../../infra/events/tick.json");

    fn event(fixture: &str) -> LambdaEvent<Value> {
        LambdaEvent::new(
            serde_json::from_str(fixture).expect("fixture"),
            Context::default(),
        )
    }

    async fn world() -> TestFunction {
        TestFunction::new("cost-guard", QueueSources::Only(Queue::CostGuard))
            .await
            .expect("test world")
    }

    #[tokio::test]
    async fn a_threshold_is_handled_and_a_malformed_record_dead_lettered() {
        let t = world().await;
        let response = handler(&t.deps, event(SQS)).await.expect("handled");
        let Response::Batch(batch) = response else {
            panic!("not a batch response: {response:?}")
        };
        assert!(batch.batch_item_failures.is_empty(), "{batch:?}");
        let dead = t.dead_letters.sent();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].queue, Queue::CostGuard.as_str());
        assert_eq!(dead[0].body, "not json at all");
    }

    #[tokio::test]
    async fn the_sweep_runs_once_per_minute_whichever_schedule_fires_it() {
        let t = world().await;
        let first = handler(&t.deps, event(SWEEP)).await.expect("sweep");
        let Response::Schedule(first) = first else {
            panic!("not a schedule response: {first:?}")
        };
        assert_eq!(first.id, "sweep:2026-03-01T12:11");
        assert_eq!(first.outcome, "processed");
        let second = handler(&t.deps, event(SCHEDULED)).await.expect("sweep");
        assert!(
            matches!(second, Response::Schedule(ref s) if s.outcome == "duplicate"),
            "{second:?}"
        );
    }

    #[tokio::test]
    async fn the_tick_is_not_cost_guards_to_run() {
        let t = world().await;
        let err = handler(&t.deps, event(TICK))
            .await
            .expect_err("wrong schedule");
        // Lambda reports the error by a name of ours, not by a Rust type.
        assert_eq!(err.error_type, "WrongSchedule");
        assert!(err.error_message.contains("Sweep"), "{err:?}");
    }

    #[tokio::test]
    async fn an_event_it_cannot_read_is_reported_as_malformed_by_name() {
        let t = world().await;
        let garbage = LambdaEvent::new(serde_json::json!({"kind": 7}), Context::default());
        let err = handler(&t.deps, garbage).await.expect_err("unreadable");
        assert_eq!(err.error_type, "MalformedEvent", "{err:?}");
        assert!(!err.error_type.contains("::"), "{err:?}");
    }
}
