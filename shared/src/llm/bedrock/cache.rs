//! The response cache: validated answers kept under a hash of the exact request.

use super::{
    AnswerError, BedrockModel, ModelEntry, Prompt, RawAnswer, Role, RoleSettings, Usage, Value,
    extraction, validate, warn,
};

impl BedrockModel {
    /// A cached answer for `key` that still parses and validates for this request, if any.
    /// Validation runs again on every hit: the stored answer passed it once, but the risk
    /// ceiling and the gene schema the parser checks against are the caller's, now.
    pub(super) async fn cached<T>(
        &self,
        key: &str,
        entry: &ModelEntry,
        role: Role,
        parse: &(dyn Fn(Value) -> Result<T, AnswerError> + Sync),
    ) -> Option<T> {
        if self.settings.response_cache_ttl <= chrono::Duration::zero() {
            return None;
        }
        let found = match self
            .ports
            .control
            .cached_answer(key, self.ports.clock.now())
            .await
        {
            Ok(found) => found?,
            Err(e) => {
                warn!(error = %e, "could not read the response cache");
                return None;
            }
        };
        serde_json::from_value::<RawAnswer>(found.answer)
            .map_err(|e| AnswerError::SchemaMismatch(e.to_string()))
            .and_then(|raw| validate::extract(&raw, extraction(entry, role)))
            .and_then(parse)
            .ok()
    }

    /// Stores a validated answer for reuse by identical requests (best effort).
    pub(super) async fn remember(
        &self,
        key: String,
        model_id: &str,
        role: Role,
        raw: &Result<RawAnswer, String>,
        usage: Usage,
        cost: u64,
    ) {
        let ttl = self.settings.response_cache_ttl;
        if ttl <= chrono::Duration::zero() {
            return;
        }
        let (Ok(raw), now) = (raw, self.ports.clock.now()) else {
            return;
        };
        let Ok(answer) = serde_json::to_value(raw) else {
            return;
        };
        let entry = crate::store::CachedAnswer {
            key,
            model_id: model_id.to_owned(),
            role,
            answer,
            usage,
            cost_nano_usd: cost,
            stored_at: now,
            expires_at: now + ttl,
        };
        if let Err(e) = self.ports.control.put_cached_answer(&entry).await {
            warn!(error = %e, "could not store an answer in the response cache");
        }
    }
}

/// The response-cache key: SHA-256 over the model id, the role and everything that shapes the
/// answer (how structured output is forced, the system prompt, the user message, the tool, the
/// output schema and the inference settings). Any difference is another key.
pub(super) fn cache_key(
    model_id: &str,
    entry: &ModelEntry,
    prompt: &Prompt,
    schema: &Value,
    settings: RoleSettings,
    max_tokens: u32,
) -> String {
    let request = serde_json::json!({
        "model_id": model_id,
        "role": prompt.role.as_str(),
        "structured_output": entry.structured_output,
        "system": prompt.system,
        "messages": [prompt.user],
        "tool_name": prompt.tool_name,
        "tool_description": prompt.tool_description,
        "schema": schema,
        "temperature": settings.temperature,
        "max_tokens": max_tokens,
    });
    crate::domain::sha256_hex(request.to_string().as_bytes())
}
