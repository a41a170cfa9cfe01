//! What a call costs, in integer nano-USD.
//!
//! Prices are nano-USD per million tokens, so one token's cost is usually a fraction of a
//! nano-USD. Rounding each part separately would drift from the bill over many calls, so the
//! parts are summed exactly in `u128` and divided by a million once (docs/architecture.md, "Exactly once": the ledger
//! must stay within 1% of the bill).

use serde::{Deserialize, Serialize};

use crate::llm::catalog::Price;
use crate::store::Usage;

/// Tokens per price unit: prices are per million tokens.
const TOKENS_PER_PRICE_UNIT: u128 = 1_000_000;

/// How long written cache entries live: Bedrock bills the two lifetimes at different rates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheTtl {
    #[default]
    FiveMinutes,
    OneHour,
}

impl Price {
    /// The cache-write rate for entries that live `ttl`.
    pub fn cache_write(&self, ttl: CacheTtl) -> u64 {
        match ttl {
            CacheTtl::FiveMinutes => self.cache_write_5m,
            CacheTtl::OneHour => self.cache_write_1h,
        }
    }
}

/// The cost of one call in nano-USD: every token kind at its own rate, summed exactly, divided
/// once with round-half-up, saturated at `u64::MAX` (unreachable in practice, but never a wrap).
pub fn cost_nano(price: &Price, usage: &Usage, cache_write_ttl: CacheTtl) -> u64 {
    let total = weighted(usage.input_tokens, price.input)
        .saturating_add(weighted(usage.output_tokens, price.output))
        .saturating_add(weighted(usage.cache_read_tokens, price.cache_read))
        .saturating_add(weighted(
            usage.cache_write_tokens,
            price.cache_write(cache_write_ttl),
        ));
    let rounded = total.saturating_add(TOKENS_PER_PRICE_UNIT / 2) / TOKENS_PER_PRICE_UNIT;
    u64::try_from(rounded).unwrap_or(u64::MAX)
}

/// What the ledger reserves before a call: every estimated input token at the dearest rate an
/// input token can be billed at (plain, cache read, or cache write of either lifetime), every
/// possible output token at the output rate, rounded up. A reservation that is too high only
/// holds budget until settlement; one that is too low could let concurrent calls overshoot it.
pub fn worst_case_nano(price: &Price, input_tokens_estimate: u64, max_output_tokens: u64) -> u64 {
    let input_rate = price
        .input
        .max(price.cache_read)
        .max(price.cache_write_5m)
        .max(price.cache_write_1h);
    let total = weighted(input_tokens_estimate, input_rate)
        .saturating_add(weighted(max_output_tokens, price.output));
    let rounded = total.div_ceil(TOKENS_PER_PRICE_UNIT);
    u64::try_from(rounded).unwrap_or(u64::MAX)
}

/// A conservative token count for text before it is sent: one token per three characters,
/// rounded up. Tokenisers average closer to four characters per token on English and JSON, so
/// this over-reserves rather than under-reserves.
pub fn estimate_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(3)
}

