//! `evolve trace`: one cycle's timeline from the store (docs/architecture.md, "Tracing").

use chrono::{DateTime, Utc};
use serde::Serialize;
use shared::domain::SystemId;
use shared::store::FullStore;

use super::{open_existing, resolve_system};
use crate::args::{Cli, TraceArgs};
use crate::output::bad_input;

/// One thing the store recorded in the trace.
#[derive(Debug, Serialize)]
struct Entry {
    at: DateTime<Utc>,
    kind: &'static str,
    id: String,
    message_id: String,
    trace_id: String,
    what: String,
}

pub async fn trace(cli: &Cli, args: &TraceArgs) -> anyhow::Result<()> {
    let store = open_existing(cli).await?;
    let system = resolve_system(store.as_ref(), cli.system.as_deref()).await?;
    let all = entries(store.as_ref(), &system).await?;
    let wanted = args.id.trim();
    let is_trace_id = wanted.len() == 32 && wanted.bytes().all(|b| b.is_ascii_hexdigit());
    let trace_id = if is_trace_id {
        wanted.to_ascii_lowercase()
    } else {
        all.iter()
            .find(|e| e.id == wanted || e.message_id == wanted)
            .map(|e| e.trace_id.clone())
            .ok_or_else(|| {
                bad_input(format!(
                    "nothing of {system} recorded with id {wanted} in a trace (records from \
                     before tracing have none)"
                ))
            })?
    };
    let mut timeline: Vec<Entry> = all.into_iter().filter(|e| e.trace_id == trace_id).collect();
    if timeline.is_empty() {
        return Err(bad_input(format!(
            "nothing of {system} recorded in trace {trace_id}"
        )));
    }
    timeline.sort_by(|a, b| a.at.cmp(&b.at).then(a.kind.cmp(b.kind)));
    if args.json {
        println!("{}", serde_json::to_string(&timeline)?);
        return Ok(());
    }
    println!("trace {trace_id} ({system})");
    println!(
        "{:<19}  {:<8}  {:<28}  {:<28}  what",
        "time", "kind", "id", "message"
    );
    for e in &timeline {
        println!(
            "{:<19}  {:<8}  {:<28}  {:<28}  {}",
            e.at.format("%Y-%m-%d %H:%M:%S"),
            e.kind,
            e.id,
            e.message_id,
            e.what
        );
    }
    Ok(())
}

/// Every event, decision and LLM call of `system` that names its trace.
async fn entries(store: &dyn FullStore, system: &SystemId) -> anyhow::Result<Vec<Entry>> {
    let mut out = Vec::new();
    for e in store.list_events(system, None, usize::MAX).await? {
        if let (Some(trace_id), Some(message_id)) = (e.trace_id, e.message_id) {
            out.push(Entry {
                at: e.timestamp,
                kind: "event",
                what: format!("{} (generation {})", event_name(e.event_type), e.generation),
                id: e.id,
                message_id,
                trace_id,
            });
        }
    }
    for d in store.list_decisions(system, None, usize::MAX).await? {
        if let (Some(trace_id), Some(message_id)) = (d.trace_id, d.message_id) {
            out.push(Entry {
                at: d.timestamp,
                kind: "decision",
                what: format!(
                    "{} (risk {:.2}, {})",
                    d.decision.as_str(),
                    d.risk_assessment.overall_risk,
                    d.model_used
                ),
                id: d.decision_id,
                message_id,
                trace_id,
            });
        }
    }
    for c in store.list_llm_calls(Some(system), None).await? {
        if let Some(trace_id) = c.trace_id {
            out.push(Entry {
                at: c.at,
                kind: "llm",
                what: format!(
                    "{} on {}: {} in / {} out tokens, {} nano-USD{}",
                    c.role.as_str(),
                    c.model_id,
                    c.usage.input_tokens,
                    c.usage.output_tokens,
                    c.cost_nano_usd,
                    if c.cache_hit { ", cached" } else { "" }
                ),
                id: c.call_id,
                message_id: c.envelope_id,
                trace_id,
            });
        }
    }
    Ok(out)
}

/// An event type's wire name (`mutation_applied`).
fn event_name(kind: shared::domain::EventType) -> String {
    serde_json::to_value(kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}
