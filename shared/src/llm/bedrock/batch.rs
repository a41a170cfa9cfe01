//! Batching under throttling: while a model is throttled, decide asks about the plan's
//! remaining proposals in one request and keeps the other answers in the response cache.

use super::{
    AnswerError, BedrockModel, Call, DecideRequest, DecisionResult, Fallback, LlmAnswer, LlmError,
    ModelEntry, Priority, Prompt, RawAnswer, RawContent, Role, StructuredOutput, Usage, Value,
    cache_key, deferred, healing, info, prompts, schema_for, validate,
};

impl BedrockModel {
    /// Whether Bedrock is throttling: a throttle window is open on some catalog model.
    pub(super) async fn throttling(&self) -> bool {
        let now = self.ports.clock.now();
        for entry in self.settings.catalog.usable() {
            if let Ok(state) = self.ports.control.circuit(&entry.id).await {
                if healing::is_throttled(state.as_ref(), now) {
                    return true;
                }
            }
        }
        false
    }

    /// Request batching under throttling: the proposal and the plan's later steps in one
    /// request. The proposal's decision is validated and returned like a single one; each later
    /// decision that validates (against its own local risk and the ceiling) is stored in the
    /// response cache under the key of the single request that step would send against the same
    /// DNA and history. When its proposal arrives and nothing it depends on has changed (the
    /// steps before it were rejected, or rolled back to the same genes), the cache answers it
    /// for nothing, validated again; otherwise the key differs and it is decided normally.
    pub(super) async fn decide_batch(
        &self,
        req: &DecideRequest,
    ) -> Result<LlmAnswer<DecisionResult>, LlmError> {
        let parse = |v: Value| -> Result<(DecisionResult, Vec<Option<Value>>), AnswerError> {
            let decisions = v
                .get("decisions")
                .and_then(Value::as_array)
                .ok_or_else(|| AnswerError::SchemaMismatch("no `decisions` array".into()))?;
            let first = decisions
                .first()
                .cloned()
                .ok_or_else(|| AnswerError::SchemaMismatch("no decision".into()))?;
            let value = validate::decision(first, req.local_risk, req.risk_ceiling)?;
            let later = req
                .batch
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let d = decisions.get(i + 1)?.clone();
                    validate::decision(d.clone(), p.local_risk, req.risk_ceiling)
                        .ok()
                        .map(|_| d)
                })
                .collect();
            Ok((value, later))
        };
        let local = async {
            self.local
                .decide(req)
                .await
                .map(|a| a.map(|v| (v, Vec::new())))
        };
        let answer = self
            .role_call(
                Call {
                    ctx: &req.ctx,
                    priority: Priority::of(&req.ctx.task, true),
                    schema: &batch_schema(),
                    prompt_for: &|limit| batch_prompt(req, limit),
                    parse: &parse,
                },
                Fallback {
                    local,
                    safe: Some(&|(d, _), reason: &str| (deferred(d, reason), Vec::new())),
                },
            )
            .await?;
        if answer.fallback.is_none() {
            if let Some(entry) = self.settings.catalog.get(&answer.model_id) {
                let settings = self.settings.role(Role::Decide);
                let max_tokens = settings.max_tokens.min(entry.max_output_tokens);
                let schema = schema_for(Role::Decide);
                let mut stored = 0;
                for (pending, decision) in req.batch.iter().zip(&answer.value.1) {
                    let Some(decision) = decision else { continue };
                    let single = DecideRequest {
                        mutation: pending.mutation.clone(),
                        local_risk: pending.local_risk,
                        batch: Vec::new(),
                        ..req.clone()
                    };
                    let prompt = prompts::decide(&single, self.settings.history_limit);
                    let key = cache_key(&entry.id, entry, &prompt, &schema, settings, max_tokens);
                    let raw = Ok(single_answer(entry, decision));
                    self.remember(key, &entry.id, Role::Decide, &raw, Usage::default(), 0)
                        .await;
                    stored += 1;
                }
                info!(
                    model = %entry.id,
                    batch = req.batch.len() + 1,
                    stored,
                    "batch decision under throttling"
                );
            }
        }
        Ok(answer.map(|(value, _)| value))
    }
}

/// The batch decision's answer: one decision per mutation, in the order they were given.
pub(super) fn batch_schema() -> Value {
    serde_json::json!({
        "type": "object",
        "properties": {
            "decisions": {
                "type": "array",
                "minItems": 1,
                "items": schema_for(Role::Decide),
            },
        },
        "required": ["decisions"],
    })
}

/// The decide prompt of `req` with the later steps added: `mutation` first, then each of
/// `more_mutations`, every one judged alone against the same DNA.
pub(super) fn batch_prompt(req: &DecideRequest, history_limit: usize) -> Prompt {
    let single = prompts::decide(req, history_limit);
    let mut data: Value = serde_json::from_str(&single.user).unwrap_or_default();
    if let Some(obj) = data.as_object_mut() {
        obj.insert(
            "more_mutations".into(),
            req.batch
                .iter()
                .map(|p| {
                    serde_json::json!({
                        "changes": p.mutation.changes,
                        "predicted_impact": p.mutation.predicted_impact,
                        "local_risk": p.local_risk,
                    })
                })
                .collect(),
        );
    }
    Prompt {
        system: format!(
            "{}\n\nDecide several proposals at once: `mutation` first, then each entry of \
             `more_mutations` in order, each judged on its own against the same DNA and its own \
             `local_risk`. Answer with `decisions`: one decision per proposal, in that order.",
            single.system
        ),
        user: data.to_string(),
        ..single
    }
}

/// A stored answer in the shape a single request to `entry` would have received.
pub(super) fn single_answer(entry: &ModelEntry, decision: &Value) -> RawAnswer {
    let blocks = match entry.structured_output {
        StructuredOutput::ToolUse => vec![RawContent::ToolUse {
            name: prompts::tool_name(Role::Decide).to_owned(),
            input: decision.clone(),
        }],
        StructuredOutput::JsonSchema | StructuredOutput::Text => vec![RawContent::Text {
            text: decision.to_string(),
        }],
    };
    RawAnswer {
        blocks,
        stop_reason: "end_turn".into(),
    }
}
