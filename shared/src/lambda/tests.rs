//! The SQS batch contract (docs/architecture.md, "Exactly once"): retryable failures become batch item failures,
//! permanent ones go to the queue's dead-letter queue with their reason and are acknowledged.

use std::collections::BTreeMap;

use aws_lambda_events::sqs::{SqsEvent, SqsMessage};
use chrono::Duration;
use serde_json::json;

use super::testing::{SYSTEM, TestFunction};
use super::*;
use crate::clock::Clock;
use crate::consumer::BatchCounts;
use crate::domain::{CycleReason, Destination};
use crate::store::EvolutionStore;

const ANALYZE_ARN: &str = "arn:aws:sqs:eu-west-1:123456789012:evolve-analyze";
const SNAPSHOT_ARN: &str = "arn:aws:sqs:eu-west-1:123456789012:evolve-snapshot";

fn record(id: &str, arn: &str, body: &str) -> SqsMessage {
    let mut m = SqsMessage::default();
    m.message_id = Some(id.into());
    m.event_source_arn = Some(arn.into());
    m.body = Some(body.into());
    m
}

fn queue_of(arn: &str) -> Option<Queue> {
    match arn {
        ANALYZE_ARN => Some(Queue::Analyze),
        SNAPSHOT_ARN => Some(Queue::Snapshot),
        _ => None,
    }
}

fn envelope(t: &TestFunction, id: &str, system: &str, body: Body) -> String {
    let env = Envelope {
        id: id.into(),
        causation_id: String::new(),
        system_id: SystemId::parse(system).expect("valid id"),
        base_generation: 0,
        sent_at: t.clock.now(),
        traceparent: None,
        body,
    };
    serde_json::to_string(&env).expect("json")
}

fn cycle() -> Body {
    Body::CycleRequested {
        reason: CycleReason::Scheduled,
    }
}

/// The baseline's fitness report: closes generation 0's evaluation and requests a cycle.
async fn baseline_report(t: &TestFunction) -> String {
    let generation = t
        .store
        .get_generation(&TestFunction::system_id(), 0)
        .await
        .expect("store")
        .expect("generation 0");
    envelope(
        t,
        "msg-fitness-0",
        SYSTEM,
        Body::FitnessReported {
            generation: 0,
            checksum: generation.checksum,
            score: Some(0.5),
            metrics: BTreeMap::new(),
            error: None,
            cohort: None,
        },
    )
}

async fn batch(t: &TestFunction, records: &[SqsMessage]) -> BatchResponse {
    handle_sqs_batch(
        &t.deps.pipeline,
        t.deps.bus.as_ref(),
        t.deps.dead_letters.as_ref(),
        queue_of,
        records,
    )
    .await
}

#[tokio::test]
async fn malformed_and_unknown_system_records_are_dead_lettered_and_the_good_one_is_processed() {
    let t = TestFunction::new("analyze", QueueSources::Only(Queue::Analyze))
        .await
        .expect("world");
    let good = envelope(&t, "msg-good", SYSTEM, cycle());
    let unknown = envelope(&t, "msg-ghost", "ghost", cycle());
    let malformed = "{\"id\": \"msg-bad\", \"type\": \"CycleRequested\"";
    let response = batch(
        &t,
        &[
            record("m-1", ANALYZE_ARN, &good),
            record("m-2", ANALYZE_ARN, malformed),
            record("m-3", ANALYZE_ARN, &unknown),
        ],
    )
    .await;

    assert_eq!(response.batch_item_failures, Vec::<String>::new());
    assert_eq!(
        response.counts,
        BatchCounts {
            processed: 1,
            dead_lettered: 2,
            ..BatchCounts::default()
        }
    );
    let dead = t.dead_letters.sent();
    assert_eq!(dead.len(), 2);
    assert_eq!(dead[0].queue, Queue::Analyze.as_str());
    assert_eq!(dead[0].body, malformed);
    assert!(
        dead[0].reason.contains("malformed message"),
        "{}",
        dead[0].reason
    );
    assert_eq!(dead[1].queue, Queue::Analyze.as_str());
    assert_eq!(dead[1].body, unknown);
    assert!(
        dead[1].reason.contains("unknown system ghost"),
        "{}",
        dead[1].reason
    );
}

