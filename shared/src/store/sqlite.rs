//! SQLite adapter: the embedded default, one file `<state dir>/evolution.db`.
//!
//! It holds the same logical records as the DynamoDB table. Records are JSON text (so typed
//! values round-trip exactly, as with the gene attribute in DynamoDB) beside the few key columns
//! that conditions and ordering need. Every conditional write runs in one `BEGIN IMMEDIATE`
//! transaction: the write lock is taken before the conditions are read, so two processes sharing
//! the file see the same outcomes DynamoDB's conditional writes would give.
//!
//! The calls block the calling thread. They are short local-disk operations behind one
//! connection, and moving them to a blocking pool would not add throughput to a single writer.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{Connection, ErrorCode, OptionalExtension, Params, TransactionBehavior, params};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{
    BudgetState, CachedAnswer, Checkpoint, CircuitState, Claim, ControlState, EvolutionStore,
    LlmCallRecord, StoreError, StoreResult, SystemRecord, Transaction, Write,
};
use crate::cost::{
    CostLedger, LedgerEntry, LedgerScope, PeriodKey, Reservation, ReserveOutcome, SettleOutcome,
    Settlement, Totals,
};
use crate::domain::{
    Alert, AnalysisRecord, BudgetMode, DecisionRecord, EvolutionEvent, FitnessSample, Generation,
    Head, HistoryEntry, Plan, PlanCursor, SystemId,
};
use crate::llm::performance::PerformanceSnapshot;
use rules::{IdempotencyRecord, Lookup};

/// The database file inside the state directory.
pub const DB_FILE: &str = "evolution.db";

/// How long a writer waits for another process's transaction before reporting `Unavailable`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Schema steps; `PRAGMA user_version` counts how many have been applied. Append, never edit.
const MIGRATIONS: &[&str] = &[SCHEMA_V1];

const SCHEMA_V1: &str = "
CREATE TABLE systems (
    system_id TEXT PRIMARY KEY,
    body      TEXT NOT NULL
);
CREATE TABLE heads (
    system_id TEXT PRIMARY KEY,
    body      TEXT NOT NULL
);
CREATE TABLE generations (
    system_id  TEXT    NOT NULL,
    generation INTEGER NOT NULL,
    body       TEXT    NOT NULL,
    PRIMARY KEY (system_id, generation)
);
CREATE TABLE events (
    system_id TEXT NOT NULL,
    event_id  TEXT NOT NULL,
    at        TEXT NOT NULL,
    body      TEXT NOT NULL,
    PRIMARY KEY (system_id, event_id)
);
CREATE INDEX events_by_time ON events (system_id, at, event_id);
CREATE TABLE decisions (
    system_id   TEXT NOT NULL,
    decision_id TEXT NOT NULL,
    at          TEXT NOT NULL,
    body        TEXT NOT NULL,
    PRIMARY KEY (system_id, decision_id)
);
CREATE INDEX decisions_by_time ON decisions (system_id, at, decision_id);
CREATE TABLE fitness (
    system_id  TEXT    NOT NULL,
    generation INTEGER NOT NULL,
    sample_id  TEXT    NOT NULL,
    at         TEXT    NOT NULL,
    body       TEXT    NOT NULL,
    PRIMARY KEY (system_id, generation, sample_id)
);
CREATE TABLE history (
    system_id  TEXT    NOT NULL,
    generation INTEGER NOT NULL,
    body       TEXT    NOT NULL,
    PRIMARY KEY (system_id, generation)
);
CREATE TABLE plans (
    system_id TEXT NOT NULL,
    plan_id   TEXT NOT NULL,
    body      TEXT NOT NULL,
    PRIMARY KEY (system_id, plan_id)
);
CREATE TABLE cursors (
    system_id TEXT PRIMARY KEY,
    body      TEXT NOT NULL
);
CREATE TABLE analyses (
    system_id   TEXT NOT NULL,
    analysis_id TEXT NOT NULL,
    body        TEXT NOT NULL,
    PRIMARY KEY (system_id, analysis_id)
);
CREATE TABLE llm_calls (
    call_id   TEXT PRIMARY KEY,
    system_id TEXT NOT NULL,
    at        TEXT NOT NULL,
    body      TEXT NOT NULL
);
CREATE INDEX llm_calls_by_time ON llm_calls (at, call_id);
CREATE TABLE alerts (
    alert_id TEXT PRIMARY KEY,
    at       TEXT NOT NULL,
    body     TEXT NOT NULL
);
CREATE INDEX alerts_by_time ON alerts (at, alert_id);
CREATE TABLE control (
    name TEXT PRIMARY KEY,
    body TEXT NOT NULL
);
CREATE TABLE circuits (
    model_id TEXT PRIMARY KEY,
    body     TEXT NOT NULL
);
CREATE TABLE idempotency (
    key   TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    body  TEXT NOT NULL
);
CREATE TABLE counters (
    period TEXT NOT NULL,
    scope  TEXT NOT NULL,
    body   TEXT NOT NULL,
    PRIMARY KEY (period, scope)
);
CREATE TABLE ledger (
    call_id TEXT PRIMARY KEY,
    at      TEXT NOT NULL,
    body    TEXT NOT NULL
);
CREATE INDEX ledger_by_time ON ledger (at, call_id);
";

/// Tables whose rows belong to one system and go when it is purged. The spend audit (ledger,
/// counters, LLM call records) and the global alert feed stay: money spent stays counted.
const SYSTEM_TABLES: [&str; 11] = [
    "systems",
    "heads",
    "generations",
    "events",
    "decisions",
    "fitness",
    "history",
    "plans",
    "cursors",
    "analyses",
    "llm_calls",
];

/// The `control` row holding the budget mode.
const BUDGET_ROW: &str = "budget";

/// The `control` row holding the model performance snapshot.
const PERFORMANCE_ROW: &str = "performance";

/// The evolution store, control state and cost ledger in one SQLite file.
#[derive(Debug)]
pub struct SqliteStore {
    /// `None` for an in-memory database.
    path: Option<PathBuf>,
    conn: Mutex<Connection>,
}

impl SqliteStore {
    /// Opens (creating if needed) `<state_dir>/evolution.db` and brings its schema up to date.
    pub fn open(state_dir: &Path) -> StoreResult<Self> {
        std::fs::create_dir_all(state_dir).map_err(|e| {
            StoreError::Unavailable(format!(
                "cannot create state directory {}: {e}",
                state_dir.display()
            ))
        })?;
        let path = state_dir.join(DB_FILE);
        let conn = Connection::open(&path).sql()?;
        Self::init(conn, Some(path))
    }

    /// A private database that disappears with the store, for tests.
    pub fn open_in_memory() -> StoreResult<Self> {
        Self::init(Connection::open_in_memory().sql()?, None)
    }

