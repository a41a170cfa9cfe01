//! The reconciliation rule through the sweep: an in-memory bill, the memory store, and the
//! sweep's writes committed as the pipeline would.

use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};

use super::super::sweep;
use crate::clock::{Clock, SimClock};
use crate::cost::billing::{BillingError, DailyBill, FixedBilling};
use crate::cost::reconcile::{Outcome, ReconcileSettings, Reconciliation};
use crate::domain::{Body, SystemId};
use crate::engine::LocalEngine;
use crate::lambda::sweep_envelope;
use crate::stages::{Deps, PipelineConfig, StageOutput};
use crate::store::memory::MemoryStore;
use crate::store::{
    CostLedger, EvolutionStore, Reservation, Settlement, StoreError, Transaction, Usage, Write,
};

const HAIKU: &str = "anthropic.claude-3-haiku-20240307-v1:0";
const SONNET_US: &str = "us.anthropic.claude-sonnet-4-5-20250929-v1:0";
const SONNET: &str = "anthropic.claude-sonnet-4-5-20250929-v1:0";

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .expect("time")
        .with_timezone(&Utc)
}

fn day(d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 12, d).expect("day")
}

struct World {
    store: Arc<MemoryStore>,
    clock: Arc<SimClock>,
    bill: FixedBilling,
    settings: Option<ReconcileSettings>,
}

impl World {
    fn new(now: &str) -> Self {
        Self {
            store: Arc::new(MemoryStore::new()),
            clock: Arc::new(SimClock::new(at(now))),
            bill: FixedBilling::new(),
            settings: Some(ReconcileSettings::default()),
        }
    }

    fn deps(&self) -> Deps {
        let mut config = PipelineConfig::default();
        config.budgets.reconcile = self.settings;
        Deps {
            store: self.store.clone(),
            control: self.store.clone(),
            ledger: self.store.clone(),
            llm: Arc::new(LocalEngine::new(0)),
            clock: self.clock.clone(),
            money_clock: self.clock.clone(),
            config,
        }
    }

    /// A settled call of `nano` on `model` at `when`.
    async fn spend(&self, call: &str, model: &str, nano: u64, when: &str) {
        let system_id = SystemId::parse("svc").expect("id");
        let reservation = Reservation {
            call_id: call.into(),
            system_id: system_id.clone(),
            model_id: model.into(),
            amount_nano: nano,
            at: at(when),
            limits: Vec::new(),
        };
        self.store.reserve(&reservation).await.expect("reserve");
        let settlement = Settlement {
            call_id: call.into(),
            system_id,
            model_id: model.into(),
            reserved_nano: nano,
            reserved_at: at(when),
            actual_nano: nano,
            usage: Usage::default(),
            at: at(when),
        };
        self.store.settle(&settlement).await.expect("settle");
    }

    /// A dollar of Haiku spent on 2026-12-04, billed `billed` nano-USD (none when `None`).
    async fn haiku_day(now: &str, billed: Option<i64>) -> Self {
        let w = Self::new(now);
        w.spend("c1", HAIKU, 1_000_000_000, "2026-12-04T10:00:00Z")
            .await;
        if let Some(billed) = billed {
            w.set_bill(4, &[(HAIKU, billed)]);
        }
        w
    }

    /// The sweep of the clock's minute, with the in-memory bill.
    async fn sweep(&self) -> StageOutput {
        let env = sweep_envelope(self.clock.now());
        sweep(&self.deps(), &env, Some(&self.bill))
            .await
            .expect("sweep")
    }

    async fn commit(&self, out: &StageOutput) -> Result<(), StoreError> {
        self.store
            .commit(Transaction {
                writes: out.writes.clone(),
                completion: None,
            })
            .await
    }

    async fn recorded(&self) -> Vec<Reconciliation> {
        self.store.reconciliations(None).await.expect("records")
    }

    fn set_bill(&self, d: u32, models: &[(&str, i64)]) {
        self.bill.set(DailyBill {
            day: day(d),
            by_model: models.iter().map(|(m, n)| ((*m).to_owned(), *n)).collect(),
            other_nano: 0,
        });
    }
}

fn reconciliations(out: &StageOutput) -> Vec<&Reconciliation> {
    out.writes
        .iter()
        .filter_map(|w| match w {
            Write::PutReconciliation { record } => Some(record),
            _ => None,
        })
        .collect()
}

