//! The adapters under test, behind one handle type so every case runs against each of them.

use std::future::{Future, ready};
use std::sync::Arc;

use aws_config::SdkConfig;
use shared::store::CostLedger;
use shared::store::dynamo::{DynamoStore, aws_sdk_dynamodb, aws_sdk_s3};
use shared::store::memory::MemoryStore;
use shared::store::sqlite::SqliteStore;
use shared::store::{ControlState, EvolutionStore};
use tempfile::TempDir;
use tests::moto::{MotoServer, unique_name};

/// Everything a store adapter provides.
pub trait Store: EvolutionStore + ControlState + CostLedger {}

impl<T: EvolutionStore + ControlState + CostLedger> Store for T {}

/// What backs a harness's store.
#[derive(Debug)]
enum Backing {
    Memory,
    /// The SQLite state directory.
    Sqlite(TempDir),
    /// A table and a bucket of their own on the shared moto server.
    Dynamo(Box<Dynamo>),
}

/// A DynamoDB table and S3 bucket on moto, with the SDK configuration that reaches them.
#[derive(Debug, Clone)]
pub struct Dynamo {
    pub config: SdkConfig,
    pub table: String,
    pub bucket: String,
}

impl Dynamo {
    /// A fresh table and bucket on the test binary's moto server.
    pub async fn create() -> Self {
        let server = MotoServer::shared();
        let config = tests::moto::sdk_config(server.url()).await;
        let name = unique_name("store");
        let dynamo = Self {
            config,
            table: name.clone(),
            bucket: name,
        };
        dynamo
            .store()
            .create_resources()
            .await
            .expect("create the table and the bucket on moto");
        dynamo
    }

    pub fn dynamo_client(&self) -> aws_sdk_dynamodb::Client {
        aws_sdk_dynamodb::Client::new(&self.config)
    }

    pub fn s3_client(&self) -> aws_sdk_s3::Client {
        tests::moto::s3_client(&self.config)
    }

    /// A store with clients of its own, as another Lambda instance would hold.
    pub fn store(&self) -> DynamoStore {
        DynamoStore::new(
            self.dynamo_client(),
            self.s3_client(),
            self.table.clone(),
            self.bucket.clone(),
        )
    }
}

/// One adapter with its backing storage, kept alive for the test's duration.
#[derive(Debug)]
pub struct Harness {
    pub store: Arc<dyn Store>,
    backing: Backing,
}

impl Harness {
    pub fn memory() -> impl Future<Output = Self> {
        ready(Self {
            store: Arc::new(MemoryStore::new()),
            backing: Backing::Memory,
        })
    }

    /// A SQLite file in a fresh temporary directory, as `evolve` uses it.
    pub fn sqlite() -> impl Future<Output = Self> {
        let dir = tempfile::tempdir().expect("temporary state directory");
        let store = SqliteStore::open(dir.path()).expect("open sqlite store");
        ready(Self {
            store: Arc::new(store),
            backing: Backing::Sqlite(dir),
        })
    }

    /// A table and a bucket of the test's own on moto's server.
    pub async fn dynamo() -> Self {
        let dynamo = Dynamo::create().await;
        Self {
            store: Arc::new(dynamo.store()),
            backing: Backing::Dynamo(Box::new(dynamo)),
        }
    }

    /// Another handle on the same data. For SQLite it is a second connection to the same file, as
    /// a second process would hold, so races between handles exercise the file's locking; for
    /// DynamoDB, a store with clients of its own.
    pub fn second_handle(&self) -> Arc<dyn Store> {
        match &self.backing {
            Backing::Memory => Arc::clone(&self.store),
            Backing::Sqlite(dir) => {
                Arc::new(SqliteStore::open(dir.path()).expect("reopen sqlite store"))
            }
            Backing::Dynamo(dynamo) => Arc::new(dynamo.store()),
        }
    }
}
