//! `evolve init`: a new system's registry entry, generation 0 and the head that measures it,
//! and generation 0 published to the running system like every later generation.

use chrono::Duration;

use crate::bus::Bus;
use crate::domain::{
    Body, Envelope, Evaluation, EventType, EvolutionEvent, GeneSchema, Generation, Genes, Head,
    HeadStatus, Origin, Outgoing, SystemId, derive_id, sha256_hex,
};
use crate::pipeline::{self, Handled, PipelineError};
use crate::stages::{Deps, StageOutput};
use crate::store::{StoreError, SystemRecord, SystemSettings, Write};

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("system {0} already exists")]
    Exists(SystemId),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The system could not be created, or it was created and its generation 0 could not be
    /// published yet (running `init` again with the same file publishes it).
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
}

/// Creates a system: registry entry, generation 0 and a head that measures it as the baseline,
/// and publishes generation 0 as a `DnaUpdated` on the events topic, so a running system learns
/// the genes and checksum to measure from the topic it already follows.
///
/// It runs as one exactly-once action keyed by the system id: the `DnaUpdated` is kept in the
/// outbox of the creating transaction, and running `init` again with the same DNA re-sends it if
/// it never went out (and still reports that the system exists).
pub async fn init_system(
    deps: &Deps,
    bus: &dyn Bus,
    system_id: &SystemId,
    schema: GeneSchema,
    genes: Genes,
    settings: SystemSettings,
) -> Result<(), InitError> {
    let key = format!("init:{system_id}");
    let hash = sha256_hex(&serde_json::to_vec(&(&schema, &genes, &settings)).unwrap_or_default());
    let existed = deps.store.get_system(system_id).await?.is_some();
    let created = pipeline::run_once(deps, bus, &key, &hash, || {
        let output = creation(deps, system_id, &schema, &genes, &settings, &key);
        async move { Ok(output) }
    })
    .await;
    match created {
        Ok(Handled::Processed { .. }) => Ok(()),
        Ok(Handled::Duplicate { .. }) => Err(InitError::Exists(system_id.clone())),
        // Created before (from another file, or before `init` kept an outbox): it exists.
        Err(_) if existed => Err(InitError::Exists(system_id.clone())),
        // Not created, or created and not yet published: the error says which.
        Err(e) => Err(e.into()),
    }
}