fn raised(out: &StageOutput, kind: &str) -> Vec<String> {
    out.messages
        .iter()
        .filter_map(|m| match &m.envelope.body {
            Body::AlertRaised { alert } if alert.kind == kind => Some(alert.message.clone()),
            _ => None,
        })
        .collect()
}

fn compared(record: &Reconciliation) -> &crate::cost::reconcile::Comparison {
    match &record.outcome {
        Outcome::Compared(c) => c,
        Outcome::NotYetBilled { reason } => panic!("{} not compared: {reason}", record.day),
    }
}

#[tokio::test]
async fn a_difference_under_the_threshold_is_recorded_without_an_alert() {
    let w = World::new("2026-12-05T06:00:00Z");
    w.spend("c1", HAIKU, 600_000_000, "2026-12-04T10:00:00Z")
        .await;
    w.spend("c2", SONNET_US, 400_000_000, "2026-12-04T23:59:59Z")
        .await;
    w.spend("c3", HAIKU, 999, "2026-12-05T00:00:01Z").await;
    w.set_bill(4, &[(HAIKU, 605_000_000), (SONNET, 400_000_000)]);
    let out = w.sweep().await;
    let records = reconciliations(&out);
    let days: Vec<NaiveDate> = records.iter().map(|r| r.day).collect();
    assert_eq!(days, [day(2), day(3), day(4)], "the lookback, oldest first");
    let dec4 = compared(records[2]);
    assert_eq!(
        records[2].ledger_nano, 1_000_000_000,
        "the day's spend only"
    );
    assert_eq!(dec4.billed_nano, 1_005_000_000);
    assert_eq!(dec4.difference_nano, 5_000_000);
    assert_eq!(dec4.difference_bp, Some(49));
    assert!(!dec4.exceeded);
    let sonnet = dec4.models.iter().find(|m| m.model == SONNET).expect("row");
    assert_eq!(
        sonnet.ledger_nano, 400_000_000,
        "the profile counts as its model"
    );
    assert!(raised(&out, "bill_reconciliation").is_empty());
    assert!(
        out.summary
            .contains("2026-12-04 billed $1.005000 ledger $1.000000 (+0.49%)")
    );
    assert_eq!(w.bill.requests(), 1, "one request for the whole lookback");
}

#[tokio::test]
async fn a_difference_over_the_threshold_raises_an_alert_with_the_record() {
    let w = World::haiku_day("2026-12-05T09:30:00Z", Some(1_100_000_000)).await;
    let out = w.sweep().await;
    let alerts = raised(&out, "bill_reconciliation");
    assert_eq!(alerts.len(), 1, "{out:?}");
    assert!(alerts[0].contains("2026-12-04"), "{}", alerts[0]);
    assert!(
        alerts[0].contains("+$0.100000 (+9.09%, over 2.00%)"),
        "{}",
        alerts[0]
    );
    assert!(
        out.writes
            .iter()
            .any(|w| matches!(w, Write::PutAlert { alert } if alert.kind == "bill_reconciliation"))
    );
    w.commit(&out).await.expect("commit");
    let stored = w.recorded().await;
    assert!(compared(&stored[2]).exceeded);
}

#[tokio::test]
async fn the_threshold_comes_from_the_settings() {
    let mut w = World::haiku_day("2026-12-05T09:30:00Z", Some(1_100_000_000)).await;
    w.settings = Some(ReconcileSettings {
        threshold_bp: 1_000,
        hour_utc: 9,
    });
    let out = w.sweep().await;
    assert!(
        raised(&out, "bill_reconciliation").is_empty(),
        "9.09% is under 10%"
    );
}

#[tokio::test]
async fn nothing_happens_before_the_hour_or_without_settings() {
    let w = World::new("2026-12-05T05:59:00Z");
    let out = w.sweep().await;
    assert!(reconciliations(&out).is_empty());
    let mut w = World::new("2026-12-05T12:00:00Z");
    w.settings = None;
    let out = w.sweep().await;
    assert!(reconciliations(&out).is_empty());
    assert_eq!(w.bill.requests(), 0);
}

