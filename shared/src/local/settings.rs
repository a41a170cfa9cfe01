//! `evolve settings`: a system's per-system settings read and changed after `init`, audited
//! like every operator action.

use chrono::Duration;

use crate::domain::{EventType, EvolutionEvent, SystemId, derive_id};
use crate::stages::Deps;
use crate::store::{StoreError, SystemSettings, Transaction, Write};

/// The settings an operator changes; `None` keeps the current value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SettingsChange {
    pub samples_required: Option<u32>,
    pub evaluation_window_seconds: Option<u32>,
    pub cycle_interval_seconds: Option<u32>,
    pub confidence_percent: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("unknown system {0}")]
    UnknownSystem(SystemId),
    #[error("invalid setting: {0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Least cycle interval: below the tick's minute, two cycles would be due in one tick.
pub const MIN_CYCLE_INTERVAL_SECONDS: u32 = 60;

impl SettingsChange {
    /// Checks the values a system can run with, before anything is written.
    pub fn validate(&self) -> Result<(), SettingsError> {
        if self.samples_required == Some(0) {
            return Err(SettingsError::Invalid("samples must be at least 1".into()));
        }
        let range = crate::stages::judge::CONFIDENCE_PERCENT_RANGE;
        if self.confidence_percent.is_some_and(|c| !range.contains(&c)) {
            return Err(SettingsError::Invalid(format!(
                "the confidence must be {} to {} percent",
                range.start(),
                range.end()
            )));
        }
        if self.evaluation_window_seconds == Some(0) {
            return Err(SettingsError::Invalid(
                "the evaluation window must be at least 1 s".into(),
            ));
        }
        if self
            .cycle_interval_seconds
            .is_some_and(|s| s < MIN_CYCLE_INTERVAL_SECONDS)
        {
            return Err(SettingsError::Invalid(format!(
                "the cycle interval must be at least {MIN_CYCLE_INTERVAL_SECONDS} s (the tick \
                 runs once a minute)"
            )));
        }
        Ok(())
    }

    fn apply(&self, settings: &mut SystemSettings) -> Vec<String> {
        let mut changed = Vec::new();
        let mut set = |name: &str, field: &mut u32, value: Option<u32>| {
            if let Some(v) = value.filter(|v| v != field) {
                changed.push(format!("{name} {field} -> {v}"));
                *field = v;
            }
        };
        set(
            "samples",
            &mut settings.samples_required,
            self.samples_required,
        );
        set(
            "window_s",
            &mut settings.evaluation_window_seconds,
            self.evaluation_window_seconds,
        );
        set(
            "interval_s",
            &mut settings.cycle_interval_seconds,
            self.cycle_interval_seconds,
        );
        set(
            "confidence_pct",
            &mut settings.confidence_percent,
            self.confidence_percent,
        );
        changed
    }
}

