//! The approval gate: approvals above the threshold wait for a human (or the clock), and every
//! step lands in the audit trail with who and when.

use chrono::Duration;
use shared::bus::Bus;
use shared::clock::Clock;
use shared::domain::{DecidedBy, HeadStatus, Outgoing, Recommendation};
use shared::local::{PendingPolicy, RunOptions, RunReport, Silent, verdict_message};
use shared::pipeline;
use shared::stages::PipelineConfig;
use shared::store::EvolutionStore;

use super::helpers::*;

/// Policy approves everything, and the gate holds every approval with any risk at all.
fn gated() -> PipelineConfig {
    PipelineConfig {
        approval_threshold: Some(0.0),
        approval_ttl_seconds: 3600,
        ..permissive()
    }
}

fn opts(generations: u32, pending: PendingPolicy) -> RunOptions {
    RunOptions {
        generations,
        pending,
        operator: "local user tester".into(),
        max_idle: Duration::hours(6),
        ..RunOptions::default()
    }
}

/// Runs the pipeline with fitness rising with `x` until `generations` close or it stops.
async fn run_with(h: &Harness, generations: u32, pending: PendingPolicy) -> RunReport {
    h.home
        .runner(&rises_with_x())
        .run(&system_id(), &opts(generations, pending), &Silent)
        .await
        .expect("run")
}

async fn head(h: &Harness) -> shared::domain::Head {
    h.store
        .get_head(&system_id())
        .await
        .expect("head")
        .expect("exists")
}

/// Sends an operator's verdict and processes what follows, up to the next measurement.
async fn verdict(h: &Harness, decision_id: &str, approve: bool, note: Option<&str>) {
    let now = h.home.clock.now();
    let env = verdict_message(
        &system_id(),
        decision_id,
        approve,
        "local user alice",
        note,
        now,
    );
    h.home.bus.send(&[Outgoing::new(env)]).await.expect("send");
    let dead = h
        .home
        .settle(&RunOptions::default(), &Silent)
        .await
        .expect("settle");
    assert!(dead.is_empty(), "{dead:?}");
}

#[tokio::test]
async fn a_risky_approval_waits_for_a_human_then_applies() {
    let llm = Scripted::with(vec![strategy(vec![step("a", "x", 60), step("b", "x", 70)])]);
    let h = harness(llm, gated()).await;

    let report = run_with(&h, 1, PendingPolicy::Stop).await;
    let pending_id = report
        .awaiting_approval
        .clone()
        .expect("stopped at a pending approval");
    assert_eq!(report.decisions.pending, 1, "{report:?}");
    assert_eq!(report.mutations_applied, 0);
    assert!(
        report
            .stopped
            .as_deref()
            .unwrap_or("")
            .contains(&pending_id),
        "{report:?}"
    );

    let held = head(&h).await;
    assert_eq!(held.status, HeadStatus::AwaitingApproval);
    let approval = held.approval.clone().expect("approval on the head");
    assert_eq!(approval.decision_id, pending_id);
    assert_eq!(
        approval.expires_at - approval.requested_at,
        Duration::hours(1)
    );
    let record = h
        .store
        .get_decision(&system_id(), &pending_id)
        .await
        .expect("get")
        .expect("pending record");
    assert_eq!(record.decision, Recommendation::PendingApproval);
    assert!(
        record.reasoning.contains("approval threshold"),
        "{}",
        record.reasoning
    );
    let alerts = h.store.list_alerts(None, 100).await.expect("alerts");
    assert!(
        alerts
            .iter()
            .any(|a| a.kind == "approval" && a.message.contains(&pending_id)),
        "{alerts:?}"
    );

    // Running again without an answer stops at once and decides nothing new.
    let again = run_with(&h, 1, PendingPolicy::Stop).await;
    assert_eq!(
        again.awaiting_approval.as_deref(),
        Some(pending_id.as_str())
    );
    let before = h
        .store
        .list_decisions(&system_id(), None, 100)
        .await
        .expect("list")
        .len();

    verdict(&h, &pending_id, true, Some("looks fine")).await;
    let applied = head(&h).await;
    assert_eq!(applied.status, HeadStatus::Evaluating);
    assert_eq!(applied.generation, 1);
    let generation = h
        .store
        .get_generation(&system_id(), 1)
        .await
        .expect("get")
        .expect("generation 1");
    assert_eq!(int(&generation.genes, "x"), 60);
    let decisions = h
        .store
        .list_decisions(&system_id(), None, 100)
        .await
        .expect("list");
    assert_eq!(decisions.len(), before + 1);
    let resolution = decisions.last().expect("resolution");
    assert_eq!(resolution.decision, Recommendation::Approve);
    assert_eq!(resolution.decided_by, Some(DecidedBy::Operator));
    assert_eq!(resolution.approver.as_deref(), Some("local user alice"));
    assert_eq!(resolution.resolves.as_deref(), Some(pending_id.as_str()));
    assert!(
        resolution.reasoning.contains("looks fine"),
        "{}",
        resolution.reasoning
    );
    assert!(resolution.timestamp >= record.timestamp);

    // A second verdict on the same decision is a no-op.
    verdict(&h, &pending_id, false, None).await;
    assert_eq!(
        h.store
            .list_decisions(&system_id(), None, 100)
            .await
            .expect("list")
            .len(),
        before + 1
    );
    assert_eq!(head(&h).await.generation, 1);

    // The next run measures the approved generation and carries on.
    let report = run_with(&h, 1, PendingPolicy::Stop).await;
    assert!(report.generations >= 1, "{report:?}");
    let history = h
        .store
        .list_history(&system_id(), 10)
        .await
        .expect("history");
    assert!(history.iter().any(|e| e.generation == 1), "{history:?}");
}

