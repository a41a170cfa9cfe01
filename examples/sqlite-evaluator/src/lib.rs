//! An example evaluator: how fast SQLite takes inserts under a given batch size and set of pragmas.
//!
//! Each run creates a fresh database in a temporary directory, applies the pragmas the genes
//! choose, inserts a fixed number of rows in transactions of `batch_size` rows and reports the
//! throughput (rows per second, higher is better) with the elapsed time and the database size.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Rows inserted per run unless [`ROWS_ENV`] says otherwise.
pub const DEFAULT_ROWS: u64 = 5_000;
/// Environment variable overriding the number of rows per run.
pub const ROWS_ENV: &str = "SQLITE_EVAL_ROWS";
/// Length of each row's text payload.
const PAYLOAD_BYTES: usize = 100;

const SCHEMA: &str = "
    CREATE TABLE events (
        id      INTEGER PRIMARY KEY,
        ts      INTEGER NOT NULL,
        kind    TEXT    NOT NULL,
        value   REAL    NOT NULL,
        payload TEXT    NOT NULL
    );
    CREATE INDEX events_by_kind ON events (kind, ts);
";

const INSERT: &str = "INSERT INTO events (ts, kind, value, payload) VALUES (?1, ?2, ?3, ?4)";

const KINDS: [&str; 6] = ["view", "click", "search", "cart", "purchase", "refund"];

/// `PRAGMA journal_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JournalMode {
    Delete,
    Truncate,
    Wal,
    Memory,
}

impl JournalMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delete => "delete",
            Self::Truncate => "truncate",
            Self::Wal => "wal",
            Self::Memory => "memory",
        }
    }
}

/// `PRAGMA synchronous`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    Off,
    Normal,
    Full,
}

impl Synchronous {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Normal => "normal",
            Self::Full => "full",
        }
    }
}

/// The genes this evaluator understands. Missing genes take the DNA file's starting values;
/// unknown genes are refused, so a renamed gene cannot silently stop having an effect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Rows per transaction.
    pub batch_size: i64,
    pub journal_mode: JournalMode,
    pub synchronous: Synchronous,
    /// Page cache size in KiB.
    pub cache_size_kib: i64,
    /// `PRAGMA temp_store = MEMORY` instead of the default.
    pub temp_store_memory: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            batch_size: 1,
            journal_mode: JournalMode::Delete,
            synchronous: Synchronous::Full,
            cache_size_kib: 2000,
            temp_store_memory: false,
        }
    }
}

impl Settings {
    /// Reads the genes object the evolution runner writes to stdin. Blank input means defaults.
    pub fn from_json(text: &str) -> Result<Self> {
        let settings: Self = if text.trim().is_empty() {
            Self::default()
        } else {
            let value: Value =
                serde_json::from_str(text).context("the genes on stdin are not JSON")?;
            ensure!(
                value.is_object(),
                "the genes on stdin must be one JSON object, got {value}"
            );
            serde_json::from_value(value).context("the genes on stdin are not valid")?
        };
        ensure!(
            settings.batch_size >= 1,
            "batch_size must be at least 1, got {}",
            settings.batch_size
        );
        ensure!(
            settings.cache_size_kib >= 1,
            "cache_size_kib must be at least 1, got {}",
            settings.cache_size_kib
        );
        Ok(settings)
    }
}

/// The outcome of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub rows: u64,
    pub elapsed: Duration,
    /// Size of every file the database left in its directory (database, journal, WAL).
    pub db_bytes: u64,
}

impl Report {
    pub fn rows_per_second(&self) -> f64 {
        self.rows as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The line the evolution runner reads: `{"score": ..., "metrics": {...}}`.
    pub fn to_json(&self) -> Value {
        json!({
            "score": self.rows_per_second(),
            "metrics": {
                "elapsed_ms": self.elapsed.as_secs_f64() * 1000.0,
                "rows": self.rows,
                "db_bytes": self.db_bytes,
            }
        })
    }
}

/// Rows per run: [`ROWS_ENV`] when set, else [`DEFAULT_ROWS`].
pub fn rows_from_env() -> Result<u64> {
    match std::env::var(ROWS_ENV) {
        Err(std::env::VarError::NotPresent) => Ok(DEFAULT_ROWS),
        Err(e) => Err(e).with_context(|| format!("reading {ROWS_ENV}")),
        Ok(text) => {
            let rows: u64 = text
                .trim()
                .parse()
                .with_context(|| format!("{ROWS_ENV} must be a positive integer, got {text:?}"))?;
            ensure!(rows > 0, "{ROWS_ENV} must be a positive integer, got 0");
            Ok(rows)
        }
    }
}

/// Inserts `rows` rows into a fresh database configured by `settings` and times the inserts.
pub fn run(settings: &Settings, rows: u64) -> Result<Report> {
    let dir = tempfile::Builder::new()
        .prefix("sqlite-evaluator-")
        .tempdir()
        .context("creating a temporary directory")?;
    let mut conn =
        Connection::open(dir.path().join("bench.db")).context("creating the database")?;
    apply_pragmas(&conn, settings)?;
    conn.execute_batch(SCHEMA).context("creating the schema")?;

    let batch = u64::try_from(settings.batch_size).context("batch_size")?;
    let started = Instant::now();
    insert_rows(&mut conn, rows, batch)?;
    let elapsed = started.elapsed();

    let db_bytes = dir_bytes(dir.path())?;
    conn.close()
        .map_err(|(_, e)| e)
        .context("closing the database")?;
    Ok(Report {
        rows,
        elapsed,
        db_bytes,
    })
}

fn apply_pragmas(conn: &Connection, settings: &Settings) -> Result<()> {
    let mode = settings.journal_mode.as_str();
    let applied: String = conn
        .pragma_update_and_check(None, "journal_mode", mode, |row| row.get(0))
        .context("setting journal_mode")?;
    ensure!(
        applied.eq_ignore_ascii_case(mode),
        "journal_mode {mode} was not applied (SQLite kept {applied})"
    );
    conn.pragma_update(None, "synchronous", settings.synchronous.as_str())
        .context("setting synchronous")?;
    // A negative cache_size is a size in KiB rather than in pages.
    conn.pragma_update(None, "cache_size", -settings.cache_size_kib)
        .context("setting cache_size")?;
    let temp_store = if settings.temp_store_memory {
        "memory"
    } else {
        "default"
    };
    conn.pragma_update(None, "temp_store", temp_store)
        .context("setting temp_store")?;
    Ok(())
}

fn insert_rows(conn: &mut Connection, rows: u64, batch: u64) -> Result<()> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut next = 0;
    while next < rows {
        let end = rows.min(next.saturating_add(batch));
        let tx = conn.transaction().context("beginning a transaction")?;
        {
            let mut insert = tx.prepare_cached(INSERT).context("preparing the insert")?;
            for i in next..end {
                let kind = KINDS[(rng.next() % KINDS.len() as u64) as usize];
                let value = (rng.next() % 1_000_000) as f64 / 100.0;
                let ts = 1_700_000_000_000_i64 + i as i64 * 37;
                insert
                    .execute(params![ts, kind, value, rng.payload()])
                    .context("inserting a row")?;
            }
        }
        tx.commit().context("committing a transaction")?;
        next = end;
    }
    Ok(())
}

