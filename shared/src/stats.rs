//! Rank statistics for judging a generation against its parent (docs/architecture.md,
//! "Judging a generation").
//!
//! Mann-Whitney U compares two samples by ranks only, so one heavy-tailed report (a latency
//! spike, a GC pause) moves it no more than any other report, and it assumes no distribution;
//! Kayenta judges canaries the same way. Welch's t would let one outlier decide, and with the 2
//! to 10 samples a window holds, normality cannot be checked.
//!
//! Small samples get the exact distribution of U (every split of the pooled values, ties at
//! their mid-ranks); larger ones the normal approximation with tie and continuity corrections.

/// Pooled sizes up to this get the exact distribution (C(20, 10) = 184,756 splits at most).
const EXACT_MAX_POOLED: usize = 20;

/// One comparison of a candidate's samples with its parent's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RankTest {
    /// Pairs (candidate, parent) where the candidate is higher, a tie counting half.
    pub u: f64,
    /// Probability, were the candidate no better, of a U at least this large (one-sided).
    pub p_greater: f64,
    /// Probability, were the candidate no worse, of a U at most this large (one-sided).
    pub p_less: f64,
    /// Cliff's delta, P(candidate > parent) - P(candidate < parent), in [-1, 1]: the effect
    /// size, independent of the sample sizes.
    pub effect: f64,
    /// The p-values come from the exact distribution, not the normal approximation.
    pub exact: bool,
}

impl RankTest {
    /// The smaller one-sided p-value, doubled: the two-sided p-value.
    pub fn p_two_sided(&self) -> f64 {
        (2.0 * self.p_greater.min(self.p_less)).min(1.0)
    }
}

/// Mann-Whitney U of `candidate` against `parent`; `None` when either is empty or holds a
/// non-finite value.
pub fn mann_whitney(candidate: &[f64], parent: &[f64]) -> Option<RankTest> {
    if candidate.is_empty()
        || parent.is_empty()
        || candidate.iter().chain(parent).any(|v| !v.is_finite())
    {
        return None;
    }
    let (n1, n2) = (candidate.len(), parent.len());
    let pooled: Vec<f64> = candidate.iter().chain(parent).copied().collect();
    let ranks = mid_ranks(&pooled);
    let u = u_of(&ranks[..n1]);
    let pairs = (n1 * n2) as f64;
    let effect = 2.0 * u / pairs - 1.0;
    let (p_greater, p_less, exact) = if n1 + n2 <= EXACT_MAX_POOLED {
        let (greater, less) = exact_tails(&ranks, n1, u);
        (greater, less, true)
    } else {
        let (greater, less) = normal_tails(&pooled, n1, n2, u);
        (greater, less, false)
    };
    Some(RankTest {
        u,
        p_greater,
        p_less,
        effect,
        exact,
    })
}

/// The runs of equal values in `order` (indices into `values`, sorted by value), as inclusive
/// position ranges: a tie is a run longer than one.
fn runs(values: &[f64], order: &[usize]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < order.len() {
        let mut end = start;
        while end + 1 < order.len()
            && values[order[end + 1]]
                .total_cmp(&values[order[start]])
                .is_eq()
        {
            end += 1;
        }
        out.push((start, end));
        start = end + 1;
    }
    out
}

/// `values`' indices in increasing order of value.
fn sorted_order(values: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|a, b| values[*a].total_cmp(&values[*b]));
    order
}

/// The rank of each value in the pooled sample, 1-based, ties at the mean of their ranks.
fn mid_ranks(values: &[f64]) -> Vec<f64> {
    let order = sorted_order(values);
    let mut ranks = vec![0.0; values.len()];
    for (first, last) in runs(values, &order) {
        // Positions first..=last share the mean of ranks first+1..=last+1.
        let mid = (first + last) as f64 / 2.0 + 1.0;
        for index in &order[first..=last] {
            ranks[*index] = mid;
        }
    }
    ranks
}

/// U of a group from its ranks in the pooled sample.
fn u_of(group_ranks: &[f64]) -> f64 {
    let n = group_ranks.len() as f64;
    group_ranks.iter().sum::<f64>() - n * (n + 1.0) / 2.0
}

/// P(U >= u) and P(U <= u) over every way of choosing the candidate's `n1` ranks from the pool:
/// the permutation distribution, exact with ties.
fn exact_tails(ranks: &[f64], n1: usize, u: f64) -> (f64, f64) {
    // Ranks are multiples of 0.5: compare in half-units to keep the counts exact.
    let half = |x: f64| (x * 2.0).round() as i64;
    let target = half(u);
    let n = ranks.len();
    let (mut at_least, mut at_most, mut total) = (0u64, 0u64, 0u64);
    // Gosper's hack: every n-bit mask with n1 bits set, in increasing order.
    let mut mask: u32 = (1u32 << n1) - 1;
    let limit: u32 = 1u32 << n;
    while mask < limit {
        let sum: f64 = (0..n)
            .filter(|i| mask & (1 << i) != 0)
            .map(|i| ranks[i])
            .sum();
        let split = half(sum - (n1 * (n1 + 1)) as f64 / 2.0);
        total += 1;
        if split >= target {
            at_least += 1;
        }
        if split <= target {
            at_most += 1;
        }
        let lowest = mask & mask.wrapping_neg();
        let ripple = mask + lowest;
        mask = (((ripple ^ mask) >> 2) / lowest) | ripple;
    }
    let total = total as f64;
    (at_least as f64 / total, at_most as f64 / total)
}