#[tokio::test]
async fn a_message_on_the_wrong_queue_is_dead_lettered_with_the_reason() {
    let t = TestFunction::new("analyze", QueueSources::Only(Queue::Analyze))
        .await
        .expect("world");
    let misrouted = envelope(&t, "msg-misrouted", SYSTEM, Body::BudgetSweep {});
    let response = batch(&t, &[record("m-1", ANALYZE_ARN, &misrouted)]).await;
    assert!(response.batch_item_failures.is_empty());
    let dead = t.dead_letters.sent();
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0]
            .reason
            .contains("does not belong on the analyze queue"),
        "{}",
        dead[0].reason
    );
}

#[tokio::test]
async fn a_failed_send_becomes_a_batch_item_failure_and_the_redelivery_resends_the_outbox() {
    let t = TestFunction::new("snapshot", QueueSources::Only(Queue::Snapshot))
        .await
        .expect("world");
    let report = baseline_report(&t).await;
    t.bus.fail_next_sends(1);
    let first = batch(&t, &[record("m-1", SNAPSHOT_ARN, &report)]).await;
    assert_eq!(first.batch_item_failures, ["m-1"]);
    assert_eq!(first.counts.retried, 1);
    assert!(t.drain().is_empty(), "nothing left before the failure");
    assert!(t.dead_letters.sent().is_empty());

    // SQS redelivers the same record: the committed outcome is sent from the outbox.
    let second = batch(&t, &[record("m-1", SNAPSHOT_ARN, &report)]).await;
    assert!(second.batch_item_failures.is_empty());
    assert_eq!(second.counts.duplicates, 1);
    let sent = t.drain();
    assert!(
        sent.iter()
            .any(|m| matches!(m.envelope.body, Body::CycleRequested { .. })),
        "{sent:?}"
    );
}

/// A message whose committed outcome was never sent waits in its dead-letter queue for up to
/// 14 days; a redrive days later, long after the dedup window, must still send what was
/// committed, not run the stage again on a state that has moved on.
#[tokio::test]
async fn a_redrive_after_the_dedup_window_sends_the_committed_outbox() {
    let t = TestFunction::new("snapshot", QueueSources::Only(Queue::Snapshot))
        .await
        .expect("world");
    let report = baseline_report(&t).await;
    t.bus.fail_next_sends(1);
    let first = batch(&t, &[record("m-1", SNAPSHOT_ARN, &report)]).await;
    assert_eq!(first.batch_item_failures, ["m-1"]);

    // Dead-lettered after its receives, redriven three days later.
    t.clock.advance(Duration::days(3));
    let redriven = batch(&t, &[record("m-1", SNAPSHOT_ARN, &report)]).await;
    assert!(redriven.batch_item_failures.is_empty(), "{redriven:?}");
    assert_eq!(redriven.counts.duplicates, 1, "sent from the outbox");
    let sent = t.drain();
    assert!(
        sent.iter()
            .any(|m| matches!(m.envelope.body, Body::CycleRequested { .. })),
        "{sent:?}"
    );

    // Once sent, the record is kept only for the dedup window.
    t.clock.advance(Duration::days(2));
    let later = batch(&t, &[record("m-1", SNAPSHOT_ARN, &report)]).await;
    assert_eq!(later.counts.duplicates, 0, "{later:?}");
}

/// A send refused after the commit does not dead-letter the message as if nothing had been
/// done: the transaction stands, so the record is left for redelivery, which sends the
/// committed messages.
#[tokio::test]
async fn a_send_refused_after_the_commit_is_retried_from_the_outbox_not_dead_lettered() {
    let t = TestFunction::new("snapshot", QueueSources::Only(Queue::Snapshot))
        .await
        .expect("world");
    let report = baseline_report(&t).await;
    t.bus.refuse_next_sends(1);
    let first = batch(&t, &[record("m-1", SNAPSHOT_ARN, &report)]).await;
    assert_eq!(first.batch_item_failures, ["m-1"], "{first:?}");
    assert_eq!(first.counts.dead_lettered, 0);
    assert!(t.dead_letters.sent().is_empty());

    let second = batch(&t, &[record("m-1", SNAPSHOT_ARN, &report)]).await;
    assert!(second.batch_item_failures.is_empty(), "{second:?}");
    assert_eq!(second.counts.duplicates, 1);
    let sent = t.drain();
    assert!(
        sent.iter()
            .any(|m| matches!(m.envelope.body, Body::CycleRequested { .. })),
        "{sent:?}"
    );
}

