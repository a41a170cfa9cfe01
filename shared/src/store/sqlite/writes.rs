//! A transaction's writes as SQLite upserts: one statement per record, run after every condition
//! was checked inside the same immediate transaction.

use chrono::{DateTime, Utc};
use rusqlite::{Connection, params};
use serde::Serialize;

use super::{BUDGET_ROW, encode, int, put, ts, update_performance, write_control};
use crate::domain::{AnalysisRecord, FitnessSample, Generation, HistoryEntry, Plan, SystemId};
use crate::store::rules;
use crate::store::{LlmCallRecord, StoreResult, SystemRecord, Write};

/// Applies one write whose shape and condition were checked.
pub(super) fn apply(conn: &Connection, write: &Write) -> StoreResult<()> {
    match write {
        Write::PutSystem { system } => {
            let next = SystemRecord {
                version: system.version + 1,
                ..system.clone()
            };
            put_per_system(conn, SYSTEM_SQL, &system.system_id, &next)
        }
        Write::CreateSystem {
            system,
            head,
            generation,
        } => {
            put_per_system(conn, SYSTEM_SQL, &system.system_id, system)?;
            put_per_system(conn, HEAD_SQL, &head.system_id, head)?;
            put_generation(conn, generation)
        }
        Write::PutGeneration { generation } => put_generation(conn, generation),
        Write::UpdateHead { head, .. }
        | Write::ResolveApproval { head, .. }
        | Write::CountSample { head, .. } => put_per_system(conn, HEAD_SQL, &head.system_id, head),
        Write::PutEvent { event } => {
            let system = rules::event_system(event)?;
            put_timed(conn, EVENT_SQL, system, &event.id, event.timestamp, event)
        }
        Write::PutDecision { decision } => {
            let (system, id) = (rules::decision_system(decision)?, &decision.decision_id);
            put_timed(conn, DECISION_SQL, system, id, decision.timestamp, decision)
        }
        Write::PutFitnessSample { sample } => put_fitness(conn, sample),
        Write::PutHistory { system_id, entry } => put_history(conn, system_id, entry),
        Write::PutPlan { plan } => put_plan(conn, plan),
        Write::PutCursor { cursor, .. } => {
            put_per_system(conn, CURSOR_SQL, &cursor.system_id, cursor)
        }
        Write::PutAnalysis { analysis } => put_analysis(conn, analysis),
        Write::PutLlmCall { call } => put_llm_call(conn, call),
        Write::PutAlert { alert } => put(
            conn,
            "INSERT OR REPLACE INTO alerts (alert_id, at, body) VALUES (?1, ?2, ?3)",
            [alert.id.as_str(), &ts(alert.at), &encode(alert)?],
        ),
        Write::SetBudgetMode { state, .. } => write_control(conn, BUDGET_ROW, state),
        Write::PutReconciliation { record } => put(
            conn,
            "INSERT OR REPLACE INTO reconciliations (day, body) VALUES (?1, ?2)",
            [record.day.to_string(), encode(record)?],
        ),
        Write::RecordPrediction {
            model_id,
            role,
            predicted,
            actual,
        } => update_performance(conn, |perf| {
            perf.record_prediction(model_id, *role, *predicted, *actual);
        }),
    }
}

const SYSTEM_SQL: &str = "INSERT OR REPLACE INTO systems (system_id, body) VALUES (?1, ?2)";

const HEAD_SQL: &str = "INSERT OR REPLACE INTO heads (system_id, body) VALUES (?1, ?2)";

const CURSOR_SQL: &str = "INSERT OR REPLACE INTO cursors (system_id, body) VALUES (?1, ?2)";

const EVENT_SQL: &str =
    "INSERT OR REPLACE INTO events (system_id, event_id, at, body) VALUES (?1, ?2, ?3, ?4)";

const DECISION_SQL: &str = "INSERT OR REPLACE INTO decisions (system_id, decision_id, at, body) \
                            VALUES (?1, ?2, ?3, ?4)";

/// A record kept once per system (registry entry, head, cursor): `sql` upserts its row of
/// (system, body).
fn put_per_system(
    conn: &Connection,
    sql: &str,
    system: &SystemId,
    record: &impl Serialize,
) -> StoreResult<()> {
    put(conn, sql, [system.as_str(), &encode(record)?])
}

/// A record of a system listed in time order: events and decisions share the table layout
/// (system, id, time, body) that `sql` inserts into.
fn put_timed(
    conn: &Connection,
    sql: &str,
    system: &SystemId,
    id: &str,
    at: DateTime<Utc>,
    record: &impl Serialize,
) -> StoreResult<()> {
    put(conn, sql, [system.as_str(), id, &ts(at), &encode(record)?])
}

fn put_generation(conn: &Connection, generation: &Generation) -> StoreResult<()> {
    put(
        conn,
        "INSERT OR REPLACE INTO generations (system_id, generation, body) VALUES (?1, ?2, ?3)",
        params![
            generation.system_id.as_str(),
            int(generation.generation, "generation")?,
            encode(generation)?
        ],
    )
}

fn put_fitness(conn: &Connection, sample: &FitnessSample) -> StoreResult<()> {
    put(
        conn,
        "INSERT OR REPLACE INTO fitness (system_id, generation, sample_id, at, body) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            sample.system_id.as_str(),
            int(sample.generation, "generation")?,
            sample.id,
            ts(sample.received_at),
            encode(sample)?
        ],
    )
}

fn put_history(conn: &Connection, system_id: &SystemId, entry: &HistoryEntry) -> StoreResult<()> {
    put(
        conn,
        "INSERT OR REPLACE INTO history (system_id, generation, body) VALUES (?1, ?2, ?3)",
        params![
            system_id.as_str(),
            int(entry.generation, "generation")?,
            encode(entry)?
        ],
    )
}

fn put_plan(conn: &Connection, plan: &Plan) -> StoreResult<()> {
    put(
        conn,
        "INSERT OR REPLACE INTO plans (system_id, plan_id, body) VALUES (?1, ?2, ?3)",
        [plan.system_id.as_str(), &plan.plan_id, &encode(plan)?],
    )
}

fn put_analysis(conn: &Connection, analysis: &AnalysisRecord) -> StoreResult<()> {
    let body = encode(analysis)?;
    put(
        conn,
        "INSERT OR REPLACE INTO analyses (system_id, analysis_id, body) VALUES (?1, ?2, ?3)",
        [analysis.system_id.as_str(), &analysis.analysis_id, &body],
    )
}

fn put_llm_call(conn: &Connection, call: &LlmCallRecord) -> StoreResult<()> {
    let (id, system) = (call.call_id.as_str(), call.system_id.as_str());
    put(
        conn,
        "INSERT OR REPLACE INTO llm_calls (call_id, system_id, at, body) VALUES (?1, ?2, ?3, ?4)",
        [id, system, &ts(call.at), &encode(call)?],
    )
}
