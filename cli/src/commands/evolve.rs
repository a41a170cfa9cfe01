//! `demo`, `init` and `run`: the evolution loop on the embedded store.

use std::time::Duration as StdDuration;

use chrono::{DateTime, Utc};
use shared::domain::{DnaFile, HeadStatus, SystemId};
use shared::evaluator::Evaluator;
use shared::evaluator::command::CommandEvaluator;
use shared::local::{
    InitError, LocalHome, PendingPolicy, RunOptions, SettingsChange, SettingsError,
    change_settings, init_system,
};
use shared::store::{EvolutionStore, SystemSettings, Transaction, Write};

use super::{llm, local_only, open_existing, open_store, report, resolve_system};
use crate::args::{
    Cli, DemoArgs, EngineArgs, InitArgs, PendingArgs, RunArgs, SettingsArgs, StoreKind,
};
use crate::output::{Progress, bad_input, print_json, print_summary};

/// Simulated time of a demo's start: fixed, so two demos with one seed are identical.
const DEMO_EPOCH: &str = "2026-01-01T00:00:00Z";

pub async fn demo(cli: &Cli, args: &DemoArgs) -> anyhow::Result<()> {
    // A little measurement noise, seeded, so keep-or-rollback faces what real systems show.
    let demo = shared::sim::demo_system().with_noise(args.engine.seed, 0.01);
    let system_id = demo.system_id().clone();
    local_only(cli, "demo")?;
    let config = llm::pipeline_config(&args.engine)?;
    let store = open_store(cli).await?;
    let start = DateTime::parse_from_rfc3339(DEMO_EPOCH)?.with_timezone(&Utc);
    if args.resume {
        if store.get_head(&system_id).await?.is_none() {
            return Err(bad_input(format!(
                "no demo system {system_id} to continue: run `evolve demo` first"
            )));
        }
    } else {
        store.purge_system(&system_id).await?;
    }
    let daily_budget = config.budgets.global_daily;
    let home = llm::home(&args.engine, store.clone(), start, config).await?;
    let demo = if args.noisy {
        let noisy = shared::sim::noisy::NoisyService::default();
        demo.with_service(noisy, home.clock.clone(), args.engine.seed)
    } else {
        demo
    };
    if !args.resume {
        let settings = if args.noisy {
            shared::sim::SimSystem::judged_settings()
        } else {
            SystemSettings {
                samples_required: 1,
                ..SystemSettings::default()
            }
        };
        demo.init_with(&home.deps, home.bus.as_ref(), settings)
            .await?;
    }
    if args.trace.is_some() {
        crate::output::spans().start(home.clock.clone());
    }
    let continue_with = "evolve demo --continue";
    evolve(
        cli,
        &home,
        &system_id,
        &demo,
        Evolve {
            generations: args.generations,
            engine: &args.engine,
            pending: &args.pending,
            continue_with,
        },
    )
    .await?;
    if let Some(path) = &args.trace {
        let spans = crate::output::spans().drain();
        let otlp = shared::telemetry::otlp::encode("evolve-demo", &spans);
        std::fs::write(path, serde_json::to_vec_pretty(&otlp)?)
            .map_err(|e| anyhow::anyhow!("cannot write the trace to {}: {e}", path.display()))?;
    }
    report::after_run(cli, store.as_ref(), &system_id, daily_budget).await;
    eprintln!(
        "state in {}; try `evolve status`, `evolve history`, `evolve decisions`",
        cli.state.display()
    );
    Ok(())
}

pub async fn init(cli: &Cli, args: &InitArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.dna)
        .map_err(|e| bad_input(format!("cannot read DNA file {}: {e}", args.dna.display())))?;
    let (system_id, schema, genes) = DnaFile::parse(&text)
        .map_err(|e| bad_input(format!("invalid DNA file {}: {e}", args.dna.display())))?;
    let change = SettingsChange {
        samples_required: Some(args.samples),
        evaluation_window_seconds: Some(args.window),
        cycle_interval_seconds: Some(args.interval),
        confidence_percent: Some(args.confidence),
    };
    change.validate().map_err(|e| {
        bad_input(format!(
            "{e} (--samples, --window, --interval, --confidence)"
        ))
    })?;
    let settings = SystemSettings {
        samples_required: args.samples,
        evaluation_window_seconds: args.window,
        cycle_interval_seconds: args.interval,
        confidence_percent: args.confidence,
        constraints: Box::new(
            DnaFile::parse_constraints(&text)
                .map_err(|e| bad_input(format!("invalid DNA file {}: {e}", args.dna.display())))?,
        ),
    };
    let store = open_store(cli).await?;
    let home = LocalHome::for_operator_action(store, Utc::now());
    // On AWS generation 0 goes to the stack's events topic, where running systems listen;
    // locally the runner measures it from the store.
    let aws_bus = match cli.store {
        StoreKind::Aws => Some(super::aws::events_bus(cli).await?),
        StoreKind::Local => None,
    };
    let bus: &dyn shared::bus::Bus = match &aws_bus {
        Some(bus) => bus,
        None => home.bus.as_ref(),
    };
    match init_system(&home.deps, bus, &system_id, schema, genes, settings).await {
        Ok(()) => {
            let next = match cli.store {
                StoreKind::Aws => {
                    "generation 0 is published on the events topic: report its fitness"
                }
                StoreKind::Local => "`evolve run --evaluator CMD` measures it first",
            };
            eprintln!("created system {system_id} at generation 0; {next}");
            Ok(())
        }
        Err(InitError::Exists(id)) => Err(bad_input(format!(
            "system {id} already exists (its generation 0 was published again if it had never \
             gone out); `evolve settings` changes its settings"
        ))),
        Err(e) => Err(e.into()),
    }
}