    /// The database file, when there is one.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    fn init(mut conn: Connection, path: Option<PathBuf>) -> StoreResult<Self> {
        // The timeout comes first: another process may hold the lock while we switch modes.
        conn.busy_timeout(BUSY_TIMEOUT).sql()?;
        // WAL lets readers proceed while a writer commits. In-memory databases answer "memory".
        let _mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .sql()?;
        // With WAL, NORMAL keeps the file consistent through crashes without an fsync per
        // commit; only a power cut can drop the most recent commits.
        conn.pragma_update(None, "synchronous", "NORMAL").sql()?;
        migrate(&mut conn)?;
        Ok(Self {
            path,
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic mid-transaction rolls the transaction back on drop, so the connection is sound.
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Applies the missing schema steps inside one immediate transaction, so two processes opening a
/// new file at once do not both create the tables.
fn migrate(conn: &mut Connection) -> StoreResult<()> {
    let db = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .sql()?;
    let stored: i64 = db
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .sql()?;
    let applied = usize::try_from(stored).unwrap_or(usize::MAX);
    if applied > MIGRATIONS.len() {
        return Err(StoreError::Corrupt(format!(
            "database schema version {stored} is newer than this build knows ({})",
            MIGRATIONS.len()
        )));
    }
    if applied == MIGRATIONS.len() {
        return Ok(());
    }
    for step in &MIGRATIONS[applied..] {
        db.execute_batch(step).sql()?;
    }
    db.pragma_update(None, "user_version", MIGRATIONS.len() as i64)
        .sql()?;
    db.commit().sql()
}

/// Maps driver errors onto the port's errors: lock contention is transient, like throttling.
fn sql_error(error: &rusqlite::Error) -> StoreError {
    match error.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            StoreError::Unavailable(format!("database busy: {error}"))
        }
        _ => match error {
            rusqlite::Error::FromSqlConversionFailure(..)
            | rusqlite::Error::InvalidColumnType(..) => {
                StoreError::Corrupt(format!("unreadable column: {error}"))
            }
            _ => StoreError::Unavailable(format!("sqlite: {error}")),
        },
    }
}

trait SqlResult<T> {
    fn sql(self) -> StoreResult<T>;
}

impl<T> SqlResult<T> for rusqlite::Result<T> {
    fn sql(self) -> StoreResult<T> {
        self.map_err(|e| sql_error(&e))
    }
}

/// RFC 3339 with nanoseconds and `Z`: fixed width, so text order is time order.
fn ts(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

/// The lower bound of an inclusive `since` filter; the empty string sorts before every time.
fn since_key(since: Option<DateTime<Utc>>) -> String {
    since.map(ts).unwrap_or_default()
}

/// SQLite integers are signed; larger values are refused rather than wrapped.
fn int(value: u64, what: &str) -> StoreResult<i64> {
    i64::try_from(value).map_err(|_| {
        StoreError::Invalid(format!("{what} {value} exceeds the SQLite integer range"))
    })
}

fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

fn encode<T: Serialize>(value: &T) -> StoreResult<String> {
    serde_json::to_string(value)
        .map_err(|e| StoreError::Invalid(format!("record cannot be encoded: {e}")))
}

fn decode<T: DeserializeOwned>(table: &str, body: &str) -> StoreResult<T> {
    serde_json::from_str(body).map_err(|e| StoreError::Corrupt(format!("{table} record: {e}")))
}

/// The single record a query selects (its `body` column), if any.
fn one<T: DeserializeOwned>(
    conn: &Connection,
    table: &str,
    sql: &str,
    params: impl Params,
) -> StoreResult<Option<T>> {
    let body: Option<String> = conn
        .prepare_cached(sql)
        .sql()?
        .query_row(params, |row| row.get(0))
        .optional()
        .sql()?;
    body.map(|b| decode(table, &b)).transpose()
}

/// Every record a query selects (its first column holds the body), in the query's order.
fn many<T: DeserializeOwned>(
    conn: &Connection,
    table: &str,
    sql: &str,
    params: impl Params,
) -> StoreResult<Vec<T>> {
    let mut stmt = conn.prepare_cached(sql).sql()?;
    let bodies = stmt
        .query_map(params, |row| row.get::<_, String>(0))
        .sql()?
        .collect::<Result<Vec<_>, _>>()
        .sql()?;
    bodies.iter().map(|b| decode(table, b)).collect()
}

fn exists(conn: &Connection, sql: &str, params: impl Params) -> StoreResult<bool> {
    Ok(conn
        .prepare_cached(sql)
        .sql()?
        .query_row(params, |_| Ok(()))
        .optional()
        .sql()?
        .is_some())
}

/// Condition reads inside the open immediate transaction.
struct Reader<'a>(&'a Connection);

impl Lookup for Reader<'_> {
    fn system_version(&self, id: &SystemId) -> StoreResult<Option<u64>> {
        let found: Option<SystemRecord> = one(
            self.0,
            "systems",
            "SELECT body FROM systems WHERE system_id = ?1",
            [id.as_str()],
        )?;
        Ok(found.map(|s| s.version))
    }

    fn head(&self, id: &SystemId) -> StoreResult<Option<Head>> {
        read_head(self.0, id)
    }

    fn generation_exists(&self, id: &SystemId, generation: u64) -> StoreResult<bool> {
        let Ok(generation) = i64::try_from(generation) else {
            return Ok(false);
        };
        exists(
            self.0,
            "SELECT 1 FROM generations WHERE system_id = ?1 AND generation = ?2",
            params![id.as_str(), generation],
        )
    }

    fn decision_exists(&self, id: &SystemId, decision_id: &str) -> StoreResult<bool> {
        exists(
            self.0,
            "SELECT 1 FROM decisions WHERE system_id = ?1 AND decision_id = ?2",
            [id.as_str(), decision_id],
        )
    }

    fn plan_exists(&self, id: &SystemId, plan_id: &str) -> StoreResult<bool> {
        exists(
            self.0,
            "SELECT 1 FROM plans WHERE system_id = ?1 AND plan_id = ?2",
            [id.as_str(), plan_id],
        )
    }

    fn cursor_version(&self, id: &SystemId) -> StoreResult<Option<u64>> {
        Ok(read_cursor(self.0, id)?.map(|c| c.version))
    }

    fn budget_mode(&self) -> StoreResult<BudgetMode> {
        Ok(read_budget(self.0)?.mode)
    }
}

fn read_head(conn: &Connection, id: &SystemId) -> StoreResult<Option<Head>> {
    one(
        conn,
        "heads",
        "SELECT body FROM heads WHERE system_id = ?1",
        [id.as_str()],
    )
}

fn read_cursor(conn: &Connection, id: &SystemId) -> StoreResult<Option<PlanCursor>> {
    one(
        conn,
        "cursors",
        "SELECT body FROM cursors WHERE system_id = ?1",
        [id.as_str()],
    )
}

fn read_budget(conn: &Connection) -> StoreResult<BudgetState> {
    Ok(one(
        conn,
        "control",
        "SELECT body FROM control WHERE name = ?1",
        [BUDGET_ROW],
    )?
    .unwrap_or_default())
}

