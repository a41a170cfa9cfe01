//! The Performance Tracker: how each model has been doing in each role.
//!
//! The router reads a [`PerformanceSnapshot`] as one of its inputs, so the snapshot is plain data
//! (stored in control state, passed by value) rather than a live service: routing stays a pure
//! function of its inputs, and every function instance routes on the same history.
//!
//! Statistics are exponential moving averages with weight [`ALPHA`] on the newest sample: recent
//! behaviour (a model starting to throttle or to break our schema) shows within a few calls,
//! while one bad call does not erase a long good record. The first sample initialises an average
//! instead of being blended with an arbitrary starting value.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::domain::Role;

/// Weight of the newest sample in every moving average.
pub const ALPHA: f64 = 0.2;

/// The success rate assumed for a (model, role) pair with no calls yet: neither favoured nor
/// penalised against models with a record.
pub const PRIOR_SUCCESS_RATE: f64 = 0.5;

/// One model's record in one role.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelStats {
    /// Calls recorded (a count, not an average).
    pub calls: u64,
    /// Moving average of 1 for an answer we could use, 0 otherwise.
    pub success_rate: f64,
    /// Moving average of the call's latency.
    pub latency_ms: f64,
    /// Moving average of 1 when the answer failed to parse or validate, 0 otherwise.
    pub parse_failure_rate: f64,
    /// Predictions compared with outcomes so far (`prediction_error` starts with the first).
    #[serde(default)]
    pub predictions: u64,
    /// Moving average of `|predicted - actual|` impact.
    #[serde(default)]
    pub prediction_error: f64,
}

/// Every model's record, per role. `BTreeMap`s keep the serialised form and iteration order
/// stable, so equal snapshots encode to equal bytes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PerformanceSnapshot {
    #[serde(default)]
    pub models: BTreeMap<String, BTreeMap<Role, ModelStats>>,
}

fn blend(average: f64, sample: f64, first: bool) -> f64 {
    if first {
        sample
    } else {
        ALPHA * sample + (1.0 - ALPHA) * average
    }
}

fn indicator(flag: bool) -> f64 {
    if flag { 1.0 } else { 0.0 }
}

impl PerformanceSnapshot {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn stats(&self, model: &str, role: Role) -> Option<&ModelStats> {
        self.models.get(model)?.get(&role)
    }

    fn entry(&mut self, model: &str, role: Role) -> &mut ModelStats {
        self.models
            .entry(model.to_owned())
            .or_default()
            .entry(role)
            .or_default()
    }

    /// Records one finished call. `success` means the answer was used; `parse_failed` that the
    /// model answered but the answer did not parse or validate.
    pub fn record_call(
        &mut self,
        model: &str,
        role: Role,
        success: bool,
        latency_ms: u64,
        parse_failed: bool,
    ) {
        let stats = self.entry(model, role);
        let first = stats.calls == 0;
        stats.success_rate = blend(stats.success_rate, indicator(success), first);
        stats.latency_ms = blend(stats.latency_ms, latency_ms as f64, first);
        stats.parse_failure_rate = blend(stats.parse_failure_rate, indicator(parse_failed), first);
        stats.calls = stats.calls.saturating_add(1);
    }

    /// Records how far a predicted impact was from the measured one. Non-finite values are
    /// ignored: they carry no information and could not be stored as JSON.
    pub fn record_prediction(&mut self, model: &str, role: Role, predicted: f64, actual: f64) {
        let error = (predicted - actual).abs();
        if !error.is_finite() {
            return;
        }
        let stats = self.entry(model, role);
        stats.prediction_error = blend(stats.prediction_error, error, stats.predictions == 0);
        stats.predictions = stats.predictions.saturating_add(1);
    }

