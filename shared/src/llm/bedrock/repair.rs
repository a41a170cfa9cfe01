//! The one repair request an invalid answer gets, on the cheapest structured-output model of
//! the route.

use super::policy::{Call, MIN_REQUEST_TIME, Paid, Ticket};
use super::transport::Request;
use super::{
    AnswerError, BedrockModel, Duration, Outcome, Prompt, Spent, StructuredOutput, blended_price,
    derive_id, estimate_tokens, extraction, validate, worst_case_nano,
};

impl BedrockModel {
    /// One repair attempt on the cheapest capable model: the same data, the validation error,
    /// and the demand for a valid structured answer. Its cost counts like any call's.
    pub(super) async fn repair<T>(
        &self,
        call: &Call<'_, T>,
        ranked: &[String],
        prompt: &Prompt,
        error: &AnswerError,
        timeout: Duration,
        spent: &mut Spent,
    ) -> Option<Outcome<T>> {
        let ctx = call.ctx;
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
        let ticket = Ticket {
            call_id: derive_id(
                "bcall",
                &[
                    &ctx.envelope_id,
                    ctx.task.role.as_str(),
                    "repair",
                    &self.request_nonce(),
                ],
            ),
            worst_nano: worst_case_nano(
                price,
                estimate_tokens(&repair_prompt.system) + estimate_tokens(&repair_prompt.user),
                u64::from(max_tokens),
            ),
            at: self.ports.clock.now(),
            timeout,
        };
        if timeout < MIN_REQUEST_TIME.min(settings.timeout) {
            return None;
        }
        if let Some(reason) = spent.exhausted(&self.settings.retry, ticket.worst_nano) {
            tracing::info!(%reason, "no repair request");
            return None;
        }
        let request = Request {
            model: cheapest,
            prompt: &repair_prompt,
            schema: call.schema,
            settings,
            max_tokens,
        };
        let Paid::Replied { reply, .. } =
            self.paid_request(ctx, &ticket, request, price, spent).await
        else {
            return None;
        };
        let value = reply
            .answer
            .ok()
            .and_then(|raw| validate::extract(&raw, extraction(cheapest, ctx.task.role)).ok())
            .and_then(|v| (call.parse)(v).ok())?;
        Some(Outcome::Answered {
            value,
            model_id: cheapest.id.clone(),
        })
    }
}
