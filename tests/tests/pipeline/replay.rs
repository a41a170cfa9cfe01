//! What-if replay through the real stages on the in-memory store (docs/architecture.md,
//! "What-if replay"): a replay under the recorded settings gives back every recorded verdict,
//! deferrals counted as the live run counted them.

use std::sync::Arc;

use chrono::Duration;
use shared::clock::SimClock;
use shared::domain::{DecidedBy, DecisionRecord, Recommendation};
use shared::local::{PendingPolicy, RunOptions, Silent};
use shared::stages::replay::{self, Window};
use shared::stages::{Deps, PipelineConfig};
use shared::store::EvolutionStore;
use shared::store::memory::MemoryStore;

use super::helpers::*;

#[tokio::test]
async fn a_replay_under_the_recorded_settings_gives_back_every_verdict_deferrals_included() {
    // Every proposal goes to the engine, which defers: three deferrals, then policy rejects.
    let config = PipelineConfig {
        auto_approve_risk: 0.0,
        ..PipelineConfig::default()
    };
    let llm = Scripted::with(vec![
        strategy(vec![step("a", "x", 60)]),
        strategy(vec![step("b", "x", 55)]),
    ]);
    *llm.decide_with.lock().expect("lock") = Some(Recommendation::Defer);
    let h = harness(llm, config.clone()).await;
    let opts = RunOptions {
        generations: 1,
        max_idle: Duration::hours(3),
        ..RunOptions::default()
    };
    let recorded = run_and_record(&h, &opts).await;
    let verdicts: Vec<Recommendation> = recorded.iter().map(|d| d.decision).collect();
    assert!(
        verdicts.contains(&Recommendation::Defer) && verdicts.contains(&Recommendation::Reject),
        "{verdicts:?}"
    );

    let (deps, scratch, clock) = replay_deps(&h, config);
    let before = format!(
        "{:?}",
        h.store.list_decisions(&system_id(), None, 100).await
    );
    let report = replay::replay(&deps, &(scratch as _), &clock, &Window::default(), "local")
        .await
        .expect("replay");
    assert_eq!(report.decisions.len(), recorded.len());
    for pair in &report.decisions {
        assert_eq!(pair.recorded.decision, pair.replayed.decision, "{pair:?}");
        assert_eq!(pair.recorded.reasoning, pair.replayed.reasoning, "{pair:?}");
    }
    assert!(
        report
            .decisions
            .iter()
            .any(|d| d.replayed.reasoning.starts_with("deferred 3 times")),
        "the fourth ask is refused in the replay as it was live"
    );
    assert_eq!(report.agreement.agreed, report.agreement.compared);
    let after = format!(
        "{:?}",
        h.store.list_decisions(&system_id(), None, 100).await
    );
    assert_eq!(before, after, "the replay wrote to the recorded store");
}

/// Runs `h`'s system with fitness rising with `x`; returns the decisions it recorded.
async fn run_and_record(h: &Harness, opts: &RunOptions) -> Vec<DecisionRecord> {
    h.home
        .runner(&rises_with_x())
        .run(&system_id(), opts, &Silent)
        .await
        .expect("run");
    h.store
        .list_decisions(&system_id(), None, 100)
        .await
        .expect("decisions")
}

/// The replay's own deps over `h`'s recorded store.
fn replay_deps(h: &Harness, config: PipelineConfig) -> (Deps, Arc<MemoryStore>, Arc<SimClock>) {
    let scratch = Arc::new(MemoryStore::new());
    let clock = Arc::new(SimClock::new(start()));
    let deps = Deps {
        store: h.store.clone(),
        control: scratch.clone(),
        ledger: scratch.clone(),
        llm: h.llm.clone(),
        clock: clock.clone(),
        money_clock: clock.clone(),
        config,
    };
    (deps, scratch, clock)
}

#[tokio::test]
async fn operators_verdicts_are_skipped_and_a_gate_left_out_flips_what_it_held() {
    // Every approval is held, and an operator approves each.
    let gated = PipelineConfig {
        approval_threshold: Some(0.0),
        ..permissive()
    };
    let llm = Scripted::with(vec![strategy(vec![step("a", "x", 60), step("b", "x", 70)])]);
    let h = harness(llm, gated.clone()).await;
    let opts = RunOptions {
        generations: 2,
        pending: PendingPolicy::ApproveAll,
        operator: "local user tester".into(),
        max_idle: Duration::hours(6),
        ..RunOptions::default()
    };
    let recorded = run_and_record(&h, &opts).await;
    let held = recorded
        .iter()
        .filter(|d| d.decision == Recommendation::PendingApproval)
        .count();
    let by_operator = recorded
        .iter()
        .filter(|d| d.decided_by == Some(DecidedBy::Operator))
        .count();
    assert!(held >= 2 && by_operator >= 2, "{recorded:?}");

    // Under the same gate: every held decision is held again; the operators' are skipped.
    let (deps, scratch, clock) = replay_deps(&h, gated);
    let same = replay::replay(&deps, &(scratch as _), &clock, &Window::default(), "local")
        .await
        .expect("replay");
    assert_eq!(same.decisions.len(), held);
    assert_eq!(same.agreement.agreed, same.agreement.compared);
    assert_eq!(same.skipped.len(), by_operator, "{:?}", same.skipped);
    assert!(same.skipped.iter().all(|s| s.reason.contains("operator")));

    // Without the gate, each held decision would have been an approval.
    let (deps, scratch, clock) = replay_deps(&h, permissive());
    let open = replay::replay(&deps, &(scratch as _), &clock, &Window::default(), "local")
        .await
        .expect("replay");
    assert_eq!(open.flips().count(), held);
    for d in open.flips() {
        assert_eq!(
            (d.recorded.decision, d.replayed.decision),
            (Recommendation::PendingApproval, Recommendation::Approve)
        );
    }
}
