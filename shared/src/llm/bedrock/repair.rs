//! The one repair request an invalid answer gets, on the cheapest structured-output model of
//! the route.

use super::{
    AnswerError, BedrockModel, CacheTtl, CallContext, Duration, Failure, MIN_REQUEST_TIME, Outcome,
    Prompt, Reservation, ReserveOutcome, Spent, StructuredOutput, Value, blended_price, classify,
    cost_nano, derive_id, estimate_tokens, extraction, raw_answer, usage_of, validate,
    worst_case_nano,
};

impl BedrockModel {
    /// One repair attempt on the cheapest capable model: the same data, the validation error,
    /// and the demand for a valid structured answer. Its cost counts like any call's.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn repair<T>(
        &self,
        ctx: &CallContext,
        ranked: &[String],
        schema: &Value,
        prompt: &Prompt,
        error: &AnswerError,
        parse: &(dyn Fn(Value) -> Result<T, AnswerError> + Sync),
        timeout: Duration,
        spent: &mut Spent,
    ) -> Option<Outcome<T>> {
        let cheapest = ranked
            .iter()
            .filter_map(|id| self.settings.catalog.get(id))
            .filter(|e| e.structured_output != StructuredOutput::Text)
            .min_by_key(|e| (e.price().map_or(u64::MAX, blended_price), e.id.clone()))?;
        let price = cheapest.price()?;
        let settings = self.settings.role(ctx.task.role);
        let repair_prompt = Prompt {
            system: format!(
                "{}\n\nA previous answer to this request was rejected: {error}. Answer again, \
                 strictly through the requested structured output.",
                prompt.system
            ),
            ..prompt.clone()
        };
        let max_tokens = settings.max_tokens.min(cheapest.max_output_tokens);
        let now = self.ports.clock.now();
        let reservation = Reservation {
            call_id: derive_id(
                "bcall",
                &[
                    &ctx.envelope_id,
                    ctx.task.role.as_str(),
                    "repair",
                    &self.request_nonce(),
                ],
            ),
            system_id: ctx.system_id.clone(),
            model_id: cheapest.id.clone(),
            amount_nano: worst_case_nano(
                price,
                estimate_tokens(&repair_prompt.system) + estimate_tokens(&repair_prompt.user),
                u64::from(max_tokens),
            ),
            at: now,
            limits: self.limits(ctx.task.critical),
        };
        if timeout < MIN_REQUEST_TIME.min(settings.timeout) {
            return None;
        }
        if let Some(reason) = spent.exhausted(&self.settings.retry, reservation.amount_nano) {
            tracing::info!(%reason, "no repair request");
            return None;
        }
        if !matches!(
            self.ports.ledger.reserve(&reservation).await,
            Ok(ReserveOutcome::Reserved)
        ) {
            return None;
        }
        spent.requests += 1;
        let sent = tokio::time::timeout(
            timeout,
            self.send(
                &cheapest.id,
                cheapest,
                &repair_prompt,
                schema,
                settings,
                max_tokens,
            ),
        )
        .await;
        let output = match sent {
            Ok(Ok(output)) => output,
            Ok(Err(e)) => {
                self.settle_failed(&reservation, &classify(&e), spent).await;
                return None;
            }
            Err(_) => {
                self.settle_failed(&reservation, &Failure::Timeout(timeout), spent)
                    .await;
                return None;
            }
        };
        spent.billed += 1;
        let usage = usage_of(&output);
        let cost = cost_nano(price, &usage, CacheTtl::FiveMinutes);
        self.settle(&reservation, cost, usage, spent).await;
        let value = raw_answer(&output)
            .ok()
            .and_then(|raw| validate::extract(&raw, extraction(cheapest, ctx.task.role)).ok())
            .and_then(|v| parse(v).ok())?;
        Some(Outcome::Answered {
            value,
            model_id: cheapest.id.clone(),
        })
    }
}
