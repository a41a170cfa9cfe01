//! Priorities under throttling (`domain::Priority`): analysis and strategy of a healthy system
//! give way at once (no retry, no backoff, throttled models skipped without a request while
//! their window is open); high-risk decisions and conflict resolution keep their retries.

use chrono::Duration;
use shared::domain::{Priority, Role, healthy};
use shared::engine::LOCAL_MODEL_ID;
use shared::llm::LanguageModel;
use tests::bedrock_stub::Reply;

use crate::fixture::{A, B, Fixture, times};
use crate::requests::{analyze_req, decide_req, history, ok_from, strategize_req};

/// Analysis of a healthy system (no rollback in its recent history): low priority.
fn healthy_analyze(envelope: &str) -> shared::llm::AnalyzeRequest {
    let mut req = analyze_req(envelope);
    req.history = Vec::new();
    assert_eq!(
        Priority::of(&req.ctx.task, healthy(&req.history)),
        Priority::Low
    );
    req
}

/// A high-risk decision: critical.
fn critical_decide(envelope: &str) -> shared::llm::DecideRequest {
    let mut req = decide_req(envelope, 0.9, 0.8);
    req.ctx.task.critical = true;
    req
}

#[tokio::test]
async fn a_low_priority_call_falls_back_at_once_when_throttled() {
    let f = Fixture::new(&[A]).await;
    f.stub.push_for(A, Reply::throttled());
    let before = f.now();

    let answer = f
        .model
        .analyze(&healthy_analyze("env-low"))
        .await
        .expect("an answer");

    assert_eq!(f.models_called(), [A], "one request, no retry");
    assert_eq!(answer.model_id, LOCAL_MODEL_ID);
    assert_eq!(answer.bedrock_requests, 1);
    assert!(
        answer
            .fallback
            .as_deref()
            .unwrap_or_default()
            .contains("throttled"),
        "{:?}",
        answer.fallback
    );
    assert_eq!(f.now(), before, "no backoff");
    let window = f.circuit(A).await.and_then(|c| c.throttled_until);
    assert_eq!(window, Some(before + Duration::seconds(30)));

    // While the window is open, low-priority calls do not send anything to A.
    let strategy = f
        .model
        .strategize(&{
            let mut req = strategize_req("env-low-2");
            req.history = Vec::new();
            req
        })
        .await
        .expect("an answer");
    assert_eq!(strategy.model_id, LOCAL_MODEL_ID);
    assert_eq!(strategy.bedrock_requests, 0);
    assert_eq!(f.stub.request_count(), 1);

    // Once it has passed, they try A again.
    f.clock.advance(Duration::seconds(31));
    f.stub.push_for(A, ok_from(A, Role::Analyze));
    let later = f
        .model
        .analyze(&healthy_analyze("env-low-3"))
        .await
        .expect("an answer");
    assert_eq!(later.model_id, A);
    assert_eq!(f.stub.request_count(), 2);
    // An answer closes the window.
    assert_eq!(f.circuit(A).await.and_then(|c| c.throttled_until), None);
}

#[tokio::test]
async fn a_low_priority_call_moves_to_an_unthrottled_model_without_waiting() {
    let f = Fixture::new(&[A, B]).await;
    f.stub.push_for(A, Reply::throttled());
    f.stub.push_for(B, ok_from(B, Role::Analyze));
    let before = f.now();

    let answer = f
        .model
        .analyze(&healthy_analyze("env-low"))
        .await
        .expect("an answer");

    assert_eq!(f.models_called(), [A, B]);
    assert_eq!(answer.model_id, B);
    assert_eq!(f.now(), before, "no backoff");
}

#[tokio::test]
async fn critical_calls_keep_their_retries_even_while_a_throttle_window_is_open() {
    let f = Fixture::new(&[A]).await;
    // A low-priority call opens A's throttle window.
    f.stub.push_for(A, Reply::throttled());
    f.model
        .analyze(&healthy_analyze("env-low"))
        .await
        .expect("an answer");
    assert!(f.circuit(A).await.and_then(|c| c.throttled_until).is_some());

    f.stub.push_for(A, Reply::throttled());
    f.stub.push_for(A, Reply::throttled());
    f.stub.push_for(A, ok_from(A, Role::Decide));
    let answer = f
        .model
        .decide(&critical_decide("env-critical"))
        .await
        .expect("an answer");

    assert_eq!(f.models_called(), times(A, 4), "1 low + 3 critical");
    assert_eq!(answer.model_id, A);
    assert_eq!(answer.bedrock_requests, 3, "two retries, then the answer");
    assert_eq!(answer.fallback, None);
}

#[tokio::test]
async fn a_struggling_systems_analysis_keeps_its_retries() {
    let f = Fixture::new(&[A]).await;
    // Its history alternates kept and rolled-back evaluations.
    let req = analyze_req("env-normal");
    assert_eq!(req.history, history(4));
    assert_eq!(
        Priority::of(&req.ctx.task, healthy(&req.history)),
        Priority::Normal
    );
    f.stub.push_for(A, Reply::throttled());
    f.stub.push_for(A, ok_from(A, Role::Analyze));

    let answer = f.model.analyze(&req).await.expect("an answer");

    assert_eq!(f.models_called(), times(A, 2));
    assert_eq!(answer.model_id, A);
}
