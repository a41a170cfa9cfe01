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
    let busy =
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY), None);
    assert!(matches!(sql_error(&busy), StoreError::Unavailable(m) if m.contains("busy")));
}

#[test]
fn undecodable_record_is_corrupt() {
    let err = decode::<Head>("heads", "{not json").expect_err("corrupt");
    assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
}
