//! What-if replay through the real stages on the in-memory store (docs/architecture.md,
//! "What-if replay"): a replay under the recorded settings gives back every recorded verdict,
//! deferrals counted as the live run counted them.

use std::sync::Arc;

use chrono::Duration;
use shared::clock::SimClock;
use shared::domain::Recommendation;
use shared::local::{RunOptions, Silent};
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
    let h = harness(llm.clone(), config.clone()).await;
    let opts = RunOptions {
        generations: 1,
        max_idle: Duration::hours(3),
        ..RunOptions::default()
    };
    h.home
        .runner(&rises_with_x())
        .run(&system_id(), &opts, &Silent)
        .await
        .expect("run");
    let recorded = h
        .store
        .list_decisions(&system_id(), None, 100)
        .await
        .expect("decisions");
    let verdicts: Vec<Recommendation> = recorded.iter().map(|d| d.decision).collect();
    assert!(
        verdicts.contains(&Recommendation::Defer) && verdicts.contains(&Recommendation::Reject),
        "{verdicts:?}"
    );

    let scratch = Arc::new(MemoryStore::new());
    let clock = Arc::new(SimClock::new(start()));
    let deps = Deps {
        store: h.store.clone(),
        control: scratch.clone(),
        ledger: scratch.clone(),
        llm: llm.clone(),
        clock: clock.clone(),
        money_clock: clock.clone(),
        config,
    };
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