/// Changes a system's settings under the registry entry's version lock, with a
/// `SettingsChanged` event that says who changed what. A new interval also moves the next
/// scheduled cycle to at most one new interval from now, so a shorter interval takes effect
/// at once; a window already open keeps its deadline. Returns the settings now in force.
pub async fn change_settings(
    deps: &Deps,
    system_id: &SystemId,
    change: SettingsChange,
    changed_by: &str,
) -> Result<SystemSettings, SettingsError> {
    change.validate()?;
    let mut system = deps
        .store
        .get_system(system_id)
        .await?
        .ok_or_else(|| SettingsError::UnknownSystem(system_id.clone()))?;
    let changed = change.apply(&mut system.settings);
    if changed.is_empty() {
        return Ok(system.settings);
    }
    let now = deps.clock.now();
    if change.cycle_interval_seconds.is_some() {
        let next = now + Duration::seconds(i64::from(system.settings.cycle_interval_seconds));
        system.next_cycle_at = system.next_cycle_at.min(next);
    }
    let generation = deps
        .store
        .get_head(system_id)
        .await?
        .map_or(0, |h| h.generation);
    let detail = format!("settings changed by {changed_by}: {}", changed.join(", "));
    let event = EvolutionEvent {
        trace_id: None,
        message_id: None,
        id: derive_id(
            "evt",
            &[system_id.as_str(), "settings", &now.to_rfc3339(), &detail],
        ),
        timestamp: now,
        event_type: EventType::SettingsChanged,
        generation,
        fitness_delta: None,
        mutation_id: None,
        bedrock_analysis: None,
        system_context: None,
        storage_metadata: None,
        system_id: Some(system_id.clone()),
        detail: Some(detail),
    };
    let settings = system.settings.clone();
    deps.store
        .commit(Transaction {
            writes: vec![Write::PutSystem { system }, Write::PutEvent { event }],
            completion: None,
        })
        .await?;
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::clock::Clock;
    use crate::domain::DnaFile;
    use crate::engine::LocalEngine;
    use crate::local::{LocalHome, init_system};
    use crate::stages::PipelineConfig;
    use crate::store::memory::MemoryStore;

    const DNA: &str = r#"{"system_id": "svc", "genes": {
      "x": {"type": "int", "value": 5, "min": 0, "max": 10, "risk_weight": 0.1}}}"#;

    async fn home() -> (LocalHome, SystemId) {
        let home = LocalHome::new(
            Arc::new(MemoryStore::new()),
            Arc::new(LocalEngine::new(0)),
            chrono::DateTime::<chrono::Utc>::UNIX_EPOCH,
            PipelineConfig::default(),
        );
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
        .expect("init");
        (home, id)
    }

    #[tokio::test]
    async fn a_change_is_stored_audited_and_a_shorter_interval_takes_effect_at_once() {
        let (home, id) = home().await;
        let store = &home.deps.store;
        let mut before = store.get_system(&id).await.expect("read").expect("exists");
        // Pretend the next cycle is far off, as after a cycle under the old interval.
        before.next_cycle_at = home.clock.now() + Duration::hours(5);
        store
            .commit(Transaction {
                writes: vec![Write::PutSystem { system: before }],
                completion: None,
            })
            .await
            .expect("reschedule");
        let change = SettingsChange {
            cycle_interval_seconds: Some(120),
            samples_required: Some(3),
            confidence_percent: Some(90),
            ..SettingsChange::default()
        };
        let now = change_settings(&home.deps, &id, change, "alice")
            .await
            .expect("changed");
        assert_eq!(now.cycle_interval_seconds, 120);
        assert_eq!(now.samples_required, 3);
        assert_eq!(now.evaluation_window_seconds, 600, "unchanged");
        let after = store.get_system(&id).await.expect("read").expect("exists");
        assert_eq!(after.settings, now);
        assert_eq!(
            after.next_cycle_at,
            home.clock.now() + Duration::seconds(120)
        );
        let events = store.list_events(&id, None, 10).await.expect("events");
        let audit = events
            .iter()
            .find(|e| e.event_type == EventType::SettingsChanged)
            .expect("audited");
        let detail = audit.detail.as_deref().unwrap_or_default();
        assert!(detail.contains("by alice"), "{detail}");
        assert!(detail.contains("interval_s 900 -> 120"), "{detail}");
        assert!(detail.contains("samples 1 -> 3"), "{detail}");
        assert!(detail.contains("confidence_pct 80 -> 90"), "{detail}");
        assert_eq!(now.confidence_percent, 90);
    }

    #[tokio::test]
    async fn no_change_writes_nothing_and_bad_values_are_refused_before_any_write() {
        let (home, id) = home().await;
        let store = &home.deps.store;
        let same = SettingsChange {
            cycle_interval_seconds: Some(900),
            ..SettingsChange::default()
        };
        change_settings(&home.deps, &id, same, "alice")
            .await
            .expect("nothing to change");
        for bad in [
            SettingsChange {
                cycle_interval_seconds: Some(30),
                ..SettingsChange::default()
            },
            SettingsChange {
                samples_required: Some(0),
                ..SettingsChange::default()
            },
            SettingsChange {
                confidence_percent: Some(100),
                ..SettingsChange::default()
            },
            SettingsChange {
                confidence_percent: Some(50),
                ..SettingsChange::default()
            },
        ] {
            let err = change_settings(&home.deps, &id, bad, "alice")
                .await
                .expect_err("refused");
            assert!(matches!(err, SettingsError::Invalid(_)), "{err}");
        }
        let events = store.list_events(&id, None, 10).await.expect("events");
        assert!(
            events
                .iter()
                .all(|e| e.event_type != EventType::SettingsChanged),
            "{events:?}"
        );
        let unknown = SystemId::parse("nope").expect("id");
        assert!(matches!(
            change_settings(&home.deps, &unknown, same, "alice").await,
            Err(SettingsError::UnknownSystem(_))
        ));
    }
}