fn read_totals(conn: &Connection, period: &PeriodKey, scope: &LedgerScope) -> StoreResult<Totals> {
    Ok(one(
        conn,
        "counters",
        "SELECT body FROM counters WHERE period = ?1 AND scope = ?2",
        [period.key(), scope.key()],
    )?
    .unwrap_or_default())
}

fn write_totals(
    conn: &Connection,
    period: &PeriodKey,
    scope: &LedgerScope,
    totals: &Totals,
) -> StoreResult<()> {
    conn.prepare_cached(
        "INSERT OR REPLACE INTO counters (period, scope, body) VALUES (?1, ?2, ?3)",
    )
    .sql()?
    .execute([period.key(), scope.key(), encode(totals)?])
    .sql()?;
    Ok(())
}

fn write_idempotency(conn: &Connection, key: &str, record: &IdempotencyRecord) -> StoreResult<()> {
    conn.prepare_cached(
        "INSERT OR REPLACE INTO idempotency (key, state, body) VALUES (?1, ?2, ?3)",
    )
    .sql()?
    .execute([key, record.state(), &encode(record)?])
    .sql()?;
    Ok(())
}

/// Runs one statement; conditions were checked before, so every write is an upsert.
fn put(conn: &Connection, sql: &str, params: impl Params) -> StoreResult<()> {
    conn.prepare_cached(sql).sql()?.execute(params).sql()?;
    Ok(())
}

fn put_system(conn: &Connection, system: &SystemRecord) -> StoreResult<()> {
    put(
        conn,
        "INSERT OR REPLACE INTO systems (system_id, body) VALUES (?1, ?2)",
        [system.system_id.as_str(), &encode(system)?],
    )
}