#[tokio::test]
async fn a_day_without_billing_data_waits_for_the_next_days_run() {
    let w = World::haiku_day("2026-12-05T06:00:00Z", None).await;
    let out = w.sweep().await;
    let records = reconciliations(&out);
    assert!(
        records[1..]
            .iter()
            .all(|r| matches!(r.outcome, Outcome::NotYetBilled { .. })),
        "2026-12-03 and 2026-12-04 wait"
    );
    w.commit(&out).await.expect("commit");
    w.clock.advance(chrono::Duration::minutes(1));
    w.set_bill(4, &[(HAIKU, 1_000_000_000)]);
    assert!(
        reconciliations(&w.sweep().await).is_empty(),
        "asked today already"
    );
    assert_eq!(w.bill.requests(), 1, "no request per minute");
    w.clock.advance_to(at("2026-12-06T06:00:00Z"));
    let out = w.sweep().await;
    let days: Vec<NaiveDate> = reconciliations(&out).iter().map(|r| r.day).collect();
    assert_eq!(days, [day(3), day(4), day(5)]);
    w.commit(&out)
        .await
        .expect("a comparison replaces the day not billed yet");
    let stored = w.recorded().await;
    let dec4 = stored.iter().find(|r| r.day == day(4)).expect("4");
    assert_eq!(compared(dec4).difference_nano, 0);
}

#[tokio::test]
async fn a_day_still_unbilled_at_its_last_run_is_compared_against_nothing() {
    let w = World::new("2026-12-05T07:00:00Z");
    w.spend("c1", HAIKU, 50_000_000, "2026-12-02T10:00:00Z")
        .await;
    let out = w.sweep().await;
    let records = reconciliations(&out);
    let dec2 = compared(records[0]);
    assert!(dec2.unbilled);
    assert_eq!(dec2.difference_nano, -50_000_000);
    assert!(dec2.exceeded);
    let alerts = raised(&out, "bill_reconciliation");
    assert!(
        alerts[0].contains("still no billing data after 3 days"),
        "{alerts:?}"
    );
    assert!(matches!(records[1].outcome, Outcome::NotYetBilled { .. }));
}

#[tokio::test]
async fn a_day_is_reconciled_once_whatever_sweeps_run() {
    let w = World::haiku_day("2026-12-05T06:00:00Z", Some(2_000_000_000)).await;
    let first = w.sweep().await;
    let racing = w.sweep().await;
    w.commit(&first).await.expect("first");
    let lost = w.commit(&racing).await.expect_err("the racing sweep");
    assert!(matches!(lost, StoreError::ConditionFailed(_)), "{lost}");
    w.clock.advance(chrono::Duration::hours(3));
    let later = w.sweep().await;
    assert!(reconciliations(&later).is_empty());
    assert!(raised(&later, "bill_reconciliation").is_empty());
    assert_eq!(
        w.bill.requests(),
        2,
        "the racing pair asked; later sweeps do not"
    );
    w.clock.advance_to(at("2026-12-06T06:00:00Z"));
    let next_day = w.sweep().await;
    let days: Vec<NaiveDate> = reconciliations(&next_day).iter().map(|r| r.day).collect();
    assert_eq!(days, [day(3), day(5)], "2026-12-04 stays as compared");
    assert_eq!(w.recorded().await.len(), 3);
}

#[tokio::test]
async fn an_unreadable_bill_is_recorded_and_alerted_once_per_day() {
    let w = World::new("2026-12-05T06:00:00Z");
    w.bill.fail_with(Some(BillingError::Unavailable(
        "AccessDeniedException".into(),
    )));
    let out = w.sweep().await;
    let alerts = raised(&out, "bill_unavailable");
    assert_eq!(alerts.len(), 1);
    assert!(alerts[0].contains("AccessDeniedException"), "{}", alerts[0]);
    let records = reconciliations(&out);
    assert_eq!(records.len(), 3);
    assert!(records.iter().all(|r| matches!(
        &r.outcome,
        Outcome::NotYetBilled { reason } if reason.contains("AccessDeniedException")
    )));
    w.commit(&out).await.expect("commit");
    w.clock.advance(chrono::Duration::minutes(1));
    let again = w.sweep().await;
    assert!(raised(&again, "bill_unavailable").is_empty());
    assert_eq!(w.bill.requests(), 1);
}
