//! Spend: the budgets a call must fit in, settling a reservation, the thresholds a call's
//! spend crossed, and the answer checkpoint stored before parsing.

use super::{
    BedrockModel, BudgetCrossing, BudgetLimit, BudgetScope, Checkpoint, Failure, LedgerScope,
    PeriodKey, RawAnswer, Reservation, RetryPolicy, SecurityEvent, Settlement, Usage, warn,
};

/// What one role call cost before it was answered, whoever answered it.
#[derive(Debug, Default)]
pub(super) struct Spent {
    pub(super) requests: u32,
    /// Requests Bedrock billed or may bill (answered, or given up mid-work).
    pub(super) billed: u32,
    /// The call's money budget: a multiple of its priciest request's worst case so far.
    pub(super) budget_nano: u64,
    pub(super) cost_nano: u64,
    pub(super) usage: Usage,
    pub(super) crossings: Vec<BudgetCrossing>,
    pub(super) perf: Vec<(String, bool, u64, bool)>,
    pub(super) security: Vec<SecurityEvent>,
    pub(super) cache_hit: bool,
}

impl Spent {
    /// Why the call may not send another request costing up to `worst_nano`, if it may not:
    /// past its request, billed-answer or money budget, the local engine answers instead.
    pub(super) fn exhausted(&mut self, policy: &RetryPolicy, worst_nano: u64) -> Option<String> {
        self.budget_nano = self
            .budget_nano
            .max(worst_nano.saturating_mul(policy.max_cost_multiple));
        let budget = self.budget_nano;
        if self.requests >= policy.max_requests {
            Some(format!(
                "call budget: {} requests sent (at most {})",
                self.requests, policy.max_requests
            ))
        } else if self.billed >= policy.max_billed {
            Some(format!(
                "call budget: {} billed requests (at most {})",
                self.billed, policy.max_billed
            ))
        } else if self.cost_nano.saturating_add(worst_nano) > budget {
            Some(format!(
                "call budget: {} nano-USD charged, the next request may cost {worst_nano} more \
                 (at most {budget})",
                self.cost_nano
            ))
        } else {
            None
        }
    }
}

impl BedrockModel {
    /// Budgets a call must fit in; non-critical calls leave the reserved share to critical ones.
    pub(super) fn limits(&self, critical: bool) -> Vec<BudgetLimit> {
        let share = if critical {
            100
        } else {
            100 - self.settings.critical_reserve_percent.min(100)
        };
        self.settings
            .budgets
            .limits()
            .into_iter()
            .map(|mut l| {
                l.limit_nano = (u128::from(l.limit_nano) * u128::from(share) / 100) as u64;
                l
            })
            .collect()
    }

    pub(super) async fn settle(
        &self,
        reservation: &Reservation,
        actual: u64,
        usage: Usage,
        spent: &mut Spent,
    ) {
        let settlement = Settlement {
            call_id: reservation.call_id.clone(),
            system_id: reservation.system_id.clone(),
            model_id: reservation.model_id.clone(),
            reserved_nano: reservation.amount_nano,
            reserved_at: reservation.at,
            actual_nano: actual,
            usage,
            at: self.ports.clock.now(),
        };
        if let Err(e) = self.ports.ledger.settle(&settlement).await {
            // The reservation stays held until a later settle; spend is over-, never under-counted.
            warn!(error = %e, call_id = %reservation.call_id, "could not settle a Bedrock call");
            return;
        }
        spent.cost_nano += actual;
        spent.usage.input_tokens += usage.input_tokens;
        spent.usage.output_tokens += usage.output_tokens;
        spent.usage.cache_read_tokens += usage.cache_read_tokens;
        spent.usage.cache_write_tokens += usage.cache_write_tokens;
        if actual > 0 {
            self.crossings(reservation, actual, spent).await;
        }
    }

    /// Settles a request that brought no usable answer: at its reservation when Bedrock may
    /// still bill it (counted as billed), else at zero.
    pub(super) async fn settle_failed(
        &self,
        reservation: &Reservation,
        failure: &Failure,
        spent: &mut Spent,
    ) {
        let charged = if failure.may_be_billed() {
            spent.billed += 1;
            reservation.amount_nano
        } else {
            0
        };
        self.settle(reservation, charged, Usage::default(), spent)
            .await;
    }

    /// Thresholds (the economy share and 100%) that this call's cost moved spend across.
    pub(super) async fn crossings(
        &self,
        reservation: &Reservation,
        actual: u64,
        spent: &mut Spent,
    ) {
        let budgets = &self.settings.budgets;
        for limit in budgets.limits() {
            let scope = match limit.scope {
                BudgetScope::Global => LedgerScope::Total,
                BudgetScope::System => LedgerScope::System(reservation.system_id.clone()),
            };
            let Ok(totals) = self
                .ports
                .ledger
                .totals(PeriodKey::of(limit.period, reservation.at), &scope)
                .await
            else {
                continue;
            };
            let after = u128::from(totals.spent_nano);
            let before = after.saturating_sub(u128::from(actual));
            for percent in [budgets.economy_percent, 100] {
                let line = u128::from(limit.limit_nano) * u128::from(percent);
                if before * 100 < line && after * 100 >= line {
                    spent.crossings.push(BudgetCrossing {
                        scope: limit.scope,
                        period: limit.period,
                        percent,
                    });
                }
            }
        }
    }

    pub(super) async fn checkpoint(
        &self,
        key: &str,
        model_id: &str,
        raw: &Result<RawAnswer, String>,
        usage: Usage,
        cost: u64,
    ) {
        let Ok(raw) = raw else { return };
        let Ok(answer) = serde_json::to_value(raw) else {
            return;
        };
        let checkpoint = Checkpoint {
            key: key.to_owned(),
            model_id: model_id.to_owned(),
            answer,
            usage,
            cost_nano_usd: cost,
            expires_at: self.ports.clock.now() + self.settings.checkpoint_ttl,
        };
        if let Err(e) = self.ports.control.put_checkpoint(&checkpoint).await {
            warn!(error = %e, "could not checkpoint a Bedrock answer");
        }
    }
}