    /// The model's success rate in the role, in `0..=1`; [`PRIOR_SUCCESS_RATE`] without calls or
    /// when the stored value is unusable (a snapshot edited by hand).
    pub fn success_rate(&self, model: &str, role: Role) -> f64 {
        match self.stats(model, role) {
            Some(stats) if stats.calls > 0 && stats.success_rate.is_finite() => {
                stats.success_rate.clamp(0.0, 1.0)
            }
            _ => PRIOR_SUCCESS_RATE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: &str = "model-a";

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn unknown_pairs_get_the_prior() {
        let mut perf = PerformanceSnapshot::new();
        assert!(close(
            perf.success_rate(M, Role::Decide),
            PRIOR_SUCCESS_RATE
        ));
        // A prediction alone is not a call record.
        perf.record_prediction(M, Role::Decide, 1.0, 2.0);
        assert!(close(
            perf.success_rate(M, Role::Decide),
            PRIOR_SUCCESS_RATE
        ));
    }

    #[test]
    fn first_sample_initialises_then_averages_move_by_alpha() {
        let mut perf = PerformanceSnapshot::new();
        perf.record_call(M, Role::Analyze, false, 1_000, true);
        let s = *perf.stats(M, Role::Analyze).expect("stats");
        assert_eq!(s.calls, 1);
        assert!(close(s.success_rate, 0.0));
        assert!(close(s.latency_ms, 1_000.0));
        assert!(close(s.parse_failure_rate, 1.0));

        perf.record_call(M, Role::Analyze, true, 2_000, false);
        let s = *perf.stats(M, Role::Analyze).expect("stats");
        assert_eq!(s.calls, 2);
        assert!(close(s.success_rate, 0.2));
        assert!(close(s.latency_ms, 1_200.0));
        assert!(close(s.parse_failure_rate, 0.8));
        assert!(close(perf.success_rate(M, Role::Analyze), 0.2));
    }

    #[test]
    fn roles_and_models_are_tracked_apart() {
        let mut perf = PerformanceSnapshot::new();
        perf.record_call(M, Role::Analyze, true, 10, false);
        perf.record_call("model-b", Role::Analyze, false, 10, false);
        assert!(close(perf.success_rate(M, Role::Analyze), 1.0));
        assert!(close(
            perf.success_rate(M, Role::Decide),
            PRIOR_SUCCESS_RATE
        ));
        assert!(close(perf.success_rate("model-b", Role::Analyze), 0.0));
    }

    #[test]
    fn prediction_error_is_an_average_of_absolute_errors() {
        let mut perf = PerformanceSnapshot::new();
        perf.record_prediction(M, Role::Strategize, 4.8, 5.2);
        let s = *perf.stats(M, Role::Strategize).expect("stats");
        assert_eq!(s.predictions, 1);
        assert!((s.prediction_error - 0.4).abs() < 1e-9);
        perf.record_prediction(M, Role::Strategize, 3.0, 1.0);
        let s = *perf.stats(M, Role::Strategize).expect("stats");
        assert!((s.prediction_error - (0.2 * 2.0 + 0.8 * 0.4)).abs() < 1e-9);
        perf.record_prediction(M, Role::Strategize, f64::NAN, 1.0);
        perf.record_prediction(M, Role::Strategize, f64::INFINITY, 1.0);
        assert_eq!(
            perf.stats(M, Role::Strategize).expect("stats").predictions,
            2
        );
    }

    #[test]
    fn unusable_stored_rates_fall_back_to_the_prior_or_are_clamped() {
        let mut perf = PerformanceSnapshot::new();
        perf.record_call(M, Role::Resolve, true, 1, false);
        if let Some(s) = perf
            .models
            .get_mut(M)
            .and_then(|r| r.get_mut(&Role::Resolve))
        {
            s.success_rate = f64::NAN;
        }
        assert!(close(
            perf.success_rate(M, Role::Resolve),
            PRIOR_SUCCESS_RATE
        ));
        if let Some(s) = perf
            .models
            .get_mut(M)
            .and_then(|r| r.get_mut(&Role::Resolve))
        {
            s.success_rate = 7.0;
        }
        assert!(close(perf.success_rate(M, Role::Resolve), 1.0));
    }

    #[test]
    fn snapshot_serialises_roles_as_names() {
        let mut perf = PerformanceSnapshot::new();
        perf.record_call(M, Role::Decide, true, 500, false);
        let json = serde_json::to_value(&perf).expect("encode");
        assert_eq!(json["models"][M]["decide"]["calls"], 1);
        let back: PerformanceSnapshot = serde_json::from_value(json).expect("decode");
        assert_eq!(back, perf);
        let empty: PerformanceSnapshot = serde_json::from_str("{}").expect("decode empty");
        assert_eq!(empty, PerformanceSnapshot::default());
    }
}
