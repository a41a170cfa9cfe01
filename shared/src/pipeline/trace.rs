//! The pipeline's part of tracing (docs/architecture.md, "Tracing"): the span of a message's
//! handling, and the trace stamped on the records the handling writes.

use tracing::info_span;

use crate::domain::{Body, Destination, Envelope};

/// The span of a message's handling by `handler` (a stage, or the running system), in the
/// message's trace (docs/architecture.md, "Tracing"): a cycle's first message is the trace's
/// root, named `cycle`; every other message is a span under the one that sent it.
pub fn message_span(env: &Envelope, handler: &str) -> tracing::Span {
    let trace = env.trace();
    let parent = trace.parent_of(&env.id);
    let name = if parent.is_none() && matches!(env.body, Body::CycleRequested { .. }) {
        "cycle".to_owned()
    } else {
        format!("{handler} {}", env.body.type_name())
    };
    info_span!(
        "message",
        otel.name = %name,
        otel.kind = "consumer",
        id = %env.id,
        r#type = env.body.type_name(),
        system_id = %env.system_id,
        base_generation = env.base_generation,
        trace_id = %trace.trace_id_hex(),
        span_id = %hex::encode(crate::domain::trace::span_id_of(&env.id)),
        parent_span_id = parent.map(hex::encode),
    )
}

/// Marks the events, decisions and LLM calls a message's handling records with its trace and
/// its id, so `evolve trace` and a log search find them (docs/architecture.md, "Tracing").
pub(super) fn stamp_trace(writes: &mut [crate::store::Write], env: &Envelope) {
    use crate::store::Write;
    let trace_id = env.trace().trace_id_hex();
    for write in writes {
        match write {
            Write::PutEvent { event } => {
                event.trace_id = Some(trace_id.clone());
                event.message_id = Some(env.id.clone());
            }
            Write::PutDecision { decision } => {
                decision.trace_id = Some(trace_id.clone());
                decision.message_id = Some(env.id.clone());
            }
            Write::PutLlmCall { call } => call.trace_id = Some(trace_id.clone()),
            _ => {}
        }
    }
}

/// The stage a message's body is for, the name of its span.
pub(super) fn stage_of(body: &Body) -> &'static str {
    match body {
        Body::CycleRequested { .. } => "analyze",
        Body::SystemTick { .. } | Body::TickPage { .. } => "tick",
        Body::AnalysisReady { .. } => "strategize",
        Body::FitnessReported { .. } => "snapshot",
        b => match b.destination() {
            Destination::Queue(q) => q.as_str(),
            Destination::Topic(t) => t.as_str(),
        },
    }
}
