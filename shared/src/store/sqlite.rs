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

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use rusqlite::{Connection, ErrorCode, OptionalExtension, Params, TransactionBehavior, params};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::rules::{IdempotencyRecord, Lookup};
use super::{BudgetState, StoreError, StoreResult, SystemRecord};
use crate::cost::reconcile::Reconciliation;
use crate::cost::{LedgerScope, PeriodKey, Totals};
use crate::domain::{BudgetMode, Head, PlanCursor, SystemId};
use crate::store::performance::PerformanceSnapshot;

/// The database file inside the state directory.
pub const DB_FILE: &str = "evolution.db";

/// How long a writer waits for another process's transaction before reporting `Unavailable`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Schema steps; `PRAGMA user_version` counts how many have been applied. Append, never edit.
const MIGRATIONS: &[&str] = &[SCHEMA_V1, SCHEMA_V2, SCHEMA_V3];

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

/// Reservations held until settled, and the holds the sweep reclaimed.
const SCHEMA_V2: &str = "
CREATE TABLE holds (
    call_id    TEXT PRIMARY KEY,
    expires_at TEXT NOT NULL,
    body       TEXT NOT NULL
);
CREATE INDEX holds_by_expiry ON holds (expires_at, call_id);
CREATE TABLE reclaims (
    call_id TEXT PRIMARY KEY,
    at      TEXT NOT NULL,
    body    TEXT NOT NULL
);
CREATE INDEX reclaims_by_time ON reclaims (at, call_id);
";

/// The bill's reconciliation of each day, keyed by the day (`YYYY-MM-DD` sorts as days do).
const SCHEMA_V3: &str = "
CREATE TABLE reconciliations (
    day  TEXT PRIMARY KEY,
    body TEXT NOT NULL
);
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
    /// The database's address for `storage_metadata`: `sqlite:///abs/path/evolution.db`, or
    /// `sqlite::memory:`.
    pub(crate) fn location(&self) -> String {
        self.path.as_ref().map_or_else(
            || "sqlite::memory:".to_owned(),
            |p| format!("sqlite://{}", p.display()),
        )
    }

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

    /// A private in-memory copy of `<state_dir>/evolution.db`, read through a read-only
    /// connection: what a what-if replay works on, so that nothing it does can reach the file
    /// (not even the journal-mode switch or a migration that opening it for writing would make).
    pub fn open_copy(state_dir: &Path) -> StoreResult<Self> {
        let path = state_dir.join(DB_FILE);
        if !path.is_file() {
            return Err(StoreError::Unavailable(format!(
                "no store at {}",
                path.display()
            )));
        }
        // A writer at work keeps a write-ahead log beside the file, and a read must go through
        // it. Without one, everything is in the file, and reading it as immutable leaves no
        // journal or shared-memory file behind (a read-only connection cannot remove those).
        let writer_at_work = state_dir.join(format!("{DB_FILE}-wal")).exists();
        let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
            | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX
            | rusqlite::OpenFlags::SQLITE_OPEN_URI;
        let uri = format!(
            "file:{}?mode=ro{}",
            uri_path(&path),
            if writer_at_work { "" } else { "&immutable=1" }
        );
        let source = Connection::open_with_flags(uri, flags).sql()?;
        source.busy_timeout(BUSY_TIMEOUT).sql()?;
        let mut copy = Connection::open_in_memory().sql()?;
        rusqlite::backup::Backup::new(&source, &mut copy)
            .and_then(|b| b.run_to_completion(256, std::time::Duration::ZERO, None))
            .sql()?;
        drop(source);
        Self::init(copy, None)
    }

    /// A private database that disappears with the store: for tests, and for the ledger and
    /// budget mode of a what-if replay.
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

/// `path` as the path of a `file:` URI: the characters a URI gives a meaning to are escaped.
fn uri_path(path: &Path) -> String {
    let mut out = String::new();
    for c in path.to_string_lossy().chars() {
        match c {
            '%' | '?' | '#' | ' ' => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push('%');
                    out.push_str(&hex::encode_upper([b]));
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// A transaction that takes the write lock before its first read, so what it reads cannot change
/// before it writes (see the module documentation).
fn immediate(conn: &mut Connection) -> StoreResult<rusqlite::Transaction<'_>> {
    conn.transaction_with_behavior(TransactionBehavior::Immediate)
        .sql()
}

/// Applies the missing schema steps inside one immediate transaction, so two processes opening a
/// new file at once do not both create the tables.
fn migrate(conn: &mut Connection) -> StoreResult<()> {
    let db = immediate(conn)?;
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

    fn reconciliation(&self, day: NaiveDate) -> StoreResult<Option<Reconciliation>> {
        one(
            self.0,
            "reconciliations",
            "SELECT body FROM reconciliations WHERE day = ?1",
            [day.to_string()],
        )
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
    Ok(read_control(conn, BUDGET_ROW)?.unwrap_or_default())
}

/// The `control` row `name`, if it was ever written.
fn read_control<T: DeserializeOwned>(conn: &Connection, name: &str) -> StoreResult<Option<T>> {
    one(
        conn,
        "control",
        "SELECT body FROM control WHERE name = ?1",
        [name],
    )
}

fn write_control(conn: &Connection, name: &str, value: &impl Serialize) -> StoreResult<()> {
    put(
        conn,
        "INSERT OR REPLACE INTO control (name, body) VALUES (?1, ?2)",
        [name, &encode(value)?],
    )
}

/// Applies `change` to the stored performance record (empty until first written) and stores it;
/// atomic only inside a transaction, as every caller runs it.
fn update_performance(
    conn: &Connection,
    change: impl FnOnce(&mut PerformanceSnapshot),
) -> StoreResult<()> {
    let mut perf: PerformanceSnapshot = read_control(conn, PERFORMANCE_ROW)?.unwrap_or_default();
    change(&mut perf);
    write_control(conn, PERFORMANCE_ROW, &perf)
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

fn read_idempotency(conn: &Connection, key: &str) -> StoreResult<Option<IdempotencyRecord>> {
    one(
        conn,
        "idempotency",
        "SELECT body FROM idempotency WHERE key = ?1",
        [key],
    )
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

mod control;
mod evolution;
mod ledger;
mod writes;

#[cfg(test)]
mod tests;