fn dir_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).context("listing the database directory")? {
        let meta = entry
            .and_then(|e| e.metadata())
            .context("sizing a database file")?;
        if meta.is_file() {
            total += meta.len();
        }
    }
    Ok(total)
}

/// A tiny deterministic generator (xorshift64): every run inserts the same data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn payload(&mut self) -> String {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789 ";
        (0..PAYLOAD_BYTES)
            .map(|_| char::from(ALPHABET[(self.next() % ALPHABET.len() as u64) as usize]))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use shared::domain::{DnaFile, MetricName};

    use super::*;

    #[test]
    fn the_dna_file_parses_and_starts_at_the_defaults() {
        let (system_id, schema, genes) =
            DnaFile::parse(include_str!("../dna.json")).expect("dna.json is a valid DNA file");
        assert_eq!(system_id.as_str(), "sqlite-inserts");
        assert_eq!(schema.len(), 5);
        // What the runner would send for generation 0 is exactly what this evaluator expects.
        let sent = serde_json::to_string(&genes).expect("genes json");
        assert_eq!(
            Settings::from_json(&sent).expect("settings"),
            Settings::default()
        );
    }

    #[test]
    fn genes_are_read_strictly() {
        let s = Settings::from_json(
            r#"{"batch_size": 500, "journal_mode": "wal", "synchronous": "off",
                "cache_size_kib": 8192, "temp_store_memory": true}"#,
        )
        .expect("settings");
        assert_eq!(s.batch_size, 500);
        assert_eq!(s.journal_mode, JournalMode::Wal);
        assert_eq!(s.synchronous, Synchronous::Off);
        assert!(s.temp_store_memory);
        assert_eq!(
            Settings::from_json("  ").expect("blank"),
            Settings::default()
        );
        assert!(Settings::from_json(r#"{"batch_sise": 5}"#).is_err());
        assert!(Settings::from_json(r#"{"journal_mode": "off"}"#).is_err());
        assert!(Settings::from_json(r#"{"batch_size": 0}"#).is_err());
        assert!(Settings::from_json(r#"{"cache_size_kib": -5}"#).is_err());
        assert!(Settings::from_json("[1]").is_err());
    }

    #[test]
    fn every_journal_mode_runs_and_reports_valid_metrics() {
        for journal_mode in [
            JournalMode::Delete,
            JournalMode::Truncate,
            JournalMode::Wal,
            JournalMode::Memory,
        ] {
            let settings = Settings {
                journal_mode,
                batch_size: 7,
                temp_store_memory: true,
                ..Settings::default()
            };
            let report = run(&settings, 50).expect("run");
            assert_eq!(report.rows, 50);
            assert!(report.db_bytes > 50 * PAYLOAD_BYTES as u64, "{report:?}");
            let out = report.to_json();
            assert!(
                out["score"]
                    .as_f64()
                    .is_some_and(|s| s.is_finite() && s > 0.0)
            );
            for (name, value) in out["metrics"].as_object().expect("metrics") {
                MetricName::parse(name.as_str()).expect("valid metric name");
                assert!(value.as_f64().is_some_and(f64::is_finite), "{name}");
            }
        }
    }

    #[test]
    fn larger_batches_and_no_sync_raise_throughput() {
        const ROWS: u64 = 2000;
        let slow = Settings {
            batch_size: 1,
            synchronous: Synchronous::Full,
            ..Settings::default()
        };
        let fast = Settings {
            batch_size: 500,
            synchronous: Synchronous::Off,
            ..Settings::default()
        };
        // Best of two for the fast setting, so a cold first run cannot make it look slow.
        let fast_rate = (0..2)
            .map(|_| run(&fast, ROWS).expect("fast run").rows_per_second())
            .fold(0.0, f64::max);
        let slow_rate = run(&slow, ROWS).expect("slow run").rows_per_second();
        assert!(
            fast_rate > 1.5 * slow_rate,
            "batch 500/off: {fast_rate:.0} rows/s, batch 1/full: {slow_rate:.0} rows/s"
        );
    }
}
