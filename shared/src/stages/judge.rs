//! Judging a candidate by significance against its parent's samples (docs/architecture.md,
//! "Judging a generation"): keep it when its reports are higher than the parent's beyond chance,
//! roll it back when lower; an inconclusive window is extended once, and a window still
//! inconclusive keeps the parent.

pub use crate::domain::judging::{Finding, Significance};
use crate::stats::{RankTest, mann_whitney};

pub use crate::domain::judging::{
    CONFIDENCE_PERCENT_RANGE, DEFAULT_CONFIDENCE, DEFAULT_CONFIDENCE_PERCENT,
};

/// Judges `candidate` against `parent` at `confidence` (0.5 to 1, exclusive); `extended` says
/// the window was extended once already. `None` when either side has no usable sample.
pub fn judge(
    candidate: &[f64],
    parent: &[f64],
    confidence: f64,
    extended: bool,
) -> Option<Significance> {
    let test: RankTest = mann_whitney(candidate, parent)?;
    let alpha = 1.0 - confidence;
    let finding = if test.p_greater <= alpha {
        Finding::Better
    } else if test.p_less <= alpha {
        Finding::Worse
    } else if extended {
        Finding::Inconclusive
    } else {
        Finding::Extend
    };
    Some(Significance {
        finding,
        p_value: test.p_greater.min(test.p_less),
        effect_size: test.effect,
        confidence,
        candidate_samples: u32::try_from(candidate.len()).unwrap_or(u32::MAX),
        parent_samples: u32::try_from(parent.len()).unwrap_or(u32::MAX),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clear_differences_decide_and_noise_extends_once_then_keeps_the_parent() {
        let parent = [10.0, 11.0, 9.5, 10.5];
        let better = judge(&[14.0, 15.0, 13.5, 14.5], &parent, 0.95, false).expect("judged");
        assert_eq!(better.finding, Finding::Better);
        assert!(
            better.p_value <= 0.05 && better.effect_size > 0.9,
            "{better:?}"
        );
        let worse = judge(&[6.0, 7.0, 5.5, 6.5], &parent, 0.95, false).expect("judged");
        assert_eq!(worse.finding, Finding::Worse);
        let noise = [10.2, 9.8, 11.1, 9.6];
        assert_eq!(
            judge(&noise, &parent, 0.95, false).map(|s| s.finding),
            Some(Finding::Extend)
        );
        assert_eq!(
            judge(&noise, &parent, 0.95, true).map(|s| s.finding),
            Some(Finding::Inconclusive)
        );
        assert!(judge(&[], &parent, 0.95, false).is_none());
    }

    #[test]
    fn too_few_samples_can_never_be_significant_at_high_confidence() {
        // 2 against 2: the smallest one-sided p is 1/6, so 95% confidence is out of reach.
        let s = judge(&[100.0, 101.0], &[1.0, 2.0], 0.95, true).expect("judged");
        assert_eq!(s.finding, Finding::Inconclusive);
        assert!((s.p_value - 1.0 / 6.0).abs() < 1e-9, "{s:?}");
    }
}
