//! A process killed between reserving a Bedrock call's cost and settling it: the hold it leaves
//! is reclaimed by the sweep once it expires, so the budget is whole again, and the ledger still
//! holds exactly the calls that settled.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use shared::cost::{LedgerScope, PeriodKey};
use shared::domain::BudgetPeriod;
use shared::engine::LocalEngine;
use shared::lambda::handle_sweep;
use shared::local::LocalHome;
use shared::stages::PipelineConfig;
use shared::store::EvolutionStore;
use shared::store::sqlite::SqliteStore;
use shared::store::{CostLedger, RESERVATION_HOLD};
use tests::bedrock_stub::StubServer;

use crate::bin;

/// Reserved and spent in the total scope of the day and the month of `at`.
async fn total(store: &SqliteStore, at: DateTime<Utc>) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for period in [BudgetPeriod::Day, BudgetPeriod::Month] {
        let t = store
            .totals(PeriodKey::of(period, at), &LedgerScope::Total)
            .await
            .expect("totals");
        out.push((t.reserved_nano, t.spent_nano));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_killed_mid_flight_leaves_a_hold_the_sweep_reclaims_once_it_expires() {
    let stub = StubServer::start().await;
    // Answers arrive only after the process is gone.
    stub.delay_defaults(Duration::from_secs(120));
    let dir = tempfile::tempdir().expect("dir");
    let state = dir.path().join("state");
    let mut evolve = Command::new(bin("evolve"))
        .arg("--state")
        .arg(&state)
        .args(["demo", "--llm", "bedrock", "--generations", "3"])
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", stub.url())
        .env_remove("AWS_PROFILE")
        .env_remove("EVOLVE_SYSTEM")
        .env_remove("EVOLVE_LLM")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("evolve starts");
    let waited = std::time::Instant::now();
    while stub.request_count() == 0 {
        assert!(
            waited.elapsed() < Duration::from_secs(60),
            "no Bedrock request within a minute"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // SIGKILL: no destructor, no settle.
    evolve.kill().expect("kill");
    evolve.wait().expect("reaped");

    let store = SqliteStore::open(&state).expect("the state survives");
    let far = Utc::now() + chrono::Duration::days(3_650);
    let held = store.holds(far, 100).await.expect("holds");
    assert_eq!(held.len(), 1, "{held:?}");
    let hold = held[0].clone();
    assert_eq!(hold.expires_at, hold.reserved_at + RESERVATION_HOLD);
    let before = total(&store, hold.reserved_at).await;
    assert!(
        before
            .iter()
            .all(|(reserved, _)| *reserved >= hold.amount_nano)
    );

    let store = Arc::new(store);
    // The sweep of the minute before expiry (sweeps are per minute: one id a minute) leaves the
    // call alone: it may still be running.
    let early = hold.expires_at - chrono::Duration::seconds(60);
    let home = LocalHome::new(
        store.clone(),
        Arc::new(LocalEngine::new(1)),
        early,
        PipelineConfig::default(),
    );
    handle_sweep(&home.deps, home.bus.as_ref(), early)
        .await
        .expect("sweep");
    assert_eq!(store.holds(far, 100).await.expect("holds"), held);

    // At expiry the sweep reclaims it and says so.
    let home = LocalHome::new(
        store.clone(),
        Arc::new(LocalEngine::new(1)),
        hold.expires_at,
        PipelineConfig::default(),
    );
    handle_sweep(&home.deps, home.bus.as_ref(), hold.expires_at)
        .await
        .expect("sweep");
    assert!(store.holds(far, 100).await.expect("holds").is_empty());
    let after = total(&store, hold.reserved_at).await;
    for ((reserved_before, spent_before), (reserved_after, spent_after)) in
        before.iter().zip(&after)
    {
        assert_eq!(*reserved_after, reserved_before - hold.amount_nano);
        assert_eq!(spent_after, spent_before);
    }
    assert_eq!(
        after.iter().map(|(reserved, _)| *reserved).max(),
        Some(0),
        "nothing else was in flight"
    );
    // The ledger is the settled calls, to the nano-USD.
    let entries = store.entries(None).await.expect("entries");
    let settled: u64 = entries.iter().map(|e| e.cost_nano).sum();
    assert_eq!(after[1].1, settled);
    assert!(entries.iter().all(|e| e.call_id != hold.call_id));
    let reclaims = store.reclaims(None).await.expect("reclaims");
    assert_eq!(reclaims.len(), 1);
    assert_eq!(reclaims[0].hold, hold);
    let alerts = store.list_alerts(None, 100).await.expect("alerts");
    let alert = alerts
        .iter()
        .find(|a| a.kind == "reservations_reclaimed")
        .expect("the reclaim is alerted");
    assert!(
        alert.message.contains(hold.system_id.as_str()),
        "{}",
        alert.message
    );
}
