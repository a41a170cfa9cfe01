//! `approve` and `reject`: an operator's verdict on a decision held for approval, sent as a
//! message like every operator action. On AWS it goes to the decide queue; locally it is
//! processed at once, together with what it sets off up to the next measurement.

use chrono::Utc;
use shared::bus::Bus;
use shared::domain::{HeadStatus, Outgoing};
use shared::local::{RunOptions, Silent, verdict_message};

use super::{llm, open_existing, resolve_system};
use crate::args::{Cli, StoreKind, VerdictArgs};
use crate::output::bad_input;

pub async fn resolve(cli: &Cli, args: &VerdictArgs, approve: bool) -> anyhow::Result<()> {
    let verb = if approve { "approve" } else { "reject" };
    let store = open_existing(cli).await?;
    let id = resolve_system(store.as_ref(), cli.system.as_deref()).await?;
    let head = super::head_of(store.as_ref(), &id).await?;
    // Checked here for a clear message; the decide stage checks again under its condition.
    match &head.approval {
        Some(p)
            if head.status == HeadStatus::AwaitingApproval && p.decision_id == args.decision_id => {
        }
        Some(p) if head.status == HeadStatus::AwaitingApproval => {
            return Err(bad_input(format!(
                "{id}: decision {} is not pending; the pending one is {}",
                args.decision_id, p.decision_id
            )));
        }
        _ => {
            return Err(bad_input(format!(
                "{id}: decision {} is not pending (the head is {})",
                args.decision_id,
                head.status.as_str()
            )));
        }
    }
    let operator = super::operator(cli).await?;
    let now = Utc::now().max(head.updated_at + chrono::Duration::seconds(1));
    let env = verdict_message(
        &id,
        &args.decision_id,
        approve,
        &operator,
        args.note.as_deref(),
        now,
    );
    if cli.store == StoreKind::Aws {
        super::aws::send_operator_message(cli, Outgoing::new(env)).await?;
        eprintln!(
            "{id}: {verb} of {} sent to the decide queue as {operator}",
            args.decision_id
        );
        return Ok(());
    }
    let config = llm::pipeline_config(&args.engine)?;
    let home = llm::home(&args.engine, store.clone(), now, config).await?;
    home.bus.send(&[Outgoing::new(env)]).await?;
    let dead = home.settle(&RunOptions::default(), &Silent).await?;
    if let Some(reason) = dead.first() {
        return Err(anyhow::anyhow!("the {verb} message failed: {reason}"));
    }
    let head = super::head_of(store.as_ref(), &id).await?;
    let next = match (&head.status, &head.approval) {
        (HeadStatus::AwaitingApproval, Some(p)) => format!(
            "the next proposal, decision {}, awaits approval too",
            p.decision_id
        ),
        (HeadStatus::Evaluating, _) => format!(
            "generation {} awaits its measurement: continue with `evolve run` (or `evolve demo \
             --continue` for the demo)",
            head.generation
        ),
        (status, _) => format!(
            "the head is {} at generation {}: continue with `evolve run` (or `evolve demo \
             --continue`)",
            status.as_str(),
            head.generation
        ),
    };
    eprintln!("{id}: {verb}d {} as {operator}; {next}", args.decision_id);
    Ok(())
}