#[tokio::test]
async fn a_record_that_cannot_reach_its_dead_letter_queue_is_left_for_redelivery() {
    let t = TestFunction::new("analyze", QueueSources::Only(Queue::Analyze))
        .await
        .expect("world");
    t.dead_letters.fail_next(1);
    let response = batch(&t, &[record("m-1", ANALYZE_ARN, "not json")]).await;
    assert_eq!(response.batch_item_failures, ["m-1"]);
    assert_eq!(response.counts.retried, 1);
    assert_eq!(response.counts.dead_lettered, 0);
    assert!(t.dead_letters.sent().is_empty());
}

#[tokio::test]
async fn a_record_from_a_queue_the_function_does_not_consume_is_left_for_redelivery() {
    let t = TestFunction::new("analyze", QueueSources::Only(Queue::Analyze))
        .await
        .expect("world");
    let good = envelope(&t, "msg-good", SYSTEM, cycle());
    let response = batch(
        &t,
        &[record(
            "m-1",
            "arn:aws:sqs:eu-west-1:123456789012:other",
            &good,
        )],
    )
    .await;
    assert_eq!(response.batch_item_failures, ["m-1"]);
    assert!(t.dead_letters.sent().is_empty());
}

#[tokio::test]
async fn the_snapshot_queue_accepts_fitness_reports_from_the_fitness_queue() {
    let t = TestFunction::new("snapshot", QueueSources::Only(Queue::Snapshot))
        .await
        .expect("world");
    let report = baseline_report(&t).await;
    let fitness_arn = "arn:aws:sqs:eu-west-1:123456789012:evolve-fitness";
    let response = handle_sqs_batch(
        &t.deps.pipeline,
        t.deps.bus.as_ref(),
        t.deps.dead_letters.as_ref(),
        |arn| (arn == fitness_arn).then_some(Queue::Fitness),
        &[record("m-1", fitness_arn, &report)],
    )
    .await;
    assert_eq!(response.counts.processed, 1);
}

#[tokio::test]
async fn the_batch_response_lists_failures_by_message_id_for_sqs() {
    let t = TestFunction::new("analyze", QueueSources::Only(Queue::Analyze))
        .await
        .expect("world");
    t.dead_letters.fail_next(1);
    let mut event = SqsEvent::default();
    event.records = vec![record("m-9", ANALYZE_ARN, "not json")];
    let response = t.deps.sqs(&event).await;
    assert_eq!(
        serde_json::to_value(&response).expect("json"),
        json!({"batchItemFailures": [{"itemIdentifier": "m-9"}]})
    );
}

#[tokio::test]
async fn the_tick_sends_due_evaluations_once_per_minute() {
    let t = TestFunction::new("analyze", QueueSources::Only(Queue::Analyze))
        .await
        .expect("world");
    t.clock.advance(Duration::minutes(11));
    let schedule = Schedule {
        kind: Some(ScheduleKind::Tick),
        scheduled_at: Some(t.clock.now()),
    };
    let first = t
        .deps
        .schedule(ScheduleKind::Tick, schedule)
        .await
        .expect("tick");
    assert_eq!(first.outcome, "processed");
    assert_eq!(first.sent, 1);
    // The tick's first half asks the system's own step to look...
    let sent = t.drain();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].destination, Destination::Queue(Queue::Analyze));
    assert!(matches!(sent[0].envelope.body, Body::SystemTick { .. }));
    // ...which finds the window due.
    let raw = serde_json::to_string(&sent[0].envelope).expect("json");
    let batch = handle_sqs_batch(
        &t.deps.pipeline,
        t.deps.bus.as_ref(),
        t.deps.dead_letters.as_ref(),
        queue_of,
        &[record("m-tick", ANALYZE_ARN, &raw)],
    )
    .await;
    assert_eq!(batch.counts.processed, 1, "{batch:?}");
    let sent = t.drain();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].destination, Destination::Queue(Queue::Snapshot));
    assert!(matches!(
        sent[0].envelope.body,
        Body::EvaluationDue { generation: 0 }
    ));

    let again = t
        .deps
        .schedule(ScheduleKind::Tick, schedule)
        .await
        .expect("tick");
    assert_eq!(again.outcome, "duplicate");
    assert_eq!(again.id, first.id);
}

