//! One function per subcommand. Everything here wires ports and prints; the work is done by
//! `shared::local` and `shared::pipeline`.

mod approval;
mod aws;
mod evolve;
mod failover;
mod llm;
mod replay;
mod report;
mod resume;
mod trace;
mod views;
mod worker;

use std::sync::Arc;

use anyhow::Context;
use chrono::{DateTime, Utc};
use shared::domain::{Envelope, Outgoing, SystemId};
use shared::local::LocalHome;
use shared::pipeline::{self, Handled, PipelineError};
use shared::store::sqlite::SqliteStore;
use shared::store::{EvolutionStore, FullStore};

use crate::args::{Cli, Command, StoreKind};
use crate::output::bad_input;

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Demo(args) => evolve::demo(&cli, args).await,
        Command::Init(args) => evolve::init(&cli, args).await,
        Command::Settings(args) => evolve::settings(&cli, args).await,
        Command::Run(args) => evolve::run(&cli, args).await,
        Command::Status(args) => views::status(&cli, args).await,
        Command::History(args) => views::history(&cli, args).await,
        Command::Decisions(args) => views::decisions(&cli, args).await,
        Command::Trace(args) => trace::trace(&cli, args).await,
        Command::Cost(args) => views::cost(&cli, args.json).await,
        Command::Rollback(args) => views::rollback(&cli, args).await,
        Command::Worker(args) => worker::run(&cli, args).await,
        Command::Approve(args) => approval::resolve(&cli, args, true).await,
        Command::Reject(args) => approval::resolve(&cli, args, false).await,
        Command::Resume(args) => resume::resume(&cli, args).await,
        Command::Report(args) => report::report(&cli, args).await,
        Command::Replay(args) => replay::replay(&cli, args).await,
        Command::Failover(args) => failover::failover(&cli, args).await,
        Command::Failback(args) => failover::failback(&cli, args).await,
    }
}

/// Who an operator action is recorded as: the caller's AWS identity on AWS, the OS user
/// locally.
pub(crate) async fn operator(cli: &Cli) -> anyhow::Result<String> {
    Ok(match cli.store {
        StoreKind::Aws => aws::caller_identity().await?,
        StoreKind::Local => format!(
            "local user {}",
            std::env::var("USER")
                .or_else(|_| std::env::var("USERNAME"))
                .unwrap_or_else(|_| "unknown".into())
        ),
    })
}

/// Sends an operator's message (a rollback, a resume) where its store is: on AWS to the queue of
/// the stage that owns it, then prints `sent` and returns `None`; locally it is processed at once
/// and the caller judges the pipeline's answer.
pub(crate) async fn deliver_operator_message(
    cli: &Cli,
    store: Arc<dyn FullStore>,
    env: Envelope,
    now: DateTime<Utc>,
    sent: &str,
) -> anyhow::Result<Option<Result<Handled, PipelineError>>> {
    if cli.store == StoreKind::Aws {
        aws::send_operator_message(cli, Outgoing::new(env)).await?;
        eprintln!("{sent}");
        return Ok(None);
    }
    let home = LocalHome::for_operator_action(store, now);
    Ok(Some(
        pipeline::handle(&home.deps, home.bus.as_ref(), &env).await,
    ))
}

/// Opens the store, creating the embedded one if needed.
pub(crate) async fn open_store(cli: &Cli) -> anyhow::Result<Arc<dyn FullStore>> {
    match cli.store {
        StoreKind::Local => {
            let store = SqliteStore::open(&cli.state)
                .with_context(|| format!("opening the store in {}", cli.state.display()))?;
            Ok(Arc::new(store))
        }
        StoreKind::Aws => Ok(Arc::new(aws::store(cli).await?)),
    }
}

/// Opens an existing store; a missing embedded one is bad input, and nothing is created.
pub(crate) async fn open_existing(cli: &Cli) -> anyhow::Result<Arc<dyn FullStore>> {
    if cli.store == StoreKind::Local && !cli.state.join("evolution.db").is_file() {
        return Err(bad_input(format!(
            "no store in {}: create a system with `evolve init --dna FILE` or run `evolve demo`",
            cli.state.display()
        )));
    }
    open_store(cli).await
}

/// `demo` and `run` drive the pipeline in this process, on the embedded store.
pub(crate) fn local_only(cli: &Cli, command: &str) -> anyhow::Result<()> {
    if cli.store == StoreKind::Aws {
        return Err(bad_input(format!(
            "`{command}` runs the pipeline locally; on AWS the deployed functions run it \
             (use --store local)"
        )));
    }
    Ok(())
}

/// The head of a system the store holds.
pub(crate) async fn head_of(
    store: &dyn EvolutionStore,
    id: &SystemId,
) -> anyhow::Result<shared::domain::Head> {
    store
        .get_head(id)
        .await?
        .ok_or_else(|| bad_input(format!("unknown system {id}")))
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
