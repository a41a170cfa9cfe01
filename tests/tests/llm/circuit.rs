//! The per-model circuit breaker, kept in control state: it opens after `circuit_threshold`
//! consecutive transient failures, keeps the model out of the routes for the cooldown, and a
//! success after the cooldown closes it.

use chrono::Duration;
use shared::cost::Budgets;
use shared::domain::Role;
use shared::llm::LanguageModel;
use tests::bedrock_stub::Reply;

use crate::fixture::{A, B, C, Fixture, catalog, times};
use crate::requests::{analyze_req, ok_from};

#[tokio::test]
async fn the_circuit_opens_after_consecutive_failures_and_closes_after_a_success_past_the_cooldown()
{
    let f = Fixture::new(&[A, B, C]).await;
    let threshold = f.settings.retry.circuit_threshold;
    let cooldown = Duration::from_std(f.settings.retry.circuit_cooldown).expect("a cooldown");
    assert!(
        threshold <= f.settings.retry.retries_per_model + 1,
        "one call must be able to open the circuit"
    );
    for _ in 0..threshold {
        f.stub.push_for(A, Reply::throttled());
    }
    f.stub.push_for(B, ok_from(B, Role::Analyze));

    // Call 1: A fails `threshold` times in a row and B answers.
    let first = f
        .model
        .analyze(&analyze_req("env-1"))
        .await
        .expect("answer");
    assert_eq!(first.model_id, B);
    let mut expected = times(A, threshold as usize);
    expected.push(B.to_owned());
    assert_eq!(f.models_called(), expected);
    let open = f.circuit(A).await.expect("A's circuit");
    assert_eq!(open.consecutive_failures, threshold);
    let until = open.open_until.expect("the circuit is open");
    assert!(until > f.now());
    assert!(until <= f.now() + cooldown);

    // Call 2: the open circuit keeps A out of the route; the first request goes to B.
    f.stub.push_for(B, ok_from(B, Role::Analyze));
    let before = f.stub.request_count();
    let second = f
        .model
        .analyze(&analyze_req("env-2"))
        .await
        .expect("answer");
    assert_eq!(second.model_id, B);
    assert_eq!(second.bedrock_requests, 1);
    assert_eq!(f.requests()[before].model_id, B);

    // Call 3, after the cooldown: A is tried again and its success closes the circuit.
    f.clock.advance_to(until + Duration::seconds(1));
    f.stub.push_for(A, ok_from(A, Role::Analyze));
    let before = f.stub.request_count();
    let third = f
        .model
        .analyze(&analyze_req("env-3"))
        .await
        .expect("answer");
    assert_eq!(third.model_id, A);
    assert_eq!(f.requests()[before].model_id, A);
    let closed = f.circuit(A).await.expect("A's circuit");
    assert_eq!(closed.consecutive_failures, 0);
    assert_eq!(closed.open_until, None);
    assert_eq!(f.stub.pending(), 0);
}

#[tokio::test]
async fn failures_add_up_across_calls_and_a_failed_trial_reopens_the_circuit_at_once() {
    let f = Fixture::with(catalog(&[A, B, C]), Budgets::default(), |s| {
        s.retry.retries_per_model = 0;
    })
    .await;
    let threshold = f.settings.retry.circuit_threshold;
    for i in 1..=threshold {
        f.stub.push_for(A, Reply::throttled());
        f.stub.push_for(B, ok_from(B, Role::Analyze));
        let answer = f
            .model
            .analyze(&analyze_req(&format!("env-{i}")))
            .await
            .expect("answer");
        assert_eq!(answer.model_id, B);
        let circuit = f.circuit(A).await.expect("A's circuit");
        assert_eq!(circuit.consecutive_failures, i);
        assert_eq!(circuit.open_until.is_some(), i >= threshold, "after {i}");
    }
    let until = f.circuit(A).await.and_then(|c| c.open_until).expect("open");

    // After the cooldown A gets one trial; it is throttled, and the circuit opens again at once.
    f.clock.advance_to(until + Duration::seconds(1));
    f.stub.push_for(A, Reply::throttled());
    f.stub.push_for(B, ok_from(B, Role::Analyze));
    let before = f.stub.request_count();
    let trial = f
        .model
        .analyze(&analyze_req("env-trial"))
        .await
        .expect("answer");
    assert_eq!(trial.model_id, B);
    assert_eq!(f.models_called()[before..], [A, B]);
    let reopened = f.circuit(A).await.expect("A's circuit");
    assert_eq!(reopened.consecutive_failures, threshold + 1);
    assert!(reopened.open_until.is_some_and(|t| t > f.now()));

    // So the next call skips A.
    f.stub.push_for(B, ok_from(B, Role::Analyze));
    let before = f.stub.request_count();
    let skipped = f
        .model
        .analyze(&analyze_req("env-next"))
        .await
        .expect("answer");
    assert_eq!(skipped.model_id, B);
    assert_eq!(f.models_called()[before..], [B]);
    assert_eq!(f.stub.pending(), 0);
}