#[tokio::test]
async fn a_rejected_approval_moves_the_plan_on() {
    let llm = Scripted::with(vec![strategy(vec![step("a", "x", 60), step("b", "x", 55)])]);
    let h = harness(llm, gated()).await;
    let report = run_with(&h, 1, PendingPolicy::Stop).await;
    let first = report.awaiting_approval.expect("pending");
    verdict(&h, &first, false, Some("too big a jump")).await;

    // The plan's next step is proposed and held in turn.
    let held = head(&h).await;
    assert_eq!(held.status, HeadStatus::AwaitingApproval);
    let next = held.approval.expect("the next step waits");
    assert_ne!(next.decision_id, first);
    assert_eq!(
        next.mutation.changes[0].value,
        shared::domain::GeneValue::Int(55)
    );
    let decisions = h
        .store
        .list_decisions(&system_id(), None, 100)
        .await
        .expect("list");
    let rejection = decisions
        .iter()
        .find(|d| d.resolves.as_deref() == Some(first.as_str()))
        .expect("the rejection record");
    assert_eq!(rejection.decision, Recommendation::Reject);
    assert_eq!(rejection.approver.as_deref(), Some("local user alice"));
    assert!(rejection.reasoning.contains("too big a jump"));
    assert_eq!(head(&h).await.generation, 0, "nothing was applied");
}

#[tokio::test]
async fn an_unanswered_approval_expires_to_reject() {
    let llm = Scripted::with(vec![strategy(vec![step("a", "x", 60)])]);
    let h = harness(llm, gated()).await;
    let report = run_with(&h, 1, PendingPolicy::Stop).await;
    let pending_id = report.awaiting_approval.expect("pending");

    // Before the deadline the tick leaves it alone.
    let early = h.home.clock.now() + Duration::minutes(30);
    h.home.clock.advance_to(early);
    pipeline::tick(&h.home.deps, h.home.bus.as_ref(), early)
        .await
        .expect("tick");
    h.home
        .settle(&RunOptions::default(), &Silent)
        .await
        .expect("settle");
    assert_eq!(head(&h).await.status, HeadStatus::AwaitingApproval);

    let late = h.home.clock.now() + Duration::hours(1);
    h.home.clock.advance_to(late);
    pipeline::tick(&h.home.deps, h.home.bus.as_ref(), late)
        .await
        .expect("tick");
    h.home
        .settle(&RunOptions::default(), &Silent)
        .await
        .expect("settle");
    let after = head(&h).await;
    assert_ne!(
        after.approval.as_ref().map(|a| a.decision_id.as_str()),
        Some(pending_id.as_str()),
        "still pending after its deadline"
    );
    let decisions = h
        .store
        .list_decisions(&system_id(), None, 100)
        .await
        .expect("list");
    let expiry = decisions
        .iter()
        .find(|d| d.resolves.as_deref() == Some(pending_id.as_str()))
        .expect("the expiry record");
    assert_eq!(expiry.decision, Recommendation::Reject);
    assert_eq!(expiry.decided_by, Some(DecidedBy::Expiry));
    assert!(expiry.reasoning.contains("expired"), "{}", expiry.reasoning);
    let alerts = h.store.list_alerts(None, 100).await.expect("alerts");
    assert!(
        alerts
            .iter()
            .any(|a| a.kind == "approval" && a.message.contains("expired"))
    );

    // The registry carried the deadline for the tick; the next tick's step forgets it, so the
    // tick stops visiting the system for an approval it no longer holds.
    let system = || async {
        h.store
            .get_system(&system_id())
            .await
            .expect("registry")
            .expect("exists")
    };
    assert!(system().await.approval_expires_at.is_some());
    let next = h.home.clock.now() + Duration::minutes(1);
    h.home.clock.advance_to(next);
    pipeline::tick(&h.home.deps, h.home.bus.as_ref(), next)
        .await
        .expect("tick");
    h.home
        .settle(&RunOptions::default(), &Silent)
        .await
        .expect("settle");
    assert_ne!(head(&h).await.status, HeadStatus::AwaitingApproval);
    assert_eq!(system().await.approval_expires_at, None);
}