/// The writes that create the system, and generation 0's `DnaUpdated`.
fn creation(
    deps: &Deps,
    system_id: &SystemId,
    schema: &GeneSchema,
    genes: &Genes,
    settings: &SystemSettings,
    key: &str,
) -> StageOutput {
    let (schema, genes, settings) = (schema.clone(), genes.clone(), settings.clone());
    let now = deps.clock.now();
    let generation = Generation::new(system_id.clone(), 0, None, genes, Origin::Initial, now);
    let deadline = now + Duration::seconds(i64::from(settings.evaluation_window_seconds));
    let head = Head {
        system_id: system_id.clone(),
        generation: 0,
        status: HeadStatus::Evaluating,
        stable_generation: 0,
        stable_fitness: None,
        evaluation: Some(Evaluation {
            generation: 0,
            parent: None,
            baseline_fitness: None,
            started_at: now,
            deadline,
            samples_required: settings.samples_required,
            plan_step: None,
            predicted_impact: 0.0,
            samples_seen: 0,
            extended: false,
            canary: None,
        }),
        rollback_streak: 0,
        updated_at: now,
        approval: None,
    };
    let system = SystemRecord {
        system_id: system_id.clone(),
        schema,
        settings,
        created_at: now,
        next_cycle_at: now,
        evaluation_deadline: Some(deadline),
        cost_mode: crate::domain::BudgetMode::Normal,
        approval_expires_at: None,
        budget_alerts: Vec::new(),
        version: 0,
    };
    let event = EvolutionEvent {
        trace_id: None,
        message_id: None,
        id: derive_id("evt", &[system_id.as_str(), "created"]),
        timestamp: now,
        event_type: EventType::SystemCreated,
        generation: 0,
        fitness_delta: None,
        mutation_id: None,
        bedrock_analysis: None,
        system_context: None,
        storage_metadata: None,
        system_id: Some(system_id.clone()),
        detail: Some(format!("checksum {}", generation.checksum)),
    };
    let published = Outgoing::new(Envelope {
        id: derive_id("msg", &[key, "dna"]),
        causation_id: key.to_owned(),
        system_id: system_id.clone(),
        base_generation: 0,
        sent_at: now,
        traceparent: None,
        body: Body::DnaUpdated {
            generation: 0,
            genes: serde_json::to_value(&generation.genes).unwrap_or_default(),
            checksum: generation.checksum.clone(),
            canary: None,
        },
    });
    StageOutput {
        writes: vec![
            Write::CreateSystem {
                system,
                head,
                generation,
            },
            Write::PutEvent { event },
        ],
        messages: vec![published],
        summary: format!("created {system_id} at generation 0"),
        ..StageOutput::default()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::clock::Clock;
    use crate::domain::{Destination, DnaFile, Topic, checksum};
    use crate::engine::LocalEngine;
    use crate::local::LocalHome;
    use crate::stages::PipelineConfig;
    use crate::store::memory::MemoryStore;

    const DNA: &str = r#"{"system_id": "svc", "genes": {
      "x": {"type": "int", "value": 5, "min": 0, "max": 10, "risk_weight": 0.1}}}"#;

    fn home() -> LocalHome {
        LocalHome::new(
            Arc::new(MemoryStore::new()),
            Arc::new(LocalEngine::new(0)),
            chrono::DateTime::<chrono::Utc>::UNIX_EPOCH,
            PipelineConfig::default(),
        )
    }

    async fn init(home: &LocalHome) -> Result<(), InitError> {
        let (id, schema, genes) = DnaFile::parse(DNA).expect("dna");
        init_system(
            &home.deps,
            home.bus.as_ref(),
            &id,
            schema,
            genes,
            SystemSettings::default(),
        )
        .await
    }

    /// Every `DnaUpdated` the bus holds, as (generation, checksum).
    fn published(home: &LocalHome) -> Vec<(u64, String)> {
        let far = home.clock.now() + Duration::days(1);
        std::iter::from_fn(|| home.bus.pop_due(far))
            .filter(|d| d.outgoing.destination == Destination::Topic(Topic::EvolutionEvents))
            .filter_map(|d| match d.outgoing.envelope.body {
                Body::DnaUpdated {
                    generation,
                    checksum,
                    ..
                } => Some((generation, checksum)),
                _ => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn generation_0_is_published_like_every_generation() {
        let home = home();
        init(&home).await.expect("created");
        let (id, _, genes) = DnaFile::parse(DNA).expect("dna");
        let stored = home
            .deps
            .store
            .get_generation(&id, 0)
            .await
            .expect("read")
            .expect("generation 0");
        assert_eq!(stored.checksum, checksum(&genes));
        assert_eq!(published(&home), vec![(0, stored.checksum)]);
        // A second init is refused and publishes nothing again.
        assert!(matches!(init(&home).await, Err(InitError::Exists(_))));
        assert!(published(&home).is_empty());
    }

    #[tokio::test]
    async fn a_refused_publication_is_sent_by_the_next_init_not_lost() {
        let home = home();
        home.bus.refuse_next_publishes(1);
        let first = init(&home).await;
        assert!(matches!(first, Err(InitError::Pipeline(_))), "{first:?}");
        assert!(published(&home).is_empty());
        let (id, _, _) = DnaFile::parse(DNA).expect("dna");
        assert!(
            home.deps
                .store
                .get_system(&id)
                .await
                .expect("read")
                .is_some(),
            "the system was created"
        );
        assert!(matches!(init(&home).await, Err(InitError::Exists(_))));
        assert_eq!(published(&home).len(), 1, "sent from the outbox");
    }
}
