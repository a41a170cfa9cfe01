use std::sync::Arc;

use super::*;
use crate::clock::Clock;
use crate::domain::{CycleReason, SystemId};
use crate::engine::LocalEngine;
use crate::local::LocalHome;
use crate::security::SecurityEvent;
use crate::store::memory::MemoryStore;

fn denied() -> SecurityEvent {
    SecurityEvent::new(
        "dynamodb",
        "GetItem",
        "AccessDeniedException",
        "not allowed",
    )
}

#[test]
fn authorization_failures_of_the_store_and_the_bus_are_permanent() {
    let store: PipelineError = StoreError::Denied(Box::new(denied())).into();
    assert!(!store.is_retryable(), "{store}");
    assert!(store.to_string().contains("security: dynamodb GetItem"));
    let bus = bus_error(&BusError::Denied(Box::new(denied())));
    assert!(!bus.is_retryable());
    // Throttling stays retryable.
    let throttled: PipelineError = StoreError::Unavailable("throttled".into()).into();
    assert!(throttled.is_retryable());
}

/// A failed scheduled run reports its error to Lambda by name (`errorType`), with the
/// error and its sources as the message; before, the type was a boxed Rust trait object's.
#[test]
fn every_failure_has_a_stable_name_for_lambdas_error_type() {
    use crate::lambda::InvocationError;
    let cases: [(PipelineError, &str); 6] = [
        (
            StoreError::Unavailable("throttled".into()).into(),
            "StoreUnavailable",
        ),
        (
            StoreError::Fenced("eu-west-1 writes".into()).into(),
            "WriterFenced",
        ),
        (
            StoreError::ConditionFailed("head moved".into()).into(),
            "ConditionFailed",
        ),
        (
            StoreError::Denied(Box::new(denied())).into(),
            "AccessDenied",
        ),
        (
            StageError::UnknownSystem(SystemId::parse("svc").expect("id")).into(),
            "UnknownSystem",
        ),
        (
            bus_error(&BusError::Unavailable("down".into())),
            "BusUnavailable",
        ),
    ];
    for (error, kind) in cases {
        assert_eq!(error.kind(), kind, "{error}");
        let diagnostic = lambda_runtime::Diagnostic::from(InvocationError::Pipeline(error));
        assert_eq!(diagnostic.error_type, kind);
        assert!(!diagnostic.error_message.is_empty());
    }
}

#[tokio::test]
async fn a_denied_store_read_raises_a_critical_security_alert_and_is_not_retried() {
    let home = LocalHome::new(
        Arc::new(MemoryStore::new()),
        Arc::new(LocalEngine::new(1)),
        chrono::DateTime::<chrono::Utc>::UNIX_EPOCH,
        stages::PipelineConfig::default(),
    );
    let env = Envelope::caused_by(
        "cause",
        None,
        "test",
        0,
        SystemId::parse("svc").expect("id"),
        0,
        home.clock.now(),
        Body::CycleRequested {
            reason: CycleReason::Scheduled,
        },
    );
    let stage = || async { Err(StageError::Store(StoreError::Denied(Box::new(denied())))) };
    let err = exactly_once(
        &home.deps,
        home.bus.as_ref(),
        &env.id,
        Some(&env),
        "hash",
        stage,
    )
    .await
    .expect_err("denied");

    assert!(!err.is_retryable());
    let alerts = home.deps.store.list_alerts(None, 10).await.expect("alerts");
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].kind, "security");
    assert_eq!(alerts[0].level, crate::domain::AlertLevel::Critical);
    let published = home
        .bus
        .pop_due(home.clock.now())
        .expect("the alert is published");
    assert!(matches!(
        published.outgoing.envelope.body,
        Body::AlertRaised { .. }
    ));
}
