//! The adapters under test, behind one handle type so every case runs against each of them.

use std::sync::Arc;

use shared::cost::CostLedger;
use shared::store::memory::MemoryStore;
use shared::store::sqlite::SqliteStore;
use shared::store::{ControlState, EvolutionStore};
use tempfile::TempDir;

/// Everything a store adapter provides.
pub trait Store: EvolutionStore + ControlState + CostLedger {}

impl<T: EvolutionStore + ControlState + CostLedger> Store for T {}

/// One adapter with its backing storage, kept alive for the test's duration.
#[derive(Debug)]
pub struct Harness {
    pub store: Arc<dyn Store>,
    /// The SQLite state directory; `None` for the in-memory adapter.
    dir: Option<TempDir>,
}

impl Harness {
    pub fn memory() -> Self {
        Self {
            store: Arc::new(MemoryStore::new()),
            dir: None,
        }
    }

    /// A SQLite file in a fresh temporary directory, as `evolve` uses it.
    pub fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("temporary state directory");
        let store = SqliteStore::open(dir.path()).expect("open sqlite store");
        Self {
            store: Arc::new(store),
            dir: Some(dir),
        }
    }

    /// Another handle on the same data. For SQLite it is a second connection to the same file, as
    /// a second process would hold, so races between handles exercise the file's locking.
    pub fn second_handle(&self) -> Arc<dyn Store> {
        match &self.dir {
            None => Arc::clone(&self.store),
            Some(dir) => Arc::new(SqliteStore::open(dir.path()).expect("reopen sqlite store")),
        }
    }
}
