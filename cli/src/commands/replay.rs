//! `evolve replay`: the recorded store, read only, replayed under other settings
//! (`shared::stages::replay`).

use std::fmt::Write as _;
use std::sync::Arc;

use anyhow::Context;
use shared::clock::SimClock;
use shared::cost::format_usd;
use shared::stages::Deps;
use shared::stages::replay::{self, ReplayReport, Window};
use shared::store::FullStore;
use shared::store::sqlite::SqliteStore;

use super::{aws, llm, resolve_system};
use crate::args::{Cli, Llm, ReplayArgs, StoreKind};
use crate::output::bad_input;

pub async fn replay(cli: &Cli, args: &ReplayArgs) -> anyhow::Result<()> {
    let config = llm::pipeline_config(&args.engine)?;
    if args.until.is_some_and(|u| u <= args.since) {
        return Err(bad_input("--until must be after --since"));
    }
    if args.all && cli.system.is_some() {
        return Err(bad_input("--all and --system name different systems"));
    }
    // The recorded store: a private copy of the embedded one, or the stack's, read only.
    let recorded: Arc<dyn FullStore> = match cli.store {
        StoreKind::Local => {
            if !cli.state.join("evolution.db").is_file() {
                return Err(bad_input(format!("no store in {}", cli.state.display())));
            }
            Arc::new(
                SqliteStore::open_copy(&cli.state)
                    .with_context(|| format!("copying the store in {}", cli.state.display()))?,
            )
        }
        StoreKind::Aws => Arc::new(aws::store(cli).await?),
    };
    let systems = if args.all {
        Vec::new()
    } else {
        vec![resolve_system(recorded.as_ref(), cli.system.as_deref()).await?]
    };
    // The replay's own ledger, budget mode and response cache.
    let scratch = Arc::new(SqliteStore::open_in_memory()?);
    let clock = Arc::new(SimClock::new(args.since));
    let own: Arc<dyn FullStore> = scratch.clone();
    let engine = llm::build_at(&args.engine, &own, config.budgets, clock.clone()).await?;
    let deps = Deps {
        store: recorded,
        control: scratch.clone(),
        ledger: scratch.clone(),
        llm: engine,
        clock: clock.clone(),
        money_clock: clock.clone(),
        config,
    };
    let window = Window {
        since: Some(args.since),
        until: args.until,
        systems,
    };
    let name = match args.engine.llm {
        Llm::Local => "local",
        Llm::Bedrock => "bedrock",
    };
    let report = replay::replay(&deps, &(scratch as _), &clock, &window, name).await?;
    if args.engine.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", text(&report));
    }
    Ok(())
}

/// The comparison for people: the verdicts, the flips with both reasonings, spend and modes.
fn text(report: &ReplayReport) -> String {
    let mut out = String::new();
    let a = report.agreement;
    let _ = writeln!(
        out,
        "replayed {} decisions and {} analyses and plans with the {} engine: {} of {} verdicts \
         agree ({})",
        report.decisions.len(),
        report.calls.len(),
        report.engine,
        a.agreed,
        a.compared,
        a.percent_text()
    );
    let _ = writeln!(
        out,
        "spend: recorded {}, replayed {}",
        format_usd(report.recorded_nano_usd),
        format_usd(report.replayed_nano_usd)
    );
    let _ = writeln!(
        out,
        "\n{:<22} {:<14} {:<16} {:<16} model (recorded -> replayed)",
        "decision", "mutation", "recorded", "replayed"
    );
    for d in &report.decisions {
        let _ = writeln!(
            out,
            "{:<22} {:<14} {:<16} {:<16} {} -> {}{}",
            short(&d.decision_id, 22),
            short(&d.mutation_id, 14),
            d.recorded.decision.as_str(),
            d.replayed.decision.as_str(),
            d.recorded.model,
            d.replayed.model,
            if d.agrees() { "" } else { "   FLIP" }
        );
    }
    let flips: Vec<_> = report.flips().collect();
    if !flips.is_empty() {
        let _ = writeln!(out, "\nflips:");
        for d in flips {
            let _ = writeln!(
                out,
                "- {} at {}: {} -> {}\n    recorded: {}\n    replayed: {}",
                d.decision_id,
                d.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                d.recorded.decision.as_str(),
                d.replayed.decision.as_str(),
                d.recorded.reasoning,
                d.replayed.reasoning
            );
        }
    }
    let _ = writeln!(
        out,
        "\n{:<11} {:<44} {:>14} {:>14}",
        "day", "model", "recorded", "replayed"
    );
    for row in &report.spend {
        let _ = writeln!(
            out,
            "{:<11} {:<44} {:>14} {:>14}",
            row.day,
            short(&row.model, 44),
            format_usd(row.recorded_nano_usd),
            format_usd(row.replayed_nano_usd)
        );
    }
    if report.mode_changes.is_empty() {
        let _ = writeln!(out, "\nbudget mode: no change under the replay's budgets");
    }
    for m in &report.mode_changes {
        let _ = writeln!(
            out,
            "\nbudget mode {} -> {} at {}: {}",
            m.from.as_str(),
            m.to.as_str(),
            m.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            m.reason
        );
    }
    for s in &report.skipped {
        let _ = writeln!(out, "skipped {} {}: {}", s.kind, s.id, s.reason);
    }
    out
}

fn short(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_owned()
    } else {
        let mut s: String = text.chars().take(width - 1).collect();
        s.push('…');
        s
    }
}
