//! `report`: one self-contained HTML page about a system's evolution (fitness, genes,
//! decisions, spend, budget mode, predictions), readable offline and attachable to a ticket.
//! `demo` and `run` write it at the end too.

pub mod charts;
pub mod data;
pub mod html;
pub mod judging;
pub mod what_if;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use shared::domain::SystemId;
use shared::stages::replay::ReplayReport;
use shared::store::FullStore;

use super::{llm, open_existing, resolve_system};
use crate::args::{Cli, ReportArgs, StoreKind};
use crate::output::bad_input;

/// Where the report goes without `--out`: beside the embedded store, or, for a deployed
/// stack, which has no local state directory, in the working directory.
pub fn default_path(cli: &Cli, system_id: &SystemId) -> PathBuf {
    match cli.store {
        StoreKind::Local => cli.state.join("report.html"),
        StoreKind::Aws => PathBuf::from(format!("{system_id}-report.html")),
    }
}

pub async fn report(cli: &Cli, args: &ReportArgs) -> anyhow::Result<()> {
    let daily_budget = args
        .daily_budget_usd
        .as_deref()
        .map(llm::parse_usd)
        .transpose()
        .map_err(|e| bad_input(format!("--daily-budget-usd: {e}")))?;
    let store = open_existing(cli).await?;
    let id = resolve_system(store.as_ref(), cli.system.as_deref()).await?;
    let path = args.out.clone().unwrap_or_else(|| default_path(cli, &id));
    let started = Instant::now();
    let pareto = match args.pareto.as_slice() {
        [x, y] => Some((x.clone(), y.clone())),
        [] => None,
        _ => return Err(bad_input("--pareto takes two objectives: A,B")),
    };
    let replay = match &args.replay {
        Some(file) => {
            let text = std::fs::read_to_string(file)
                .map_err(|e| bad_input(format!("--replay {}: {e}", file.display())))?;
            let report: ReplayReport = serde_json::from_str(text.trim()).map_err(|e| {
                bad_input(format!(
                    "--replay {}: not the output of `evolve replay --json`: {e}",
                    file.display()
                ))
            })?;
            Some(report)
        }
        None => None,
    };
    let bytes = write(store.as_ref(), &id, daily_budget, pareto, replay, &path).await?;
    eprintln!(
        "report: {} KiB in {} ms",
        bytes.div_ceil(1024),
        started.elapsed().as_millis()
    );
    println!("{}", path.display());
    Ok(())
}

/// Gathers, renders and writes the report; returns its size in bytes.
pub async fn write(
    store: &dyn FullStore,
    system_id: &SystemId,
    daily_budget_nano: Option<u64>,
    pareto: Option<(String, String)>,
    replay: Option<ReplayReport>,
    path: &Path,
) -> anyhow::Result<usize> {
    let mut data = data::gather(store, system_id, daily_budget_nano).await?;
    data.replay = replay;
    if let Some((x, y)) = pareto {
        let find = |name: &str| {
            data.objectives
                .iter()
                .find(|o| o.metric.as_str() == name)
                .cloned()
                .ok_or_else(|| {
                    bad_input(format!(
                        "--pareto: {name} is not an objective of {system_id}"
                    ))
                })
        };
        data.pareto_axes = Some((find(&x)?, find(&y)?));
    }
    let page = html::render(&data)?;
    std::fs::write(path, &page)
        .with_context(|| format!("writing the report to {}", path.display()))?;
    Ok(page.len())
}

/// The report at the end of `demo` and `run`. The run itself succeeded, so a report that
/// cannot be written is a warning, not a failed command.
pub async fn after_run(
    cli: &Cli,
    store: &dyn FullStore,
    system_id: &SystemId,
    daily_budget_nano: Option<u64>,
) {
    let path = default_path(cli, system_id);
    match write(store, system_id, daily_budget_nano, None, None, &path).await {
        Ok(_) => eprintln!("report in {}", path.display()),
        Err(e) => eprintln!("warning: no report: {e:#}"),
    }
}