#[tokio::test]
async fn the_sweep_runs_once_per_minute_under_its_own_id() {
    let t = TestFunction::new("cost-guard", QueueSources::Only(Queue::CostGuard))
        .await
        .expect("world");
    let at = t.clock.now();
    let first = handle_sweep(&t.deps.pipeline, t.deps.bus.as_ref(), at)
        .await
        .expect("sweep");
    assert!(matches!(first, Handled::Processed { .. }));
    let again = t
        .deps
        .schedule(
            ScheduleKind::Sweep,
            Schedule {
                kind: None,
                scheduled_at: Some(at + Duration::seconds(20)),
            },
        )
        .await
        .expect("sweep");
    assert_eq!(again.outcome, "duplicate");
    assert_eq!(again.id, "sweep:2026-03-01T12:00");
}

#[tokio::test]
async fn a_function_refuses_the_other_schedule() {
    let t = TestFunction::new("cost-guard", QueueSources::Only(Queue::CostGuard))
        .await
        .expect("world");
    let err = t
        .deps
        .schedule(
            ScheduleKind::Sweep,
            Schedule {
                kind: Some(ScheduleKind::Tick),
                scheduled_at: None,
            },
        )
        .await
        .expect_err("wrong schedule");
    assert!(
        matches!(err, InvocationError::WrongSchedule { .. }),
        "{err}"
    );
}

#[test]
fn invocations_are_told_apart_by_shape() {
    let tick = Invocation::parse(json!({"kind": "tick", "scheduled_at": "2026-03-01T12:01:00Z"}))
        .expect("tick");
    let Invocation::Schedule(s) = tick else {
        panic!("not a schedule: {tick:?}")
    };
    assert_eq!(s.kind, Some(ScheduleKind::Tick));
    assert_eq!(
        s.scheduled_at.map(|t| t.to_rfc3339()),
        Some("2026-03-01T12:01:00+00:00".to_owned())
    );

    let rule = Invocation::parse(json!({
        "version": "0", "id": "e-1", "detail-type": "Scheduled Event", "source": "aws.events",
        "account": "123456789012", "time": "2026-03-01T12:02:00Z", "region": "eu-west-1",
        "resources": [], "detail": {}
    }))
    .expect("eventbridge");
    assert!(matches!(
        rule,
        Invocation::Schedule(Schedule {
            kind: None,
            scheduled_at: Some(_)
        })
    ));

    assert_eq!(
        Invocation::parse(json!({})).expect("empty"),
        Invocation::Schedule(Schedule::default())
    );

    let sqs = Invocation::parse(json!({"Records": [{
        "messageId": "m-1", "body": "{}", "eventSourceARN": ANALYZE_ARN
    }]}))
    .expect("sqs");
    let Invocation::Sqs(event) = sqs else {
        panic!("not SQS: {sqs:?}")
    };
    assert_eq!(event.records[0].message_id.as_deref(), Some("m-1"));

    for bad in [
        json!([]),
        json!({"hello": "world"}),
        json!({"kind": "nap"}),
        json!({"kind": "tick", "extra": 1}),
        json!({"Records": "nope"}),
    ] {
        assert!(Invocation::parse(bad.clone()).is_err(), "{bad}");
    }
}

#[test]
fn responses_serialize_as_lambda_expects() {
    let mut batch = SqsBatchResponse::default();
    batch.add_failure("m-1");
    assert_eq!(
        serde_json::to_value(Response::Batch(batch)).expect("json"),
        json!({"batchItemFailures": [{"itemIdentifier": "m-1"}]})
    );
    let schedule = Response::Schedule(ScheduleResponse {
        kind: ScheduleKind::Tick,
        id: "tick:2026-03-01T12:00".into(),
        outcome: "processed",
        sent: 2,
    });
    assert_eq!(
        serde_json::to_value(schedule).expect("json"),
        json!({"kind": "tick", "id": "tick:2026-03-01T12:00", "outcome": "processed", "sent": 2})
    );
}

