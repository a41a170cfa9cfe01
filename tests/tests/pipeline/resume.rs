//! Resuming a paused head (`evolve resume`): back to stable with an audit event that says who,
//! when, why it was paused and the note, and cycles run again; a repeated or stale resume, or
//! one of a head that is not paused, changes nothing.

use chrono::Duration;
use shared::bus::Bus;
use shared::clock::Clock;
use shared::domain::ResolutionAction;
use shared::domain::{Envelope, EventType, EvolutionEvent, Head, HeadStatus, Outgoing};
use shared::local::{RunOptions, RunReport, Silent, resume_message};
use shared::pipeline::{self, Handled};
use shared::stages::PipelineConfig;
use shared::store::EvolutionStore;

use super::helpers::*;

const OPERATOR: &str = "local user alice";

/// A rollback raises a conflict at once (a streak of one).
fn quick_to_conflict() -> PipelineConfig {
    PipelineConfig {
        rollback_streak_conflict: 1,
        ..permissive()
    }
}

async fn run(h: &Harness, generations: u32) -> RunReport {
    let opts = RunOptions {
        generations,
        ..RunOptions::default()
    };
    h.home
        .runner(&rises_with_x())
        .run(&system_id(), &opts, &Silent)
        .await
        .expect("run")
}

async fn head(h: &Harness) -> Head {
    h.store
        .get_head(&system_id())
        .await
        .expect("head")
        .expect("exists")
}

async fn resumes(h: &Harness) -> Vec<EvolutionEvent> {
    h.store
        .list_events(&system_id(), None, 1000)
        .await
        .expect("events")
        .into_iter()
        .filter(|e| e.event_type == EventType::OperatorResume)
        .collect()
}

fn resume(h: &Harness, generation: u64, note: Option<&str>) -> Envelope {
    resume_message(&system_id(), generation, OPERATOR, note, h.home.clock.now())
}

/// Sends `env` and processes what follows, as `evolve resume` does locally.
async fn deliver(h: &Harness, env: Envelope) {
    h.home.bus.send(&[Outgoing::new(env)]).await.expect("send");
    let dead = h
        .home
        .settle(&RunOptions::default(), &Silent)
        .await
        .expect("settle");
    assert!(dead.is_empty(), "{dead:?}");
}

/// A head that conflict resolution paused: its first change (x down to 40) was rolled back,
/// which raised a rollback-streak conflict, resolved by pausing.
async fn paused() -> Harness {
    let llm = Scripted::with(vec![strategy(vec![step("down", "x", 40)])]);
    *llm.resolve_with.lock().expect("lock") = Some(ResolutionAction::Pause);
    let h = harness(llm, quick_to_conflict()).await;
    let report = run(&h, 3).await;
    assert_eq!(
        report.stopped.as_deref(),
        Some("the system is paused"),
        "{report:?}"
    );
    assert_eq!(head(&h).await.status, HeadStatus::Paused);
    *h.llm.resolve_with.lock().expect("lock") = Some(ResolutionAction::Escalate);
    h
}

#[tokio::test]
async fn a_resumed_head_is_stable_again_audited_and_cycles_run_again() {
    let h = paused().await;
    let before = head(&h).await;
    assert!(before.rollback_streak >= 1, "{before:?}");
    h.llm
        .strategies
        .lock()
        .expect("lock")
        .push_back(strategy(vec![step("up", "x", 60)]));
    let analyses = h.llm.analyses();

    deliver(
        &h,
        resume(&h, before.generation, Some("checked the rollbacks")),
    )
    .await;

    let after = head(&h).await;
    assert_eq!(after.status, HeadStatus::Stable);
    assert_eq!(after.generation, before.generation);
    assert_eq!(
        after.rollback_streak, 0,
        "the streak that paused it is cleared"
    );
    let events = resumes(&h).await;
    assert_eq!(events.len(), 1, "{events:?}");
    let detail = events[0].detail.clone().unwrap_or_default();
    for part in [
        OPERATOR,
        "checked the rollbacks",
        "RollbackStreak conflict",
        "resolution Pause",
    ] {
        assert!(detail.contains(part), "{part} missing from: {detail}");
    }
    assert_eq!(events[0].generation, before.generation);
    let system = h
        .store
        .get_system(&system_id())
        .await
        .expect("system")
        .expect("exists");
    assert!(
        system.next_cycle_at <= h.home.clock.now(),
        "the next tick finds a cycle due"
    );

    let report = run(&h, 1).await;
    assert_eq!(report.generations, 1, "{report:?}");
    assert!(h.llm.analyses() > analyses, "a cycle ran");
    let head = head(&h).await;
    assert!(head.generation > before.generation, "{head:?}");
    assert_ne!(head.status, HeadStatus::Paused);
}

#[tokio::test]
async fn a_repeated_or_stale_resume_changes_nothing() {
    let h = paused().await;
    let generation = head(&h).await.generation;

    // Sent for a generation the head is not at: the operator saw another head.
    let stale = resume(&h, generation + 1, None);
    deliver(&h, stale).await;
    assert_eq!(head(&h).await.status, HeadStatus::Paused);
    assert!(resumes(&h).await.is_empty());

    let first = resume(&h, generation, None);
    deliver(&h, first.clone()).await;
    let resumed = head(&h).await;
    assert_eq!(resumed.status, HeadStatus::Stable);

    // The same message again (a redelivery) is a duplicate.
    h.home.clock.advance(Duration::seconds(5));
    let again = pipeline::handle(&h.home.deps, h.home.bus.as_ref(), &first)
        .await
        .expect("handled");
    assert!(matches!(again, Handled::Duplicate { .. }), "{again:?}");

    // A second resume (a new message) finds nothing paused.
    let second = resume(&h, generation, Some("me too"));
    let handled = pipeline::handle(&h.home.deps, h.home.bus.as_ref(), &second)
        .await
        .expect("acknowledged, not an error");
    let Handled::Processed { summary, sent, .. } = handled else {
        panic!("not processed: {handled:?}");
    };
    assert!(summary.starts_with("no-op"), "{summary}");
    assert_eq!(sent, 0);
    assert_eq!(head(&h).await, resumed);
    assert_eq!(resumes(&h).await.len(), 1);
}

#[tokio::test]
async fn resuming_a_head_that_is_not_paused_changes_nothing() {
    let h = harness(Scripted::with(vec![]), permissive()).await;
    let before = head(&h).await;
    assert_eq!(before.status, HeadStatus::Evaluating, "the baseline waits");
    let handled = pipeline::handle(
        &h.home.deps,
        h.home.bus.as_ref(),
        &resume(&h, before.generation, None),
    )
    .await
    .expect("acknowledged, not an error");
    assert!(
        matches!(&handled, Handled::Processed { summary, .. } if summary.starts_with("no-op")),
        "{handled:?}"
    );
    assert_eq!(head(&h).await, before);
    assert!(resumes(&h).await.is_empty());
}
