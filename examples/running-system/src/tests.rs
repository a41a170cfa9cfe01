//! The contract checked against the product's own types: messages built as the product builds
//! them, checksums compared with the product's.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use chrono::Utc;
use serde_json::{Value, json};
use shared::domain::{Body, Envelope, GeneName, GeneValue, Genes as ProductGenes, SystemId};
use tokio::sync::Notify;

use crate::dna::{Genes, checksum};
use crate::{
    FitnessQueue, FitnessReport, Handled, Inbox, Instance, InstanceConfig, Pace, Received, Refusal,
    SimulatedService, TransportError, run,
};

const SYSTEM: &str = "checkout-api";

fn product_genes(values: &[(&str, GeneValue)]) -> ProductGenes {
    values
        .iter()
        .map(|(name, value)| (GeneName::parse(*name).expect("name"), value.clone()))
        .collect()
}

fn start_genes() -> ProductGenes {
    product_genes(&[
        ("workers", GeneValue::Int(4)),
        ("batch_size", GeneValue::Int(16)),
        ("cache_mb", GeneValue::Int(64)),
        ("compression", GeneValue::Choice("none".into())),
    ])
}

/// The envelope the product publishes for `body`, as the SQS message body raw delivery makes.
fn wire(system: &str, body: Body) -> String {
    serde_json::to_string(&Envelope::caused_by(
        "cause",
        None,
        "snapshot",
        0,
        SystemId::parse(system).expect("id"),
        0,
        Utc::now(),
        body,
    ))
    .expect("JSON")
}

fn updated(generation: u64, genes: &ProductGenes) -> String {
    wire(
        SYSTEM,
        Body::DnaUpdated {
            generation,
            genes: serde_json::to_value(genes).expect("genes"),
            checksum: shared::domain::checksum(genes),
            canary: None,
        },
    )
}

fn rolled_back(generation: u64, restored_generation: u64, genes: &ProductGenes) -> String {
    rollback(generation, restored_generation, genes, false)
}

fn rollback(
    generation: u64,
    restored_generation: u64,
    genes: &ProductGenes,
    measure: bool,
) -> String {
    wire(
        SYSTEM,
        Body::DnaRolledBack {
            generation,
            restored_generation,
            genes: serde_json::to_value(genes).expect("genes"),
            checksum: shared::domain::checksum(genes),
            measure,
        },
    )
}

fn instance(memory_limit_mb: f64) -> Instance {
    Instance::new(
        InstanceConfig {
            system_id: SYSTEM.into(),
            instance_id: "host-a".into(),
            measurements_per_generation: 2,
        },
        SimulatedService {
            memory_limit_mb,
            timeout_rate: 0.0,
        },
    )
}

fn applied_generation(handled: &Handled) -> Option<u64> {
    match handled {
        Handled::Applied(applied) => Some(applied.generation),
        _ => None,
    }
}

#[test]
fn the_checksum_is_the_products_for_every_kind_of_gene_value() {
    let sets = [
        start_genes(),
        product_genes(&[
            ("timeout_s", GeneValue::Float(2.5)),
            ("ratio", GeneValue::Float(2.0)),
            ("tiny", GeneValue::Float(1e-7)),
            ("huge", GeneValue::Float(1.5e300)),
            ("negative", GeneValue::Int(-42)),
            ("big", GeneValue::Int(9_007_199_254_740_993)),
        ]),
        product_genes(&[
            ("prefetch", GeneValue::Bool(false)),
            ("region", GeneValue::Choice("eu-west-1".into())),
            (
                "label",
                GeneValue::Choice("quote \" backslash \\ é €".into()),
            ),
            ("Zeta", GeneValue::Bool(true)),
            ("alpha_2", GeneValue::Choice(String::new())),
        ]),
        ProductGenes::new(),
    ];
    for genes in sets {
        // As a subscriber sees them: the message's JSON text, parsed by its own decoder.
        let text =
            serde_json::to_string(&serde_json::to_value(&genes).expect("value")).expect("text");
        let received: Genes = serde_json::from_str(&text).expect("genes");
        assert_eq!(
            checksum(&received).expect("checksum"),
            shared::domain::checksum(&genes),
            "{text}"
        );
    }
}

#[test]
fn generation_0_applies_and_only_a_higher_generation_follows() {
    let mut instance = instance(1024.0);
    let genes = start_genes();
    assert_eq!(
        applied_generation(&instance.handle(&updated(0, &genes))),
        Some(0)
    );
    assert_eq!(
        instance.handle(&updated(0, &genes)),
        Handled::Stale {
            generation: 0,
            running: 0
        },
        "a redelivery"
    );
    assert_eq!(
        applied_generation(&instance.handle(&updated(3, &genes))),
        Some(3)
    );
    assert_eq!(
        instance.handle(&updated(2, &genes)),
        Handled::Stale {
            generation: 2,
            running: 3
        },
        "delivered late"
    );
    assert_eq!(instance.running().map(|r| r.generation), Some(3));
    let generations: Vec<u64> = instance.applied().map(|a| a.generation).collect();
    assert_eq!(generations, [0, 3]);
}