#[test]
fn batch_counts_become_count_metrics() {
    let counts = BatchCounts {
        processed: 3,
        duplicates: 1,
        retried: 2,
        dead_lettered: 4,
        not_started: 1,
        panicked: 1,
    };
    let by_name: BTreeMap<_, _> = batch_metrics(&counts)
        .iter()
        .map(|m| (m.name, m.value.to_string()))
        .collect();
    assert_eq!(by_name[metrics::MESSAGES_PROCESSED], "3");
    assert_eq!(by_name[metrics::DUPLICATES], "1");
    assert_eq!(by_name[metrics::MESSAGES_RETRIED], "2");
    assert_eq!(by_name[metrics::MESSAGES_DEAD_LETTERED], "4");
    assert_eq!(by_name[metrics::MESSAGES_NOT_STARTED], "1");
    assert_eq!(by_name[metrics::MESSAGES_PANICKED], "1");
}

#[tokio::test]
async fn the_invocation_deadline_reaches_the_pipeline_config() {
    let t = TestFunction::new("analyze", QueueSources::Only(Queue::Analyze))
        .await
        .expect("test world");
    assert_eq!(
        t.deps.until(0).pipeline.config.deadline,
        None,
        "0 is unknown"
    );
    let deadline = t.clock.now() + Duration::seconds(42);
    let deps = t
        .deps
        .until(u64::try_from(deadline.timestamp_millis()).expect("after the epoch"));
    assert_eq!(deps.pipeline.config.deadline, Some(deadline));
    assert_eq!(
        t.deps.pipeline.config.deadline, None,
        "the cold-start deps are unchanged"
    );
    let past = t.clock.now() - Duration::seconds(1);
    assert_eq!(
        t.deps
            .until(u64::try_from(past.timestamp_millis()).expect("after the epoch"))
            .pipeline
            .config
            .deadline,
        None,
        "a deadline already past is not a real one"
    );
}

/// The local engine, with `before_analyze` run first on each analyze call: how a test makes one
/// record take time (advancing the simulated clock) or panic.
struct Hooked<F> {
    engine: crate::engine::LocalEngine,
    before_analyze: F,
}

impl<F> std::fmt::Debug for Hooked<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hooked")
    }
}

#[async_trait::async_trait]
impl<F> crate::llm::LanguageModel for Hooked<F>
where
    F: Fn(&crate::llm::AnalyzeRequest) + Send + Sync,
{
    async fn analyze(
        &self,
        req: &crate::llm::AnalyzeRequest,
    ) -> Result<crate::llm::LlmAnswer<crate::domain::EvolutionAnalysis>, crate::llm::LlmError> {
        (self.before_analyze)(req);
        self.engine.analyze(req).await
    }

    async fn strategize(
        &self,
        req: &crate::llm::StrategizeRequest,
    ) -> Result<crate::llm::LlmAnswer<crate::domain::MutationStrategy>, crate::llm::LlmError> {
        self.engine.strategize(req).await
    }

    async fn decide(
        &self,
        req: &crate::llm::DecideRequest,
    ) -> Result<crate::llm::LlmAnswer<crate::domain::DecisionResult>, crate::llm::LlmError> {
        self.engine.decide(req).await
    }

    async fn resolve_conflict(
        &self,
        req: &crate::llm::ResolveRequest,
    ) -> Result<crate::llm::LlmAnswer<crate::domain::ResolutionStrategy>, crate::llm::LlmError>
    {
        self.engine.resolve_conflict(req).await
    }
}

/// The analyze function on a stable head (its baseline measured), with the hook `make` builds
/// from the world's clock run before each analysis.
async fn analyze_with<F>(make: impl FnOnce(Arc<crate::clock::SimClock>) -> F) -> TestFunction
where
    F: Fn(&crate::llm::AnalyzeRequest) + Send + Sync + 'static,
{
    let mut t = TestFunction::new("analyze", QueueSources::Only(Queue::Analyze))
        .await
        .expect("world");
    t.close_baseline().await.expect("baseline");
    t.deps.pipeline.llm = Arc::new(Hooked {
        engine: crate::engine::LocalEngine::new(0),
        before_analyze: make(t.clock.clone()),
    });
    t
}

async fn analyses(t: &TestFunction) -> usize {
    t.store
        .list_llm_calls(Some(&TestFunction::system_id()), None)
        .await
        .expect("store")
        .len()
}