/// Shows a system's settings, or changes them in the operator's name.
pub async fn settings(cli: &Cli, args: &SettingsArgs) -> anyhow::Result<()> {
    let store = open_existing(cli).await?;
    let system_id = resolve_system(store.as_ref(), cli.system.as_deref()).await?;
    let change = SettingsChange {
        samples_required: args.samples,
        evaluation_window_seconds: args.window,
        cycle_interval_seconds: args.interval,
        confidence_percent: args.confidence,
    };
    let settings = if change == SettingsChange::default() {
        store
            .get_system(&system_id)
            .await?
            .ok_or_else(|| bad_input(format!("unknown system {system_id}")))?
            .settings
    } else {
        let operator = super::operator(cli).await?;
        let home = LocalHome::for_operator_action(store, Utc::now());
        change_settings(&home.deps, &system_id, change, &operator)
            .await
            .map_err(|e| match e {
                SettingsError::Store(e) => anyhow::Error::from(e),
                other => bad_input(other.to_string()),
            })?
    };
    if args.json {
        return print_json(&settings);
    }
    println!("system               {system_id}");
    println!("samples              {}", settings.samples_required);
    println!(
        "window_seconds       {}",
        settings.evaluation_window_seconds
    );
    println!("interval_seconds     {}", settings.cycle_interval_seconds);
    println!("confidence_percent   {}", settings.confidence_percent);
    let rails: Vec<String> = settings
        .constraints
        .guardrails
        .iter()
        .map(ToString::to_string)
        .collect();
    if !rails.is_empty() {
        println!("guardrails           {}", rails.join("; "));
    }
    let objectives: Vec<String> = settings
        .constraints
        .objectives
        .iter()
        .map(|o| format!("{} {} x{}", o.metric, o.direction.as_str(), o.weight))
        .collect();
    if !objectives.is_empty() {
        println!("objectives           {}", objectives.join("; "));
    }
    Ok(())
}

pub async fn run(cli: &Cli, args: &RunArgs) -> anyhow::Result<()> {
    let evaluator = CommandEvaluator {
        command: args.evaluator.clone(),
        timeout: StdDuration::from_secs(args.eval_timeout),
    };
    evaluator
        .check()
        .map_err(|e| bad_input(format!("evaluator {:?}: {e}", args.evaluator)))?;
    if args.samples == Some(0) {
        return Err(bad_input("--samples must be at least 1"));
    }
    local_only(cli, "run")?;
    let config = llm::pipeline_config(&args.engine)?;
    let store = open_existing(cli).await?;
    let system_id = resolve_system(store.as_ref(), cli.system.as_deref()).await?;
    if let Some(samples) = args.samples {
        set_samples(store.as_ref(), &system_id, samples).await?;
    }
    let daily_budget = config.budgets.global_daily;
    let home = llm::home(&args.engine, store.clone(), Utc::now(), config).await?;
    evolve(
        cli,
        &home,
        &system_id,
        &evaluator,
        Evolve {
            generations: args.generations,
            engine: &args.engine,
            pending: &args.pending,
            continue_with: "evolve run --evaluator ...",
        },
    )
    .await?;
    report::after_run(cli, store.as_ref(), &system_id, daily_budget).await;
    Ok(())
}

async fn set_samples(
    store: &dyn EvolutionStore,
    system_id: &SystemId,
    samples: u32,
) -> anyhow::Result<()> {
    let Some(mut system) = store.get_system(system_id).await? else {
        return Err(bad_input(format!("unknown system {system_id}")));
    };
    if system.settings.samples_required != samples {
        system.settings.samples_required = samples;
        store
            .commit(Transaction {
                writes: vec![Write::PutSystem { system }],
                completion: None,
            })
            .await?;
    }
    Ok(())
}

/// How `demo` and `run` drive the runner.
struct Evolve<'a> {
    generations: u32,
    engine: &'a EngineArgs,
    pending: &'a PendingArgs,
    /// The command that picks the run up again, for the message at a pending approval.
    continue_with: &'a str,
}

async fn evolve(
    cli: &Cli,
    home: &LocalHome,
    system_id: &SystemId,
    evaluator: &dyn Evaluator,
    how: Evolve<'_>,
) -> anyhow::Result<()> {
    let Evolve {
        generations,
        engine,
        pending,
        continue_with,
    } = how;
    let progress = Progress::new(generations);
    let opts = RunOptions {
        generations,
        pending: if pending.approve_all {
            PendingPolicy::ApproveAll
        } else if pending.reject_pending {
            PendingPolicy::RejectAll
        } else {
            PendingPolicy::Stop
        },
        operator: super::operator(cli).await?,
        ..RunOptions::default()
    };
    let report = home
        .runner(evaluator)
        .run(system_id, &opts, &progress)
        .await;
    progress.finish();
    let report = report?;
    print_summary(&report);
    if let Some(decision) = &report.awaiting_approval {
        eprintln!(
            "decision {decision} awaits approval: `evolve approve {decision}` or `evolve reject \
             {decision}`, then `{continue_with}` (or run with --approve-all / --reject-pending)"
        );
    }
    let head = home.deps.store.get_head(system_id).await?;
    if head.is_some_and(|h| h.status == HeadStatus::Paused) {
        eprintln!(
            "the system is paused: `evolve resume --note WHY` resumes it, then `{continue_with}`"
        );
    }
    if engine.json {
        print_json(&report)?;
    }
    Ok(())
}