#[test]
fn a_checksum_that_does_not_match_the_genes_is_refused() {
    let mut instance = instance(1024.0);
    instance.handle(&updated(0, &start_genes()));
    let mut tampered: Value = serde_json::from_str(&updated(1, &start_genes())).expect("JSON");
    tampered["genes"]["workers"] = json!(64);
    let handled = instance.handle(&tampered.to_string());
    assert!(
        matches!(
            &handled,
            Handled::Refused(Refusal::ChecksumMismatch { generation: 1, .. })
        ),
        "{handled:?}"
    );
    assert_eq!(instance.running().map(|r| r.generation), Some(0));
    assert_eq!(
        instance.running().map(|r| r.genes["workers"].clone()),
        Some(json!(4))
    );
}

#[test]
fn messages_for_another_system_or_of_another_type_or_malformed_are_not_applied() {
    let mut instance = instance(1024.0);
    let genes = start_genes();
    let other = wire(
        "billing",
        Body::DnaUpdated {
            generation: 0,
            genes: serde_json::to_value(&genes).expect("genes"),
            checksum: shared::domain::checksum(&genes),
            canary: None,
        },
    );
    assert_eq!(
        instance.handle(&other),
        Handled::OtherSystem("billing".into())
    );
    let alert = wire(SYSTEM, Body::EvaluationDue { generation: 0 });
    assert_eq!(instance.handle(&alert), Handled::OtherType);
    assert!(matches!(
        instance.handle("{not json"),
        Handled::Refused(Refusal::Malformed(_))
    ));
    assert!(instance.running().is_none());
}

/// An operator's rollback opens a window of its own: it says `measure: true` and is measured.
/// docs/architecture.md, "Tracing": the reports echo the announcement's `traceparent`, so the
/// product handles them in the cycle's trace; a report parses as the product's envelope.
#[test]
fn reports_carry_the_announcements_trace() {
    let mut instance = instance(1024.0);
    let message = updated(0, &start_genes());
    let announced: Envelope = serde_json::from_str(&message).expect("envelope");
    instance.handle(&message);
    let report = instance.measure(1, Utc::now()).expect("a report");
    assert_eq!(report.traceparent, announced.traceparent);
    let parsed: Envelope = serde_json::from_str(&report.body()).expect("the product reads it");
    assert_eq!(parsed.trace().trace_id, announced.trace().trace_id);
}

#[test]
fn an_operators_rollback_is_measured() {
    let mut instance = instance(1024.0);
    let parent = start_genes();
    instance.handle(&updated(0, &parent));
    let Handled::Applied(applied) = instance.handle(&rollback(1, 0, &parent, true)) else {
        panic!("not applied");
    };
    assert!(applied.measured);
    assert_eq!(applied.restored, Some(0));
    assert!(instance.measure(1, Utc::now()).is_some());
}

#[test]
fn a_rollback_is_applied_but_never_measured() {
    let mut instance = instance(1024.0);
    let parent = start_genes();
    let mut child = parent.clone();
    child.insert(GeneName::parse("workers").expect("name"), GeneValue::Int(8));
    instance.handle(&updated(0, &parent));
    instance.handle(&updated(1, &child));
    assert!(instance.measure(1, Utc::now()).is_some());
    let Handled::Applied(applied) = instance.handle(&rolled_back(2, 0, &parent)) else {
        panic!("not applied");
    };
    assert_eq!(applied.restored, Some(0));
    assert!(!applied.measured);
    let running = instance.running().expect("running");
    assert_eq!(running.generation, 2);
    assert_eq!(running.checksum, shared::domain::checksum(&parent));
    assert_eq!(instance.measure(1, Utc::now()), None);
    // A late update older than the rollback changes nothing.
    assert!(matches!(
        instance.handle(&updated(1, &child)),
        Handled::Stale { .. }
    ));
}

