//! Per-model health in control state: circuit breakers, throttle windows and the performance
//! record the router reads. Every change is an atomic update of the stored record, so calls in
//! different functions counting the same model's failures add up instead of overwriting each
//! other.

use super::{BedrockModel, PerformanceSnapshot, Role, healing, warn};
use crate::store::CircuitState;

fn closed(model_id: &str) -> CircuitState {
    CircuitState {
        model_id: model_id.to_owned(),
        consecutive_failures: 0,
        open_until: None,
        throttled_until: None,
    }
}

impl BedrockModel {
    pub(super) async fn open_circuit_on_failure(&self, model_id: &str) {
        let now = self.ports.clock.now();
        let retry = &self.settings.retry;
        let opened = std::sync::atomic::AtomicBool::new(false);
        let updated = self
            .ports
            .control
            .update_circuit(model_id, &|state| {
                let next = healing::after_failure(state, model_id, now, retry);
                opened.store(
                    next.open_until.is_some()
                        && next.consecutive_failures == retry.circuit_threshold,
                    std::sync::atomic::Ordering::Relaxed,
                );
                next
            })
            .await;
        match updated {
            Ok(()) if opened.load(std::sync::atomic::Ordering::Relaxed) => {
                warn!(model = model_id, "circuit opened");
            }
            Ok(()) => {}
            Err(e) => warn!(error = %e, "could not record a circuit failure"),
        }
    }

    /// Records that Bedrock throttled `model_id`: low-priority calls skip it for the window.
    pub(super) async fn open_throttle_window(&self, model_id: &str) {
        let window = chrono::Duration::from_std(self.settings.retry.throttle_window)
            .unwrap_or(chrono::Duration::seconds(30));
        let until = self.ports.clock.now() + window;
        let updated = self
            .ports
            .control
            .update_circuit(model_id, &|state| CircuitState {
                throttled_until: Some(until),
                ..state.unwrap_or_else(|| closed(model_id))
            })
            .await;
        if let Err(e) = updated {
            warn!(error = %e, "could not record a throttle window");
        }
    }

    pub(super) async fn close_circuit(&self, model_id: &str) {
        let control = &self.ports.control;
        // Most answers find the breaker closed already: read first, write only to change it.
        let Ok(Some(state)) = control.circuit(model_id).await else {
            return;
        };
        if state == closed(model_id) {
            return;
        }
        // An answer means capacity again: the throttle window closes too.
        if let Err(e) = control
            .update_circuit(model_id, &|_| closed(model_id))
            .await
        {
            warn!(error = %e, "could not close a circuit");
        }
    }

    pub(super) async fn record_performance(&self, role: Role, calls: &[(String, bool, u64, bool)]) {
        if calls.is_empty() {
            return;
        }
        let updated = self
            .ports
            .control
            .update_performance(&|perf: &mut PerformanceSnapshot| {
                for (model, success, latency, parse_failed) in calls {
                    perf.record_call(model, role, *success, *latency, *parse_failed);
                }
            })
            .await;
        if let Err(e) = updated {
            warn!(error = %e, "could not record model performance");
        }
    }
}