/// The normal approximation, with the variance corrected for ties and a continuity correction.
fn normal_tails(pooled: &[f64], n1: usize, n2: usize, u: f64) -> (f64, f64) {
    let (n1f, n2f, total) = (n1 as f64, n2 as f64, (n1 + n2) as f64);
    let ties: f64 = runs(pooled, &sorted_order(pooled))
        .into_iter()
        .map(|(first, last)| {
            let size = (last - first + 1) as f64;
            size * size * size - size
        })
        .sum();
    let mean = n1f * n2f / 2.0;
    let variance = n1f * n2f / 12.0 * ((total + 1.0) - ties / (total * (total - 1.0)));
    if variance <= 0.0 {
        // Every value equal: no evidence either way.
        return (1.0, 1.0);
    }
    let sd = variance.sqrt();
    let upper = |z: f64| 0.5 * libm::erfc(z / std::f64::consts::SQRT_2);
    let greater = upper((u - mean - 0.5) / sd);
    let less = upper((mean - u - 0.5) / sd);
    (greater.min(1.0), less.min(1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn a_complete_separation_has_the_smallest_exact_p_value() {
        // 4 against 4, every candidate above every parent: 1 split of C(8, 4) = 70.
        let test = mann_whitney(&[5.0, 6.0, 7.0, 8.0], &[1.0, 2.0, 3.0, 4.0]).expect("test");
        assert!(close(test.u, 16.0));
        assert!(close(test.p_greater, 1.0 / 70.0), "{test:?}");
        assert!(close(test.p_less, 1.0));
        assert!(close(test.effect, 1.0));
        assert!(test.exact);
    }

    #[test]
    fn exact_p_values_match_the_published_table() {
        // n1 = n2 = 5, U = 4 (the candidate lower): P(U <= 4) = 12/252 = 0.0476, the critical
        // value of the one-sided 5% test in the published tables.
        let test =
            mann_whitney(&[1.0, 2.0, 3.0, 6.0, 7.0], &[4.0, 5.0, 8.0, 9.0, 10.0]).expect("test");
        assert!(close(test.u, 4.0), "{test:?}");
        assert!(close(test.p_less, 12.0 / 252.0), "{test:?}");
        assert!(close(test.p_two_sided(), 24.0 / 252.0), "{test:?}");
    }

    #[test]
    fn ties_count_half_and_all_equal_is_no_evidence() {
        let test = mann_whitney(&[1.0, 1.0], &[1.0, 1.0]).expect("test");
        assert!(close(test.u, 2.0));
        assert!(close(test.p_greater, 1.0) && close(test.p_less, 1.0));
        assert!(close(test.effect, 0.0));
        let big: Vec<f64> = vec![3.0; 15];
        let test = mann_whitney(&big, &big).expect("test");
        assert!(!test.exact);
        assert!(close(test.p_greater, 1.0) && close(test.p_less, 1.0));
    }

    #[test]
    fn the_approximation_agrees_with_the_exact_distribution_near_its_limit() {
        let candidate: Vec<f64> = (0..10).map(|i| f64::from(i) * 1.3 + 2.0).collect();
        let parent: Vec<f64> = (0..10).map(|i| f64::from(i) * 1.1).collect();
        let exact = mann_whitney(&candidate, &parent).expect("test");
        let pooled: Vec<f64> = candidate.iter().chain(&parent).copied().collect();
        let (greater, less) = normal_tails(&pooled, 10, 10, exact.u);
        assert!(exact.exact);
        assert!(
            (greater - exact.p_greater).abs() < 0.01,
            "{greater} vs {exact:?}"
        );
        assert!((less - exact.p_less).abs() < 0.01, "{less} vs {exact:?}");
    }

    #[test]
    fn empty_or_non_finite_samples_are_refused() {
        assert!(mann_whitney(&[], &[1.0]).is_none());
        assert!(mann_whitney(&[f64::NAN], &[1.0]).is_none());
    }

    proptest! {
        #[test]
        fn swapping_the_samples_mirrors_the_test(
            a in prop::collection::vec(-100i32..100, 1..9),
            b in prop::collection::vec(-100i32..100, 1..9),
        ) {
            let a: Vec<f64> = a.into_iter().map(f64::from).collect();
            let b: Vec<f64> = b.into_iter().map(f64::from).collect();
            let ab = mann_whitney(&a, &b).expect("test");
            let ba = mann_whitney(&b, &a).expect("test");
            prop_assert!(close(ab.u + ba.u, (a.len() * b.len()) as f64));
            prop_assert!(close(ab.p_greater, ba.p_less));
            prop_assert!(close(ab.effect, -ba.effect));
            prop_assert!((0.0..=1.0).contains(&ab.p_greater) && (0.0..=1.0).contains(&ab.p_less));
            prop_assert!(ab.p_greater + ab.p_less >= 1.0 - 1e-9);
        }
    }
}
