//! Per-model health in control state: circuit breakers, throttle windows and the performance
//! record the router reads.

use super::{BedrockModel, PerformanceSnapshot, Role, healing, warn};

impl BedrockModel {
    pub(super) async fn open_circuit_on_failure(&self, model_id: &str) {
        let control = &self.ports.control;
        let state = control.circuit(model_id).await.ok().flatten();
        let next = healing::after_failure(
            state,
            model_id,
            self.ports.clock.now(),
            &self.settings.retry,
        );
        if next.open_until.is_some()
            && next.consecutive_failures == self.settings.retry.circuit_threshold
        {
            warn!(model = model_id, "circuit opened");
        }
        if let Err(e) = control.put_circuit(&next).await {
            warn!(error = %e, "could not record a circuit failure");
        }
    }

    /// Records that Bedrock throttled `model_id`: low-priority calls skip it for the window.
    pub(super) async fn open_throttle_window(&self, model_id: &str) {
        let control = &self.ports.control;
        let window = chrono::Duration::from_std(self.settings.retry.throttle_window)
            .unwrap_or(chrono::Duration::seconds(30));
        let mut state =
            control
                .circuit(model_id)
                .await
                .ok()
                .flatten()
                .unwrap_or(crate::store::CircuitState {
                    model_id: model_id.to_owned(),
                    consecutive_failures: 0,
                    open_until: None,
                    throttled_until: None,
                });
        state.throttled_until = Some(self.ports.clock.now() + window);
        if let Err(e) = control.put_circuit(&state).await {
            warn!(error = %e, "could not record a throttle window");
        }
    }

    pub(super) async fn close_circuit(&self, model_id: &str) {
        let control = &self.ports.control;
        if let Ok(Some(state)) = control.circuit(model_id).await {
            if state.consecutive_failures > 0
                || state.open_until.is_some()
                || state.throttled_until.is_some()
            {
                // An answer means capacity again: the throttle window closes too.
                let closed = crate::store::CircuitState {
                    consecutive_failures: 0,
                    open_until: None,
                    throttled_until: None,
                    ..state
                };
                if let Err(e) = control.put_circuit(&closed).await {
                    warn!(error = %e, "could not close a circuit");
                }
            }
        }
    }

    pub(super) async fn record_performance(&self, role: Role, calls: &[(String, bool, u64, bool)]) {
        if calls.is_empty() {
            return;
        }
        let control = &self.ports.control;
        let mut perf: PerformanceSnapshot = control.performance().await.unwrap_or_default();
        for (model, success, latency, parse_failed) in calls {
            perf.record_call(model, role, *success, *latency, *parse_failed);
        }
        if let Err(e) = control.put_performance(&perf).await {
            warn!(error = %e, "could not record model performance");
        }
    }
}