#[test]
fn a_crash_is_reported_as_a_failure_without_a_score() {
    let mut instance = instance(100.0);
    let genes = start_genes();
    instance.handle(&updated(4, &genes));
    let report = instance.measure(1, Utc::now()).expect("report");
    assert!(report.failed());
    let body: Value = serde_json::from_str(&report.body()).expect("JSON");
    assert_eq!(body["type"], "FitnessReported");
    assert_eq!(body["system_id"], SYSTEM);
    assert_eq!(body["generation"], 4);
    assert_eq!(body["checksum"], shared::domain::checksum(&genes).as_str());
    assert!(body.get("score").is_none(), "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("out of memory")),
        "{body}"
    );
    assert_eq!(body["metrics"]["memory_mb"], 128.0);
    // The product reads it as a failed sample of that generation.
    let envelope: Envelope = serde_json::from_value(body).expect("the product's envelope");
    assert!(matches!(
        envelope.body,
        Body::FitnessReported {
            generation: 4,
            score: None,
            error: Some(_),
            ..
        }
    ));
    assert_eq!(
        report.attributes(),
        [("type", "FitnessReported"), ("system_id", SYSTEM)]
    );
}

#[test]
fn timeouts_fail_measurements_at_the_configured_rate() {
    let mut instance = Instance::new(
        InstanceConfig {
            system_id: SYSTEM.into(),
            instance_id: "host-a".into(),
            measurements_per_generation: 1,
        },
        SimulatedService {
            memory_limit_mb: 1024.0,
            timeout_rate: 0.5,
        },
    );
    instance.handle(&updated(0, &start_genes()));
    let failed = (1..=200)
        .filter_map(|n| instance.measure(n, Utc::now()))
        .filter(|r| r.error.as_deref().is_some_and(|e| e.contains("timed out")))
        .count();
    assert!((70..=130).contains(&failed), "{failed} of 200");
}

#[test]
fn a_measurement_has_one_id_and_one_result_however_often_it_is_made() {
    let mut instance = instance(1024.0);
    instance.handle(&updated(5, &start_genes()));
    let first = instance.measure(1, Utc::now()).expect("report");
    let again = instance.measure(1, first.sent_at).expect("report");
    assert_eq!(first, again);
    assert_eq!(first.id, "fitness-checkout-api-5-host-a-1");
    let second = instance.measure(2, Utc::now()).expect("report");
    assert_ne!(second.id, first.id);
    assert!(first.score.is_some_and(|s| s > 0.0));
    let mut other_host = Instance::new(
        InstanceConfig {
            instance_id: "host-b".into(),
            ..instance.config().clone()
        },
        SimulatedService::default(),
    );
    other_host.handle(&updated(5, &start_genes()));
    let theirs = other_host.measure(1, Utc::now()).expect("report");
    assert_ne!(theirs.id, first.id);
}

/// Batches handed out in order; once they are gone, `drained` is notified and receives wait.
#[derive(Default)]
struct FakeInbox {
    batches: Mutex<VecDeque<Vec<Received>>>,
    deleted: Mutex<Vec<String>>,
    drained: Notify,
}

impl Inbox for FakeInbox {
    async fn receive(&self) -> Result<Vec<Received>, TransportError> {
        let next = self.batches.lock().expect("batches").pop_front();
        if let Some(batch) = next {
            return Ok(batch);
        }
        self.drained.notify_one();
        std::future::pending().await
    }

    async fn delete(&self, receipt: &str) -> Result<(), TransportError> {
        self.deleted
            .lock()
            .expect("deleted")
            .push(receipt.to_owned());
        Ok(())
    }
}

#[derive(Default)]
struct FakeFitness {
    sent: Mutex<Vec<FitnessReport>>,
}

impl FitnessQueue for FakeFitness {
    async fn send(&self, report: &FitnessReport) -> Result<(), TransportError> {
        self.sent.lock().expect("sent").push(report.clone());
        Ok(())
    }
}

#[tokio::test]
async fn the_loop_measures_updates_skips_rollbacks_and_deletes_every_message() {
    let parent = start_genes();
    let mut child = parent.clone();
    child.insert(
        GeneName::parse("batch_size").expect("name"),
        GeneValue::Int(48),
    );
    let bodies = [
        updated(0, &parent),
        updated(1, &child),
        "garbage".to_owned(),
        updated(0, &parent),
        rolled_back(2, 0, &parent),
    ];
    let inbox = FakeInbox::default();
    inbox.batches.lock().expect("batches").extend([
        bodies[..2]
            .iter()
            .enumerate()
            .map(|(i, body)| Received {
                body: body.clone(),
                receipt: format!("r{i}"),
            })
            .collect(),
        bodies[2..]
            .iter()
            .enumerate()
            .map(|(i, body)| Received {
                body: body.clone(),
                receipt: format!("r{}", i + 2),
            })
            .collect::<Vec<_>>(),
    ]);
    let fitness = FakeFitness::default();
    let pace = Pace {
        measurement: Duration::ZERO,
        retry: Duration::ZERO,
    };
    let instance = run(
        instance(1024.0),
        &inbox,
        &fitness,
        pace,
        inbox.drained.notified(),
    )
    .await;

    let sent = fitness.sent.lock().expect("sent");
    let ids: Vec<&str> = sent.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "fitness-checkout-api-0-host-a-1",
            "fitness-checkout-api-0-host-a-2",
            "fitness-checkout-api-1-host-a-1",
            "fitness-checkout-api-1-host-a-2",
        ]
    );
    assert!(sent.iter().all(|r| !r.failed()));
    assert_eq!(sent[2].checksum, shared::domain::checksum(&child));
    assert_eq!(inbox.deleted.lock().expect("deleted").len(), bodies.len());
    let applied: Vec<(u64, Option<u64>)> = instance
        .applied()
        .map(|a| (a.generation, a.restored))
        .collect();
    assert_eq!(applied, [(0, None), (1, None), (2, Some(0))]);
}

