//! `evolve init`: a new system's registry entry, generation 0 and the head that measures it.

use chrono::Duration;

use crate::domain::{
    Evaluation, EventType, EvolutionEvent, GeneSchema, Generation, Genes, Head, HeadStatus, Origin,
    SystemId, derive_id,
};
use crate::stages::Deps;
use crate::store::{StoreError, SystemRecord, SystemSettings, Transaction, Write};

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("system {0} already exists")]
    Exists(SystemId),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Creates a system: registry entry, generation 0 and a head that measures it as the baseline.
pub async fn init_system(
    deps: &Deps,
    system_id: &SystemId,
    schema: GeneSchema,
    genes: Genes,
    settings: SystemSettings,
) -> Result<(), InitError> {
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
    let tx = Transaction {
        writes: vec![
            Write::CreateSystem {
                system,
                head,
                generation,
            },
            Write::PutEvent { event },
        ],
        completion: None,
    };
    match deps.store.commit(tx).await {
        Err(StoreError::ConditionFailed(_)) => Err(InitError::Exists(system_id.clone())),
        other => Ok(other?),
    }
}