#[tokio::test]
async fn records_are_not_started_once_too_little_time_is_left_and_are_left_for_redelivery() {
    // Each analysis takes 20 simulated seconds.
    let mut t = analyze_with(|clock| {
        move |_: &crate::llm::AnalyzeRequest| clock.advance(Duration::seconds(20))
    })
    .await;
    // Time for the first record, not for a second one after it.
    t.deps.pipeline.config.deadline = Some(t.clock.now() + Duration::seconds(22));
    let first = envelope(&t, "msg-first", SYSTEM, cycle());
    let second = envelope(&t, "msg-second", SYSTEM, cycle());
    let response = batch(
        &t,
        &[
            record("m-1", ANALYZE_ARN, &first),
            record("m-2", ANALYZE_ARN, "not json"),
            record("m-3", ANALYZE_ARN, &second),
        ],
    )
    .await;

    assert_eq!(response.batch_item_failures, ["m-2", "m-3"]);
    assert_eq!(
        response.counts,
        BatchCounts {
            processed: 1,
            retried: 2,
            not_started: 2,
            ..BatchCounts::default()
        },
        "m-2 was never read, so not dead-lettered"
    );
    assert!(t.dead_letters.sent().is_empty());
    assert_eq!(analyses(&t).await, 1, "only the first record was analysed");
}

#[tokio::test]
async fn a_batch_whose_deadline_is_almost_reached_starts_no_record() {
    let mut t = analyze_with(|_| |_: &crate::llm::AnalyzeRequest| {}).await;
    t.deps.pipeline.config.deadline = Some(t.clock.now() + Duration::seconds(1));
    let good = envelope(&t, "msg-good", SYSTEM, cycle());
    let response = batch(&t, &[record("m-1", ANALYZE_ARN, &good)]).await;
    assert_eq!(response.batch_item_failures, ["m-1"]);
    assert_eq!(response.counts.processed, 0);
    assert_eq!(response.counts.not_started, 1);
    assert_eq!(analyses(&t).await, 0);
    assert!(t.drain().is_empty());
}

#[tokio::test]
async fn a_panic_in_one_record_fails_that_record_only() {
    let t = analyze_with(|_| {
        |req: &crate::llm::AnalyzeRequest| {
            assert!(req.ctx.envelope_id != "msg-boom", "the analysis blew up");
        }
    })
    .await;
    let boom = envelope(&t, "msg-boom", SYSTEM, cycle());
    let good = envelope(&t, "msg-good", SYSTEM, cycle());
    let response = batch(
        &t,
        &[
            record("m-1", ANALYZE_ARN, &boom),
            record("m-2", ANALYZE_ARN, &good),
            record("m-3", ANALYZE_ARN, "not json"),
        ],
    )
    .await;

    assert_eq!(response.batch_item_failures, ["m-1"]);
    assert_eq!(
        response.counts,
        BatchCounts {
            processed: 1,
            retried: 1,
            dead_lettered: 1,
            panicked: 1,
            ..BatchCounts::default()
        }
    );
    assert_eq!(analyses(&t).await, 1, "the good record was analysed");
    let dead = t.dead_letters.sent();
    assert_eq!(dead.len(), 1, "the panicking record is not dead-lettered");
    assert_eq!(dead[0].body, "not json");
}

#[tokio::test]
async fn an_llm_call_must_answer_early_enough_for_its_record_to_commit() {
    let seen = Arc::new(std::sync::Mutex::new(None));
    let record_seen = seen.clone();
    let mut t = analyze_with(move |_| {
        move |req: &crate::llm::AnalyzeRequest| {
            *record_seen.lock().expect("lock") = Some(req.ctx.deadline);
        }
    })
    .await;
    let deadline = t.clock.now() + Duration::seconds(60);
    t.deps.pipeline.config.deadline = Some(deadline);
    let good = envelope(&t, "msg-good", SYSTEM, cycle());
    let response = batch(&t, &[record("m-1", ANALYZE_ARN, &good)]).await;
    assert_eq!(response.counts.processed, 1);
    assert_eq!(
        *seen.lock().expect("lock"),
        Some(Some(deadline - crate::stages::FINISH_MARGIN))
    );
}