/// A `DnaUpdated` as the product publishes it for a canary (and, without `canary`, for its
/// promotion), under an envelope caused by `cause` so each announcement is a message of its own.
fn canary_updated(
    cause: &str,
    generation: u64,
    genes: &ProductGenes,
    control: Option<(u64, &ProductGenes)>,
) -> String {
    let canary = control.map(|(control_generation, control_genes)| {
        shared::domain::CanaryRollout::new(
            0.5,
            &shared::domain::Generation::new(
                SystemId::parse(SYSTEM).expect("id"),
                control_generation,
                None,
                control_genes.clone(),
                shared::domain::Origin::Initial,
                Utc::now(),
            ),
        )
    });
    serde_json::to_string(&Envelope::caused_by(
        cause,
        None,
        "snapshot",
        0,
        SystemId::parse(SYSTEM).expect("id"),
        generation,
        Utc::now(),
        Body::DnaUpdated {
            generation,
            genes: serde_json::to_value(genes).expect("genes"),
            checksum: shared::domain::checksum(genes),
            canary,
        },
    ))
    .expect("JSON")
}

/// Twenty instances get a canary of generation 1 at a share of one half: each finds its cohort
/// by the product's own rule; canaries run and report the candidate, controls keep generation
/// 0 and report it as the control; the promotion moves every instance to the candidate, and a
/// canary measures it again under new report ids.
#[test]
fn a_canary_splits_instances_by_the_products_cohort_rule_and_its_promotion_moves_all() {
    use shared::domain::canary::{Cohort as ProductCohort, cohort_of};
    let parent = start_genes();
    let candidate = product_genes(&[
        ("workers", GeneValue::Int(8)),
        ("batch_size", GeneValue::Int(16)),
        ("cache_mb", GeneValue::Int(64)),
        ("compression", GeneValue::Choice("none".into())),
    ]);
    let (mut canaries, mut controls) = (0, 0);
    for n in 0..20 {
        let id = format!("host-{n}");
        let mut instance = Instance::new(
            InstanceConfig {
                system_id: SYSTEM.into(),
                instance_id: id.clone(),
                measurements_per_generation: 1,
            },
            SimulatedService {
                memory_limit_mb: 4096.0,
                timeout_rate: 0.0,
            },
        );
        instance.handle(&canary_updated("init", 0, &parent, None));
        let handled = instance.handle(&canary_updated(
            "approve",
            1,
            &candidate,
            Some((0, &parent)),
        ));
        let report = instance.measure(1, Utc::now()).expect("a report");
        match cohort_of(&id, 1, 0.5) {
            ProductCohort::Canary => {
                canaries += 1;
                assert_eq!(applied_generation(&handled), Some(1));
                assert_eq!(report.generation, 1);
                assert_eq!(report.cohort, Some(crate::dna::Cohort::Canary));
            }
            ProductCohort::Control => {
                controls += 1;
                assert_eq!(
                    applied_generation(&handled),
                    Some(0),
                    "the control keeps the parent"
                );
                assert_eq!(report.generation, 0);
                assert_eq!(report.checksum, shared::domain::checksum(&parent));
                assert_eq!(report.cohort, Some(crate::dna::Cohort::Control));
            }
        }
        let body: Value = serde_json::from_str(&report.body()).expect("JSON");
        assert!(body["cohort"].is_string(), "{body}");
        let first_id = report.id.clone();
        // The promotion: the same generation without a canary, in a message of its own.
        let promoted = instance.handle(&canary_updated("promote", 1, &candidate, None));
        assert_eq!(applied_generation(&promoted), Some(1), "{promoted:?}");
        let after = instance.measure(1, Utc::now()).expect("a report");
        assert_eq!((after.generation, after.cohort), (1, None));
        assert_ne!(after.id, first_id, "a new round reports under new ids");
        // A redelivery of the promotion is not a new round.
        let again = instance.handle(&canary_updated("promote", 1, &candidate, None));
        assert!(matches!(again, Handled::Stale { .. }), "{again:?}");
    }
    assert!(canaries > 3 && controls > 3, "{canaries} / {controls}");
}