fn put_head(conn: &Connection, head: &Head) -> StoreResult<()> {
    put(
        conn,
        "INSERT OR REPLACE INTO heads (system_id, body) VALUES (?1, ?2)",
        [head.system_id.as_str(), &encode(head)?],
    )
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

fn apply(conn: &Connection, write: &Write) -> StoreResult<()> {
    match write {
        Write::CreateSystem {
            system,
            head,
            generation,
        } => {
            put_system(conn, system)?;
            put_head(conn, head)?;
            put_generation(conn, generation)
        }
        Write::PutSystem { system } => put_system(
            conn,
            &SystemRecord {
                version: system.version + 1,
                ..system.clone()
            },
        ),
        Write::PutGeneration { generation } => put_generation(conn, generation),
        Write::UpdateHead { head, .. } | Write::ResolveApproval { head, .. } => {
            put_head(conn, head)
        }
        Write::PutEvent { event } => put(
            conn,
            "INSERT OR REPLACE INTO events (system_id, event_id, at, body) VALUES (?1, ?2, ?3, ?4)",
            [
                rules::event_system(event)?.as_str(),
                &event.id,
                &ts(event.timestamp),
                &encode(event)?,
            ],
        ),
        Write::PutDecision { decision } => put(
            conn,
            "INSERT OR REPLACE INTO decisions (system_id, decision_id, at, body) \
             VALUES (?1, ?2, ?3, ?4)",
            [
                rules::decision_system(decision)?.as_str(),
                &decision.decision_id,
                &ts(decision.timestamp),
                &encode(decision)?,
            ],
        ),
        Write::PutFitnessSample { sample } => put(
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
        ),
        Write::PutHistory { system_id, entry } => put(
            conn,
            "INSERT OR REPLACE INTO history (system_id, generation, body) VALUES (?1, ?2, ?3)",
            params![
                system_id.as_str(),
                int(entry.generation, "generation")?,
                encode(entry)?
            ],
        ),
        Write::PutPlan { plan } => put(
            conn,
            "INSERT OR REPLACE INTO plans (system_id, plan_id, body) VALUES (?1, ?2, ?3)",
            [plan.system_id.as_str(), &plan.plan_id, &encode(plan)?],
        ),
        Write::PutCursor { cursor, .. } => put(
            conn,
            "INSERT OR REPLACE INTO cursors (system_id, body) VALUES (?1, ?2)",
            [cursor.system_id.as_str(), &encode(cursor)?],
        ),
        Write::PutAnalysis { analysis } => put(
            conn,
            "INSERT OR REPLACE INTO analyses (system_id, analysis_id, body) VALUES (?1, ?2, ?3)",
            [
                analysis.system_id.as_str(),
                &analysis.analysis_id,
                &encode(analysis)?,
            ],
        ),
        Write::PutLlmCall { call } => put(
            conn,
            "INSERT OR REPLACE INTO llm_calls (call_id, system_id, at, body) \
             VALUES (?1, ?2, ?3, ?4)",
            [
                call.call_id.as_str(),
                call.system_id.as_str(),
                &ts(call.at),
                &encode(call)?,
            ],
        ),
        Write::PutAlert { alert } => put(
            conn,
            "INSERT OR REPLACE INTO alerts (alert_id, at, body) VALUES (?1, ?2, ?3)",
            [alert.id.as_str(), &ts(alert.at), &encode(alert)?],
        ),
        Write::SetBudgetMode { state, .. } => put(
            conn,
            "INSERT OR REPLACE INTO control (name, body) VALUES (?1, ?2)",
            [BUDGET_ROW, &encode(state)?],
        ),
        Write::RecordPrediction {
            model_id,
            role,
            predicted,
            actual,
        } => {
            let mut perf: PerformanceSnapshot = one(
                conn,
                "control",
                "SELECT body FROM control WHERE name = ?1",
                [PERFORMANCE_ROW],
            )?
            .unwrap_or_default();
            perf.record_prediction(model_id, *role, *predicted, *actual);
            put(
                conn,
                "INSERT OR REPLACE INTO control (name, body) VALUES (?1, ?2)",
                [PERFORMANCE_ROW, &encode(&perf)?],
            )
        }
    }
}

#[async_trait]
impl EvolutionStore for SqliteStore {
    async fn get_system(&self, id: &SystemId) -> StoreResult<Option<SystemRecord>> {
        one(
            &self.conn(),
            "systems",
            "SELECT body FROM systems WHERE system_id = ?1",
            [id.as_str()],
        )
    }

    async fn list_systems(&self) -> StoreResult<Vec<SystemRecord>> {
        many(
            &self.conn(),
            "systems",
            "SELECT body FROM systems ORDER BY system_id",
            [],
        )
    }

    async fn list_systems_page(
        &self,
        after: Option<&SystemId>,
        limit: usize,
    ) -> StoreResult<Vec<SystemRecord>> {
        many(
            &self.conn(),
            "systems",
            "SELECT body FROM systems WHERE system_id > ?1 ORDER BY system_id LIMIT ?2",
            params![
                after.map_or("", SystemId::as_str),
                i64::try_from(limit).unwrap_or(i64::MAX)
            ],
        )
    }

    async fn get_head(&self, id: &SystemId) -> StoreResult<Option<Head>> {
        read_head(&self.conn(), id)
    }

    async fn get_generation(
        &self,
        id: &SystemId,
        generation: u64,
    ) -> StoreResult<Option<Generation>> {
        let Ok(generation) = i64::try_from(generation) else {
            return Ok(None);
        };
        one(
            &self.conn(),
            "generations",
            "SELECT body FROM generations WHERE system_id = ?1 AND generation = ?2",
            params![id.as_str(), generation],
        )
    }

    async fn list_generations(
        &self,
        id: &SystemId,
        after: Option<u64>,
        limit: usize,
    ) -> StoreResult<Vec<Generation>> {
        let after = match after.map(i64::try_from) {
            None => -1,
            Some(Ok(after)) => after,
            // Nothing can be stored after a generation beyond the integer range.
            Some(Err(_)) => return Ok(Vec::new()),
        };
        many(
            &self.conn(),
            "generations",
            "SELECT body FROM generations WHERE system_id = ?1 AND generation > ?2 \
             ORDER BY generation LIMIT ?3",
            params![id.as_str(), after, sql_limit(limit)],
        )
    }

    async fn list_events(
        &self,
        id: &SystemId,
        since: Option<DateTime<Utc>>,
        limit: usize,
    ) -> StoreResult<Vec<EvolutionEvent>> {
        many(
            &self.conn(),
            "events",
            "SELECT body FROM events WHERE system_id = ?1 AND at >= ?2 \
             ORDER BY at, event_id LIMIT ?3",
            params![id.as_str(), since_key(since), sql_limit(limit)],
        )
    }

    async fn get_decision(
        &self,
        id: &SystemId,
        decision_id: &str,
    ) -> StoreResult<Option<DecisionRecord>> {
        one(
            &self.conn(),
            "decisions",
            "SELECT body FROM decisions WHERE system_id = ?1 AND decision_id = ?2",
            [id.as_str(), decision_id],
        )
    }

    async fn list_decisions(
        &self,
        id: &SystemId,
        since: Option<DateTime<Utc>>,
        limit: usize,
    ) -> StoreResult<Vec<DecisionRecord>> {
        many(
            &self.conn(),
            "decisions",
            "SELECT body FROM decisions WHERE system_id = ?1 AND at >= ?2 \
             ORDER BY at, decision_id LIMIT ?3",
            params![id.as_str(), since_key(since), sql_limit(limit)],
        )
    }

    async fn list_fitness(
        &self,
        id: &SystemId,
        generation: u64,
    ) -> StoreResult<Vec<FitnessSample>> {
        let Ok(generation) = i64::try_from(generation) else {
            return Ok(Vec::new());
        };
        many(
            &self.conn(),
            "fitness",
            "SELECT body FROM fitness WHERE system_id = ?1 AND generation = ?2 \
             ORDER BY at, sample_id",
            params![id.as_str(), generation],
        )
    }

    async fn list_history(&self, id: &SystemId, limit: usize) -> StoreResult<Vec<HistoryEntry>> {
        let mut latest: Vec<HistoryEntry> = many(
            &self.conn(),
            "history",
            "SELECT body FROM history WHERE system_id = ?1 ORDER BY generation DESC LIMIT ?2",
            params![id.as_str(), sql_limit(limit)],
        )?;
        latest.reverse();
        Ok(latest)
    }

    async fn get_plan(&self, id: &SystemId, plan_id: &str) -> StoreResult<Option<Plan>> {
        one(
            &self.conn(),
            "plans",
            "SELECT body FROM plans WHERE system_id = ?1 AND plan_id = ?2",
            [id.as_str(), plan_id],
        )
    }

    async fn get_cursor(&self, id: &SystemId) -> StoreResult<Option<PlanCursor>> {
        read_cursor(&self.conn(), id)
    }

    async fn get_analysis(
        &self,
        id: &SystemId,
        analysis_id: &str,
    ) -> StoreResult<Option<AnalysisRecord>> {
        one(
            &self.conn(),
            "analyses",
            "SELECT body FROM analyses WHERE system_id = ?1 AND analysis_id = ?2",
            [id.as_str(), analysis_id],
        )
    }

    async fn list_llm_calls(
        &self,
        id: Option<&SystemId>,
        since: Option<DateTime<Utc>>,
    ) -> StoreResult<Vec<LlmCallRecord>> {
        many(
            &self.conn(),
            "llm_calls",
            "SELECT body FROM llm_calls WHERE (?1 IS NULL OR system_id = ?1) AND at >= ?2 \
             ORDER BY at, call_id",
            params![id.map(SystemId::as_str), since_key(since)],
        )
    }

    async fn list_alerts(
        &self,
        since: Option<DateTime<Utc>>,
        limit: usize,
    ) -> StoreResult<Vec<Alert>> {
        many(
            &self.conn(),
            "alerts",
            "SELECT body FROM alerts WHERE at >= ?1 ORDER BY at, alert_id LIMIT ?2",
            params![since_key(since), sql_limit(limit)],
        )
    }

    async fn claim(
        &self,
        key: &str,
        payload_hash: &str,
        now: DateTime<Utc>,
        in_progress_until: DateTime<Utc>,
    ) -> StoreResult<Claim> {
        let mut conn = self.conn();
        let db = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .sql()?;
        let existing: Option<IdempotencyRecord> = one(
            &db,
            "idempotency",
            "SELECT body FROM idempotency WHERE key = ?1",
            [key],
        )?;
        let outcome = rules::claim_outcome(existing.as_ref(), payload_hash, now);
        if outcome == Claim::Claimed {
            write_idempotency(
                &db,
                key,
                &IdempotencyRecord::in_progress(payload_hash, in_progress_until),
            )?;
            db.commit().sql()?;
        }
        Ok(outcome)
    }

    async fn release(&self, key: &str) -> StoreResult<()> {
        put(
            &self.conn(),
            "DELETE FROM idempotency WHERE key = ?1 AND state = ?2",
            [key, rules::IN_PROGRESS],
        )
    }

    async fn commit(&self, tx: Transaction) -> StoreResult<()> {
        rules::check_shape(&tx)?;
        let mut conn = self.conn();
        let db = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .sql()?;
        // Dropping `db` on an early return rolls back: nothing of a refused transaction lands.
        rules::check_conditions(&tx, &Reader(&db))?;
        for write in &tx.writes {
            apply(&db, write)?;
        }
        if let Some(completion) = &tx.completion {
            write_idempotency(
                &db,
                &completion.key,
                &IdempotencyRecord::completed(completion, &tx.writes),
            )?;
        }
        db.commit().sql()
    }

    async fn mark_sent(&self, key: &str, expires_at: DateTime<Utc>) -> StoreResult<()> {
        let mut conn = self.conn();
        let db = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .sql()?;
        let existing: Option<IdempotencyRecord> = one(
            &db,
            "idempotency",
            "SELECT body FROM idempotency WHERE key = ?1",
            [key],
        )?;
        if let Some(mut record) = existing {
            record.mark_sent();
            record.keep_until(expires_at);
            write_idempotency(&db, key, &record)?;
            db.commit().sql()?;
        }
        Ok(())
    }

    async fn purge_system(&self, id: &SystemId) -> StoreResult<()> {
        let mut conn = self.conn();
        let db = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .sql()?;
        for table in SYSTEM_TABLES {
            put(
                &db,
                &format!("DELETE FROM {table} WHERE system_id = ?1"),
                [id.as_str()],
            )?;
        }
        put(
            &db,
            "DELETE FROM idempotency WHERE state = ?1 AND EXISTS \
             (SELECT 1 FROM json_each(idempotency.body, '$.systems') WHERE json_each.value = ?2)",
            [rules::COMPLETED, id.as_str()],
        )?;
        db.commit().sql()
    }
}

#[async_trait]
impl ControlState for SqliteStore {
    async fn budget_state(&self) -> StoreResult<BudgetState> {
        read_budget(&self.conn())
    }

    async fn circuit(&self, model_id: &str) -> StoreResult<Option<CircuitState>> {
        one(
            &self.conn(),
            "circuits",
            "SELECT body FROM circuits WHERE model_id = ?1",
            [model_id],
        )
    }

    async fn put_circuit(&self, state: &CircuitState) -> StoreResult<()> {
        put(
            &self.conn(),
            "INSERT OR REPLACE INTO circuits (model_id, body) VALUES (?1, ?2)",
            [state.model_id.as_str(), &encode(state)?],
        )
    }

    async fn performance(&self) -> StoreResult<PerformanceSnapshot> {
        Ok(one(
            &self.conn(),
            "control",
            "SELECT body FROM control WHERE name = ?1",
            [PERFORMANCE_ROW],
        )?
        .unwrap_or_default())
    }

    async fn put_performance(&self, snapshot: &PerformanceSnapshot) -> StoreResult<()> {
        put(
            &self.conn(),
            "INSERT OR REPLACE INTO control (name, body) VALUES (?1, ?2)",
            [PERFORMANCE_ROW, &encode(snapshot)?],
        )
    }

    async fn checkpoint(&self, key: &str, now: DateTime<Utc>) -> StoreResult<Option<Checkpoint>> {
        let found: Option<Checkpoint> = one(
            &self.conn(),
            "control",
            "SELECT body FROM control WHERE name = ?1",
            [format!("{CHECKPOINT_PREFIX}{key}")],
        )?;
        Ok(found.filter(|c| c.expires_at > now))
    }

    async fn put_checkpoint(&self, checkpoint: &Checkpoint) -> StoreResult<()> {
        put(
            &self.conn(),
            "INSERT OR REPLACE INTO control (name, body) VALUES (?1, ?2)",
            [
                format!("{CHECKPOINT_PREFIX}{}", checkpoint.key),
                encode(checkpoint)?,
            ],
        )
    }

    async fn cached_answer(
        &self,
        key: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<CachedAnswer>> {
        let found: Option<CachedAnswer> = one(
            &self.conn(),
            "control",
            "SELECT body FROM control WHERE name = ?1",
            [format!("{CACHE_PREFIX}{key}")],
        )?;
        Ok(found.filter(|c| c.expires_at > now))
    }

    async fn put_cached_answer(&self, entry: &CachedAnswer) -> StoreResult<()> {
        let conn = self.conn();
        // Expired entries are never read; drop them as new ones arrive so the file stays small.
        put(
            &conn,
            "DELETE FROM control WHERE name LIKE 'cache:%' \
             AND julianday(json_extract(body, '$.expires_at')) < julianday(?1)",
            [ts(entry.stored_at)],
        )?;
        put(
            &conn,
            "INSERT OR REPLACE INTO control (name, body) VALUES (?1, ?2)",
            [format!("{CACHE_PREFIX}{}", entry.key), encode(entry)?],
        )
    }
}

/// Prefix of the `control` rows holding LLM answer checkpoints.
const CHECKPOINT_PREFIX: &str = "checkpoint:";

/// Prefix of the `control` rows holding response-cache entries.
const CACHE_PREFIX: &str = "cache:";

#[async_trait]
impl CostLedger for SqliteStore {
    async fn reserve(&self, reservation: &Reservation) -> StoreResult<ReserveOutcome> {
        let mut conn = self.conn();
        let db = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .sql()?;
        if let Some(refused) =
            rules::refusal(reservation, |period, scope| read_totals(&db, period, scope))?
        {
            return Ok(refused);
        }
        for (period, scope) in rules::counters(
            &reservation.system_id,
            &reservation.model_id,
            reservation.at,
        ) {
            let mut totals = read_totals(&db, &period, &scope)?;
            rules::hold(&mut totals, reservation.amount_nano);
            write_totals(&db, &period, &scope, &totals)?;
        }
        db.commit().sql()?;
        Ok(ReserveOutcome::Reserved)
    }

    async fn settle(&self, settlement: &Settlement) -> StoreResult<SettleOutcome> {
        let mut conn = self.conn();
        let db = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .sql()?;
        if exists(
            &db,
            "SELECT 1 FROM ledger WHERE call_id = ?1",
            [settlement.call_id.as_str()],
        )? {
            return Ok(SettleOutcome::AlreadySettled);
        }
        for (period, scope) in rules::counters(
            &settlement.system_id,
            &settlement.model_id,
            settlement.reserved_at,
        ) {
            let mut totals = read_totals(&db, &period, &scope)?;
            rules::settle_into(&mut totals, settlement);
            write_totals(&db, &period, &scope, &totals)?;
        }
        let entry = rules::ledger_entry(settlement);
        put(
            &db,
            "INSERT INTO ledger (call_id, at, body) VALUES (?1, ?2, ?3)",
            [entry.call_id.as_str(), &ts(entry.at), &encode(&entry)?],
        )?;
        db.commit().sql()?;
        Ok(SettleOutcome::Settled)
    }

    async fn totals(&self, period: PeriodKey, scope: &LedgerScope) -> StoreResult<Totals> {
        read_totals(&self.conn(), &period, scope)
    }

    async fn entries(&self, since: Option<DateTime<Utc>>) -> StoreResult<Vec<LedgerEntry>> {
        many(
            &self.conn(),
            "ledger",
            "SELECT body FROM ledger WHERE at >= ?1 ORDER BY at, call_id",
            [since_key(since)],
        )
    }
}

/// The rules every adapter applies: write shapes, conditions, claims and ledger arithmetic.
///
/// They live here, in the adapter that is always compiled, so the in-memory fake evaluates the
/// very same rules instead of a copy that could drift from them.
pub(super) mod rules {
    use std::collections::BTreeSet;

    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Serialize};

    use crate::cost::{
        BudgetLimit, LedgerEntry, LedgerScope, PeriodKey, Reservation, ReserveOutcome, Settlement,
        Totals,
    };
    use crate::domain::{
        BudgetMode, BudgetPeriod, BudgetScope, DecisionRecord, EvolutionEvent, Head, Outgoing,
        SystemId,
    };
    use crate::store::{Claim, Completion, StoreError, StoreResult, Transaction, Write};

    /// The stored `state` of a claim that is still being processed.
    pub(in crate::store) const IN_PROGRESS: &str = "in_progress";
    pub(in crate::store) const COMPLETED: &str = "completed";

    /// An idempotency record (DynamoDB `PK=IDEMP#<envelope id>`).
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(tag = "state", rename_all = "snake_case")]
    pub(in crate::store) enum IdempotencyRecord {
        InProgress {
            payload_hash: String,
            until: DateTime<Utc>,
        },
        Completed {
            payload_hash: String,
            outgoing: Vec<Outgoing>,
            completed_at: DateTime<Utc>,
            expires_at: DateTime<Utc>,
            /// Systems the transaction wrote or messaged, so purging a system forgets the
            /// messages it processed and a fresh start with the same message ids runs again.
            #[serde(default, skip_serializing_if = "Vec::is_empty")]
            systems: Vec<SystemId>,
            /// The outgoing messages left: a duplicate re-sends them only while this is false.
            #[serde(default)]
            sent: bool,
        },
    }

    impl IdempotencyRecord {
        pub(in crate::store) fn in_progress(payload_hash: &str, until: DateTime<Utc>) -> Self {
            Self::InProgress {
                payload_hash: payload_hash.to_owned(),
                until,
            }
        }

        pub(in crate::store) fn completed(completion: &Completion, writes: &[Write]) -> Self {
            let systems: BTreeSet<SystemId> = writes
                .iter()
                .filter_map(owner)
                .chain(completion.outgoing.iter().map(|o| &o.envelope.system_id))
                .cloned()
                .collect();
            Self::Completed {
                payload_hash: completion.payload_hash.clone(),
                outgoing: completion.outgoing.clone(),
                completed_at: completion.completed_at,
                expires_at: completion.expires_at,
                systems: systems.into_iter().collect(),
                sent: false,
            }
        }

        /// Records that the outbox was sent.
        pub(in crate::store) fn mark_sent(&mut self) {
            if let Self::Completed { sent, .. } = self {
                *sent = true;
            }
        }

        /// Moves a completed record's expiry (`mark_sent` shortens it to the dedup window).
        pub(in crate::store) fn keep_until(&mut self, until: DateTime<Utc>) {
            if let Self::Completed { expires_at, .. } = self {
                *expires_at = until;
            }
        }

        pub(in crate::store) fn state(&self) -> &'static str {
            match self {
                Self::InProgress { .. } => IN_PROGRESS,
                Self::Completed { .. } => COMPLETED,
            }
        }
    }

    /// What claiming a key finds. `Claimed` means the caller must now store an in-progress record;
    /// an expired record counts as absent, as an item past its DynamoDB TTL would.
    pub(in crate::store) fn claim_outcome(
        existing: Option<&IdempotencyRecord>,
        payload_hash: &str,
        now: DateTime<Utc>,
    ) -> Claim {
        match existing {
            Some(IdempotencyRecord::InProgress { until, .. }) if *until > now => {
                Claim::InProgress { until: *until }
            }
            Some(IdempotencyRecord::Completed {
                payload_hash: stored,
                outgoing,
                expires_at,
                sent,
                ..
            }) if *expires_at > now => {
                if stored == payload_hash {
                    Claim::Completed {
                        outgoing: if *sent { Vec::new() } else { outgoing.clone() },
                    }
                } else {
                    Claim::PayloadMismatch
                }
            }
            _ => Claim::Claimed,
        }
    }

    /// Reads an adapter offers for evaluating conditions against the state before a transaction.
    pub(in crate::store) trait Lookup {
        /// The stored registry entry's version, `None` when the system does not exist.
        fn system_version(&self, id: &SystemId) -> StoreResult<Option<u64>>;
        fn system_exists(&self, id: &SystemId) -> StoreResult<bool> {
            Ok(self.system_version(id)?.is_some())
        }
        fn head(&self, id: &SystemId) -> StoreResult<Option<Head>>;
        fn generation_exists(&self, id: &SystemId, generation: u64) -> StoreResult<bool>;
        fn decision_exists(&self, id: &SystemId, decision_id: &str) -> StoreResult<bool>;
        fn plan_exists(&self, id: &SystemId, plan_id: &str) -> StoreResult<bool>;
        fn cursor_version(&self, id: &SystemId) -> StoreResult<Option<u64>>;
        /// The stored mode, `Normal` when it was never set.
        fn budget_mode(&self) -> StoreResult<BudgetMode>;
    }

    /// Events are stored under their system; the port lets the field be empty for seed fixtures.
    pub(in crate::store) fn event_system(event: &EvolutionEvent) -> StoreResult<&SystemId> {
        event.system_id.as_ref().ok_or_else(|| {
            StoreError::Invalid(format!(
                "event {} has no system_id to store it under",
                event.id
            ))
        })
    }

    pub(in crate::store) fn decision_system(decision: &DecisionRecord) -> StoreResult<&SystemId> {
        decision.system_id.as_ref().ok_or_else(|| {
            StoreError::Invalid(format!(
                "decision {} has no system_id to store it under",
                decision.decision_id
            ))
        })
    }

    /// The system whose records a write changes, if it belongs to one.
    fn owner(write: &Write) -> Option<&SystemId> {
        match write {
            Write::CreateSystem { system, .. } | Write::PutSystem { system } => {
                Some(&system.system_id)
            }
            Write::PutGeneration { generation } => Some(&generation.system_id),
            Write::UpdateHead { head, .. } | Write::ResolveApproval { head, .. } => {
                Some(&head.system_id)
            }
            Write::PutEvent { event } => event.system_id.as_ref(),
            Write::PutDecision { decision } => decision.system_id.as_ref(),
            Write::PutFitnessSample { sample } => Some(&sample.system_id),
            Write::PutHistory { system_id, .. } => Some(system_id),
            Write::PutPlan { plan } => Some(&plan.system_id),
            Write::PutCursor { cursor, .. } => Some(&cursor.system_id),
            Write::PutAnalysis { analysis } => Some(&analysis.system_id),
            Write::PutLlmCall { call } => Some(&call.system_id),
            Write::PutAlert { alert } => alert.system_id.as_ref(),
            Write::SetBudgetMode { .. } | Write::RecordPrediction { .. } => None,
        }
    }

    fn op(write: &Write) -> &'static str {
        match write {
            Write::CreateSystem { .. } => "create_system",
            Write::PutSystem { .. } => "put_system",
            Write::PutGeneration { .. } => "put_generation",
            Write::UpdateHead { .. } => "update_head",
            Write::ResolveApproval { .. } => "resolve_approval",
            Write::PutEvent { .. } => "put_event",
            Write::PutDecision { .. } => "put_decision",
            Write::PutFitnessSample { .. } => "put_fitness_sample",
            Write::PutHistory { .. } => "put_history",
            Write::PutPlan { .. } => "put_plan",
            Write::PutCursor { .. } => "put_cursor",
            Write::PutAnalysis { .. } => "put_analysis",
            Write::PutLlmCall { .. } => "put_llm_call",
            Write::PutAlert { .. } => "put_alert",
            Write::SetBudgetMode { .. } => "set_budget_mode",
            Write::RecordPrediction { .. } => "record_prediction",
        }
    }

    fn sys(id: &SystemId) -> String {
        format!("SYS#{id}")
    }

    /// The items a write touches, named by their DynamoDB keys; the first is the conditioned one.
    fn item_keys(write: &Write) -> StoreResult<Vec<String>> {
        let keys = match write {
            Write::CreateSystem {
                system,
                head,
                generation,
            } => {
                let id = &system.system_id;
                if head.system_id != *id || generation.system_id != *id {
                    return Err(StoreError::Invalid(format!(
                        "create_system {id}: head and generation must belong to the system"
                    )));
                }
                vec![
                    format!("SYSTEMS/{id}"),
                    format!("{}/HEAD", sys(id)),
                    format!("{}/GEN#{:020}", sys(id), generation.generation),
                ]
            }
            Write::PutSystem { system } => vec![format!("SYSTEMS/{}", system.system_id)],
            Write::PutGeneration { generation } => vec![format!(
                "{}/GEN#{:020}",
                sys(&generation.system_id),
                generation.generation
            )],
            Write::UpdateHead { head, .. } | Write::ResolveApproval { head, .. } => {
                vec![format!("{}/HEAD", sys(&head.system_id))]
            }
            Write::PutEvent { event } => {
                vec![format!("{}/EVT#{}", sys(event_system(event)?), event.id)]
            }
            Write::PutDecision { decision } => vec![format!(
                "{}/DEC#{}",
                sys(decision_system(decision)?),
                decision.decision_id
            )],
            Write::PutFitnessSample { sample } => vec![format!(
                "{}/FIT#{:020}#{}",
                sys(&sample.system_id),
                sample.generation,
                sample.id
            )],
            Write::PutHistory { system_id, entry } => {
                vec![format!("{}/HIST#{:020}", sys(system_id), entry.generation)]
            }
            Write::PutPlan { plan } => {
                vec![format!("{}/PLAN#{}", sys(&plan.system_id), plan.plan_id)]
            }
            Write::PutCursor { cursor, .. } => vec![format!("{}/CURSOR", sys(&cursor.system_id))],
            Write::PutAnalysis { analysis } => vec![format!(
                "{}/ANALYSIS#{}",
                sys(&analysis.system_id),
                analysis.analysis_id
            )],
            Write::PutLlmCall { call } => vec![format!("LLM#{}", call.call_id)],
            Write::PutAlert { alert } => vec![format!("ALERT#{}", alert.id)],
            Write::SetBudgetMode { .. } => vec!["CTRL/BUDGET".to_owned()],
            // Several predictions may fold into the one record in a transaction.
            Write::RecordPrediction { .. } => vec![],
        };
        Ok(keys)
    }

    /// Refuses malformed writes and, like `TransactWriteItems`, a transaction that touches one
    /// item twice (the outcome would depend on the order writes are applied in).
    pub(in crate::store) fn check_shape(tx: &Transaction) -> StoreResult<()> {
        let mut seen = BTreeSet::new();
        let completion = tx
            .completion
            .iter()
            .map(|c| (None, format!("IDEMP#{}", c.key)));
        let writes = tx
            .writes
            .iter()
            .enumerate()
            .map(|(i, w)| Ok((i, w, item_keys(w)?)))
            .collect::<StoreResult<Vec<_>>>()?;
        let keyed = writes
            .iter()
            .flat_map(|(i, w, keys)| keys.iter().map(move |k| (Some((*i, op(w))), k.clone())))
            .chain(completion);
        for (write, key) in keyed {
            if !seen.insert(key.clone()) {
                let who = write.map_or_else(
                    || "the completion".to_owned(),
                    |(i, op)| format!("write {i} ({op})"),
                );
                return Err(StoreError::Invalid(format!(
                    "{who} touches {key} again: a transaction may touch an item once"
                )));
            }
        }
        Ok(())
    }

    /// Evaluates every write's condition against the state before the transaction; the first
    /// failure names the write and its key.
    pub(in crate::store) fn check_conditions(
        tx: &Transaction,
        view: &impl Lookup,
    ) -> StoreResult<()> {
        for (i, write) in tx.writes.iter().enumerate() {
            if let Some(reason) = failed_condition(write, view)? {
                let key = item_keys(write)?.into_iter().next().unwrap_or_default();
                return Err(StoreError::ConditionFailed(format!(
                    "write {i} ({} {key}): {reason}",
                    op(write)
                )));
            }
        }
        Ok(())
    }

    /// Why the write's condition fails, or `None` when it holds (or there is none).
    fn failed_condition(write: &Write, view: &impl Lookup) -> StoreResult<Option<String>> {
        let reason = match write {
            Write::CreateSystem { system, .. } => view
                .system_exists(&system.system_id)?
                .then(|| format!("system {} exists", system.system_id)),
            Write::PutSystem { system } => match view.system_version(&system.system_id)? {
                None => {
                    return Err(StoreError::Invalid(format!(
                        "put_system: system {} does not exist",
                        system.system_id
                    )));
                }
                Some(stored) => (stored != system.version).then(|| {
                    format!(
                        "registry entry of {} at version {} (stored: {stored})",
                        system.system_id, system.version
                    )
                }),
            },
            Write::PutGeneration { generation } => view
                .generation_exists(&generation.system_id, generation.generation)?
                .then(|| format!("generation {} exists", generation.generation)),
            Write::UpdateHead {
                expected_generation,
                expected_status,
                head,
            } => match view.head(&head.system_id)? {
                None => Some(format!("system {} has no head", head.system_id)),
                Some(stored)
                    if stored.generation == *expected_generation
                        && stored.status == *expected_status =>
                {
                    None
                }
                Some(stored) => Some(format!(
                    "head is at generation {} ({}), expected {expected_generation} ({})",
                    stored.generation,
                    stored.status.as_str(),
                    expected_status.as_str()
                )),
            },
            Write::ResolveApproval {
                expected_generation,
                decision_id,
                head,
            } => match view.head(&head.system_id)? {
                None => Some(format!("system {} has no head", head.system_id)),
                Some(stored)
                    if stored.generation == *expected_generation
                        && stored.status == crate::domain::HeadStatus::AwaitingApproval
                        && stored
                            .approval
                            .as_ref()
                            .is_some_and(|a| a.decision_id == *decision_id) =>
                {
                    None
                }
                Some(stored) => Some(format!(
                    "head is at generation {} ({}, holding {}), expected {expected_generation} \
                     awaiting approval of {decision_id}",
                    stored.generation,
                    stored.status.as_str(),
                    stored
                        .approval
                        .as_ref()
                        .map_or("no decision", |a| a.decision_id.as_str()),
                )),
            },
            Write::PutDecision { decision } => view
                .decision_exists(decision_system(decision)?, &decision.decision_id)?
                .then(|| format!("decision {} exists", decision.decision_id)),
            Write::PutPlan { plan } => view
                .plan_exists(&plan.system_id, &plan.plan_id)?
                .then(|| format!("plan {} exists", plan.plan_id)),
            Write::PutCursor {
                expected_version,
                cursor,
            } => match (expected_version, view.cursor_version(&cursor.system_id)?) {
                (None, None) => None,
                (None, Some(stored)) => Some(format!("cursor exists at version {stored}")),
                (Some(expected), None) => Some(format!("no cursor, expected version {expected}")),
                (Some(expected), Some(stored)) => (*expected != stored)
                    .then(|| format!("cursor is at version {stored}, expected {expected}")),
            },
            Write::SetBudgetMode { expected, .. } => {
                let stored = view.budget_mode()?;
                (stored != *expected).then(|| {
                    format!(
                        "budget mode is {}, expected {}",
                        stored.as_str(),
                        expected.as_str()
                    )
                })
            }
            Write::PutEvent { .. }
            | Write::PutFitnessSample { .. }
            | Write::PutHistory { .. }
            | Write::PutAnalysis { .. }
            | Write::PutLlmCall { .. }
            | Write::PutAlert { .. }
            | Write::RecordPrediction { .. } => None,
        };
        Ok(reason)
    }

    /// The counters a call moves: total, its system and its model, in the day and the month of
    /// `at` (UTC).
    pub(in crate::store) fn counters(
        system_id: &SystemId,
        model_id: &str,
        at: DateTime<Utc>,
    ) -> Vec<(PeriodKey, LedgerScope)> {
        let scopes = [
            LedgerScope::Total,
            LedgerScope::System(system_id.clone()),
            LedgerScope::Model(model_id.to_owned()),
        ];
        [BudgetPeriod::Day, BudgetPeriod::Month]
            .into_iter()
            .flat_map(|period| {
                scopes
                    .iter()
                    .map(move |scope| (PeriodKey::of(period, at), scope.clone()))
            })
            .collect()
    }

    /// The counter a budget limit is measured against.
    fn limit_counter(limit: &BudgetLimit, reservation: &Reservation) -> (PeriodKey, LedgerScope) {
        let scope = match limit.scope {
            BudgetScope::Global => LedgerScope::Total,
            BudgetScope::System => LedgerScope::System(reservation.system_id.clone()),
        };
        (PeriodKey::of(limit.period, reservation.at), scope)
    }

    /// The refusal for the first limit the reservation would exceed, if any. Overflow counts as
    /// exceeding: no budget is that large.
    pub(in crate::store) fn refusal(
        reservation: &Reservation,
        mut totals: impl FnMut(&PeriodKey, &LedgerScope) -> StoreResult<Totals>,
    ) -> StoreResult<Option<ReserveOutcome>> {
        for limit in &reservation.limits {
            let (period, scope) = limit_counter(limit, reservation);
            let counter = totals(&period, &scope)?;
            let committed = counter.spent_nano.saturating_add(counter.reserved_nano);
            let fits = committed
                .checked_add(reservation.amount_nano)
                .is_some_and(|after| after <= limit.limit_nano);
            if !fits {
                return Ok(Some(ReserveOutcome::Refused {
                    scope: limit.scope,
                    period: limit.period,
                    committed_nano: committed,
                    limit_nano: limit.limit_nano,
                }));
            }
        }
        Ok(None)
    }

    pub(in crate::store) fn hold(totals: &mut Totals, amount_nano: u64) {
        totals.reserved_nano = totals.reserved_nano.saturating_add(amount_nano);
    }

    /// Releases the hold and counts the actual cost in one counter.
    pub(in crate::store) fn settle_into(totals: &mut Totals, settlement: &Settlement) {
        totals.reserved_nano = totals
            .reserved_nano
            .saturating_sub(settlement.reserved_nano);
        totals.spent_nano = totals.spent_nano.saturating_add(settlement.actual_nano);
        totals.calls = totals.calls.saturating_add(1);
    }

    pub(in crate::store) fn ledger_entry(settlement: &Settlement) -> LedgerEntry {
        LedgerEntry {
            call_id: settlement.call_id.clone(),
            system_id: settlement.system_id.clone(),
            model_id: settlement.model_id.clone(),
            cost_nano: settlement.actual_nano,
            usage: settlement.usage,
            at: settlement.at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user_version(store: &SqliteStore) -> i64 {
        store
            .conn()
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .expect("user_version")
    }

    #[test]
    fn new_file_gets_the_current_schema_in_wal_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("state")).expect("open");
        assert_eq!(
            store.path(),
            Some(dir.path().join("state").join(DB_FILE).as_path())
        );
        assert_eq!(user_version(&store), MIGRATIONS.len() as i64);
        let mode: String = store
            .conn()
            .pragma_query_value(None, "journal_mode", |row| row.get(0))
            .expect("journal_mode");
        assert_eq!(mode, "wal");
    }

    #[test]
    fn reopening_keeps_the_schema_and_runs_no_step_twice() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(SqliteStore::open(dir.path()).expect("first open"));
        let again = SqliteStore::open(dir.path()).expect("second open");
        assert_eq!(user_version(&again), MIGRATIONS.len() as i64);
    }

    #[test]
    fn a_newer_schema_is_refused_as_corrupt() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(dir.path()).expect("open");
        store
            .conn()
            .pragma_update(None, "user_version", 99_i64)
            .expect("bump");
        drop(store);
        let err = SqliteStore::open(dir.path()).expect_err("newer schema");
        assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
    }

    #[test]
    fn timestamps_are_fixed_width_so_text_order_is_time_order() {
        let early = DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z")
            .expect("time")
            .with_timezone(&Utc);
        let later = early + chrono::Duration::nanoseconds(1);
        assert_eq!(ts(early).len(), ts(later).len());
        assert!(ts(early) < ts(later));
        assert!(since_key(None) < ts(early));
    }

    #[test]
    fn busy_database_is_unavailable() {
        let busy = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            None,
        );
        assert!(matches!(sql_error(&busy), StoreError::Unavailable(m) if m.contains("busy")));
    }

    #[test]
    fn undecodable_record_is_corrupt() {
        let err = decode::<Head>("heads", "{not json").expect_err("corrupt");
        assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
    }
}
