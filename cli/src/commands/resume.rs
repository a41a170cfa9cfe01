//! `resume`: an operator's way back for a paused head, sent as a message like every operator
//! action. On AWS it goes to the decide queue, which owns the paused state; locally it is
//! processed at once.

use chrono::Utc;
use shared::domain::HeadStatus;
use shared::local::resume_message;
use shared::pipeline::Handled;

use super::{open_existing, resolve_system};
use crate::args::{Cli, ResumeArgs};
use crate::output::bad_input;

pub async fn resume(cli: &Cli, args: &ResumeArgs) -> anyhow::Result<()> {
    let store = open_existing(cli).await?;
    let id = resolve_system(store.as_ref(), cli.system.as_deref()).await?;
    let head = super::head_of(store.as_ref(), &id).await?;
    // Checked here for a clear message; the decide stage checks again under its condition.
    if head.status != HeadStatus::Paused {
        return Err(bad_input(format!(
            "{id} is not paused (the head is {} at generation {})",
            head.status.as_str(),
            head.generation
        )));
    }
    let operator = super::operator(cli).await?;
    let now = Utc::now().max(head.updated_at + chrono::Duration::seconds(1));
    let env = resume_message(&id, head.generation, &operator, args.note.as_deref(), now);
    let sent = format!("{id}: resume sent to the decide queue as {operator}");
    let Some(handled) = super::deliver_operator_message(cli, store, env, now, &sent).await? else {
        return Ok(());
    };
    // The stage calls no LLM and sends nothing: the next `run` ticks and finds a cycle due.
    match handled? {
        Handled::Processed { summary, .. } if !summary.starts_with("no-op") => {
            eprintln!(
                "{id}: {summary}; the head is stable at generation {}: continue with `evolve \
                 run` (or `evolve demo --continue`)",
                head.generation
            );
            Ok(())
        }
        Handled::Processed { summary, .. } => Err(bad_input(format!("{id}: {summary}"))),
        Handled::Duplicate { .. } => Ok(()),
    }
}