fn weighted(tokens: u64, rate_per_million: u64) -> u128 {
    u128::from(tokens) * u128::from(rate_per_million)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::llm::catalog::{Endpoint, ServiceTier};

    /// Made-up rates: tests never depend on real prices.
    fn price(input: u64, output: u64, read: u64, w5: u64, w1: u64) -> Price {
        Price {
            endpoint: Endpoint::Regional,
            tier: ServiceTier::Standard,
            input,
            output,
            cache_read: read,
            cache_write_5m: w5,
            cache_write_1h: w1,
            source: "test".into(),
            as_of: "2025-01-01".into(),
            note: None,
        }
    }

    fn usage(input: u64, output: u64, read: u64, write: u64) -> Usage {
        Usage {
            input_tokens: input,
            output_tokens: output,
            cache_read_tokens: read,
            cache_write_tokens: write,
        }
    }

    #[test]
    fn every_token_kind_is_priced_at_its_own_rate() {
        // $2 / $10 / $0.20 / $2.50 / $4 per million tokens.
        let p = price(
            2_000_000_000,
            10_000_000_000,
            200_000_000,
            2_500_000_000,
            4_000_000_000,
        );
        assert_eq!(
            cost_nano(&p, &usage(1_000, 0, 0, 0), CacheTtl::FiveMinutes),
            2_000_000
        );
        assert_eq!(
            cost_nano(&p, &usage(0, 1_000, 0, 0), CacheTtl::FiveMinutes),
            10_000_000
        );
        assert_eq!(
            cost_nano(&p, &usage(0, 0, 1_000, 0), CacheTtl::FiveMinutes),
            200_000
        );
        assert_eq!(
            cost_nano(&p, &usage(0, 0, 0, 1_000), CacheTtl::FiveMinutes),
            2_500_000
        );
        assert_eq!(
            cost_nano(&p, &usage(0, 0, 0, 1_000), CacheTtl::OneHour),
            4_000_000
        );
        assert_eq!(
            cost_nano(
                &p,
                &usage(1_000, 1_000, 1_000, 1_000),
                CacheTtl::FiveMinutes
            ),
            14_700_000
        );
    }

    #[test]
    fn fractions_are_summed_before_the_single_rounding() {
        // 0.4 nano-USD per token for each of two kinds: per-part rounding would give 0 + 0.
        let p = price(400_000, 400_000, 1, 1, 1);
        assert_eq!(cost_nano(&p, &usage(1, 1, 0, 0), CacheTtl::FiveMinutes), 1);
        // Exactly one half rounds up; just under it rounds down.
        let half = price(500_000, 1, 1, 1, 1);
        assert_eq!(
            cost_nano(&half, &usage(1, 0, 0, 0), CacheTtl::FiveMinutes),
            1
        );
        let under = price(499_999, 1, 1, 1, 1);
        assert_eq!(
            cost_nano(&under, &usage(1, 0, 0, 0), CacheTtl::FiveMinutes),
            0
        );
    }

    #[test]
    fn huge_usages_saturate_instead_of_wrapping() {
        let p = price(u64::MAX, u64::MAX, u64::MAX, u64::MAX, u64::MAX);
        let all = usage(u64::MAX, u64::MAX, u64::MAX, u64::MAX);
        assert_eq!(cost_nano(&p, &all, CacheTtl::OneHour), u64::MAX);
        assert_eq!(worst_case_nano(&p, u64::MAX, u64::MAX), u64::MAX);
    }

    #[test]
    fn worst_case_covers_cache_writes_and_rounds_up() {
        let p = price(1_000_000, 5_000_000, 100_000, 1_250_000, 2_000_000);
        // 10 input tokens at the 1 h write rate (2 nano each) + 3 output tokens at 5 nano.
        assert_eq!(worst_case_nano(&p, 10, 3), 35);
        let tiny = price(1, 1, 1, 1, 1);
        assert_eq!(worst_case_nano(&tiny, 1, 0), 1);
        assert_eq!(worst_case_nano(&tiny, 0, 0), 0);
        for ttl in [CacheTtl::FiveMinutes, CacheTtl::OneHour] {
            let billed = cost_nano(&p, &usage(4, 3, 0, 6), ttl);
            assert!(billed <= worst_case_nano(&p, 10, 3));
        }
    }

    #[test]
    fn token_estimates_round_up_and_count_characters() {
        assert_eq!(estimate_tokens(""), 0);
        assert_eq!(estimate_tokens("a"), 1);
        assert_eq!(estimate_tokens("abc"), 1);
        assert_eq!(estimate_tokens("abcd"), 2);
        // Characters, not bytes: six two-byte characters are two tokens.
        assert_eq!(estimate_tokens("éééééé"), 2);
    }

    /// The reference: each part as an exact rational `tokens * rate / 1e6`, summed as a fraction
    /// over a common denominator in `i128`, then rounded half up by comparing the remainder with
    /// half the denominator. Inputs are bounded so nothing overflows.
    fn reference(p: &Price, u: &Usage, ttl: CacheTtl) -> i128 {
        let write = match ttl {
            CacheTtl::FiveMinutes => p.cache_write_5m,
            CacheTtl::OneHour => p.cache_write_1h,
        };
        let parts = [
            (u.input_tokens, p.input),
            (u.output_tokens, p.output),
            (u.cache_read_tokens, p.cache_read),
            (u.cache_write_tokens, write),
        ];
        let denominator: i128 = 1_000_000;
        let mut whole: i128 = 0;
        let mut remainder: i128 = 0;
        for (tokens, rate) in parts {
            let numerator = i128::from(tokens) * i128::from(rate);
            whole += numerator / denominator;
            remainder += numerator % denominator;
        }
        whole += remainder / denominator;
        let remainder = remainder % denominator;
        if 2 * remainder >= denominator {
            whole + 1
        } else {
            whole
        }
    }

    fn arb_price() -> impl Strategy<Value = Price> {
        let rate = 0_u64..=100_000_000_000;
        (rate.clone(), rate.clone(), rate.clone(), rate.clone(), rate)
            .prop_map(|(i, o, r, w5, w1)| price(i, o, r, w5, w1))
    }

    fn arb_usage() -> impl Strategy<Value = Usage> {
        let tokens = 0_u64..=10_000_000;
        (tokens.clone(), tokens.clone(), tokens.clone(), tokens)
            .prop_map(|(i, o, r, w)| usage(i, o, r, w))
    }

    fn arb_ttl() -> impl Strategy<Value = CacheTtl> {
        prop_oneof![Just(CacheTtl::FiveMinutes), Just(CacheTtl::OneHour)]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        #[test]
        fn cost_matches_an_exact_rational_reference(
            p in arb_price(), u in arb_usage(), ttl in arb_ttl()
        ) {
            prop_assert_eq!(i128::from(cost_nano(&p, &u, ttl)), reference(&p, &u, ttl));
        }

        #[test]
        fn cost_is_monotone_in_every_token_count(
            p in arb_price(),
            u in arb_usage(),
            ttl in arb_ttl(),
            kind in 0_usize..4,
            extra in 0_u64..=1_000_000,
        ) {
            let mut more = u;
            match kind {
                0 => more.input_tokens += extra,
                1 => more.output_tokens += extra,
                2 => more.cache_read_tokens += extra,
                _ => more.cache_write_tokens += extra,
            }
            prop_assert!(cost_nano(&p, &more, ttl) >= cost_nano(&p, &u, ttl));
        }

        #[test]
        fn worst_case_never_undercuts_a_bill_within_it(
            p in arb_price(),
            u in arb_usage(),
            ttl in arb_ttl(),
        ) {
            // Any split of the estimated input between plain, cached and written tokens.
            let input = u.input_tokens + u.cache_read_tokens + u.cache_write_tokens;
            prop_assert!(worst_case_nano(&p, input, u.output_tokens) >= cost_nano(&p, &u, ttl));
        }
    }
}
