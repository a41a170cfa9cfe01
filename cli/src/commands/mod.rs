//! One function per subcommand. Everything here wires ports and prints; the work is done by
//! `shared::local` and `shared::pipeline`.

mod evolve;
mod llm;
mod views;

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use shared::domain::SystemId;
use shared::store::sqlite::SqliteStore;
use shared::store::{EvolutionStore, FullStore};

use crate::args::{Cli, Command};
use crate::output::bad_input;

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Demo(args) => evolve::demo(&cli, args).await,
        Command::Init(args) => evolve::init(&cli, args).await,
        Command::Run(args) => evolve::run(&cli, args).await,
        Command::Status(args) => views::status(&cli, args.json).await,
        Command::History(args) => views::history(&cli, args).await,
        Command::Decisions(args) => views::decisions(&cli, args).await,
        Command::Cost(args) => views::cost(&cli, args.json).await,
        Command::Rollback(args) => views::rollback(&cli, args).await,
    }
}

/// Opens (creating if needed) the store in the state directory.
pub(crate) fn open_store(state: &Path) -> anyhow::Result<Arc<dyn FullStore>> {
    let store = SqliteStore::open(state)
        .with_context(|| format!("opening the store in {}", state.display()))?;
    Ok(Arc::new(store))
}

/// Opens an existing store; a missing one is bad input, and nothing is created.
pub(crate) fn open_existing(state: &Path) -> anyhow::Result<Arc<dyn FullStore>> {
    if !state.join("evolution.db").is_file() {
        return Err(bad_input(format!(
            "no store in {}: create a system with `evolve init --dna FILE` or run `evolve demo`",
            state.display()
        )));
    }
    open_store(state)
}

/// The system named by `--system`, or the only one in the store.
pub(crate) async fn resolve_system(
    store: &dyn EvolutionStore,
    requested: Option<&str>,
) -> anyhow::Result<SystemId> {
    if let Some(raw) = requested {
        let id = SystemId::parse(raw).map_err(|e| bad_input(e.to_string()))?;
        if store.get_system(&id).await?.is_none() {
            return Err(bad_input(format!("unknown system {id}")));
        }
        return Ok(id);
    }
    let systems = store.list_systems().await?;
    match systems.as_slice() {
        [only] => Ok(only.system_id.clone()),
        [] => Err(bad_input(
            "the store holds no system: run `evolve init --dna FILE`",
        )),
        many => Err(bad_input(format!(
            "the store holds {} systems ({}): choose one with --system",
            many.len(),
            many.iter()
                .map(|s| s.system_id.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}