#[tokio::test]
async fn approve_all_runs_unattended_and_records_the_operator() {
    let llm = Scripted::with(vec![strategy(vec![step("a", "x", 60), step("b", "x", 70)])]);
    let h = harness(llm, gated()).await;
    let report = run_with(&h, 2, PendingPolicy::ApproveAll).await;
    assert_eq!(report.generations, 2, "{report:?}");
    assert_eq!(report.decisions.pending, 0);
    assert!(report.awaiting_approval.is_none());
    let decisions = h
        .store
        .list_decisions(&system_id(), None, 100)
        .await
        .expect("list");
    let resolutions: Vec<_> = decisions.iter().filter(|d| d.resolves.is_some()).collect();
    assert_eq!(resolutions.len(), 2);
    for r in resolutions {
        assert_eq!(r.decision, Recommendation::Approve);
        assert_eq!(r.approver.as_deref(), Some("local user tester"));
    }
}

#[tokio::test]
async fn without_a_threshold_nothing_waits() {
    let llm = Scripted::with(vec![strategy(vec![step("a", "x", 60)])]);
    let h = harness(llm, permissive()).await;
    let report = run_with(&h, 1, PendingPolicy::Stop).await;
    assert_eq!(report.generations, 1);
    assert_eq!(report.decisions.pending, 0);
}

#[tokio::test]
async fn an_operator_rollback_supersedes_a_held_decision() {
    let llm = Scripted::with(vec![strategy(vec![step("a", "x", 60), step("b", "x", 65)])]);
    let h = harness(llm, gated()).await;
    let first = run_with(&h, 1, PendingPolicy::ApproveAll).await;
    assert_eq!(first.generations, 1);
    // The next proposal is held; the operator rolls back instead of answering.
    let held = run_with(&h, 1, PendingPolicy::Stop)
        .await
        .awaiting_approval
        .expect("held");
    let at = head(&h).await;
    let rollback = shared::domain::Envelope {
        id: "op-rollback".into(),
        causation_id: String::new(),
        system_id: system_id(),
        base_generation: at.generation,
        sent_at: h.home.clock.now(),
        traceparent: None,
        body: shared::domain::Body::RollbackRequested {
            to_generation: Some(0),
            requested_by: "local user bob".into(),
            reason: "back to the start".into(),
        },
    };
    pipeline::handle(&h.home.deps, h.home.bus.as_ref(), &rollback)
        .await
        .expect("rollback");
    let after = head(&h).await;
    assert_eq!(after.status, HeadStatus::Evaluating);
    assert!(after.approval.is_none());
    let decisions = h
        .store
        .list_decisions(&system_id(), None, 100)
        .await
        .expect("list");
    let closed = decisions
        .iter()
        .find(|d| d.resolves.as_deref() == Some(held.as_str()))
        .expect("the held decision is closed");
    assert_eq!(closed.decision, Recommendation::Reject);
    assert_eq!(closed.approver.as_deref(), Some("local user bob"));
    assert!(
        closed.reasoning.contains("superseded"),
        "{}",
        closed.reasoning
    );
}

/// A verdict computed while the head held decision A, committed after A was answered and the
/// same generation came to hold decision B, must not move the head: it would apply (or reject)
/// B's slot with A's verdict.
#[tokio::test]
async fn a_late_verdict_on_an_answered_decision_never_moves_the_head() {
    let llm = Scripted::with(vec![strategy(vec![step("a", "x", 60), step("b", "x", 55)])]);
    let h = harness(llm, gated()).await;
    let first = run_with(&h, 1, PendingPolicy::Stop)
        .await
        .awaiting_approval
        .expect("A held");
    let generation = head(&h).await.generation;

    // An approval of A is computed now...
    let env = verdict_message(
        &system_id(),
        &first,
        true,
        "local user mallory",
        None,
        h.home.clock.now(),
    );
    let late = shared::stages::decide::handle_verdict(
        &h.home.deps,
        &env,
        &first,
        shared::stages::decide::Verdict::Approve,
        "local user mallory",
        None,
    )
    .await
    .expect("the verdict's stage");
    // ...while A is rejected and the plan's next step is held at the same generation.
    verdict(&h, &first, false, None).await;
    let held = head(&h).await;
    assert_eq!(held.status, HeadStatus::AwaitingApproval);
    assert_eq!(held.generation, generation);
    let second = held.approval.expect("B held").decision_id;
    assert_ne!(second, first);

    let result = h
        .store
        .commit(shared::store::Transaction {
            writes: late.writes,
            completion: None,
        })
        .await;
    assert!(
        matches!(result, Err(shared::store::StoreError::ConditionFailed(_))),
        "{result:?}"
    );
    let after = head(&h).await;
    assert_eq!(after.status, HeadStatus::AwaitingApproval);
    assert_eq!(
        after.approval.map(|a| a.decision_id),
        Some(second),
        "B still waits for its own verdict"
    );
}
