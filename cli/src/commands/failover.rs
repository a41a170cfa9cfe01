//! `evolve failover` and `evolve failback` (docs/architecture.md, "Region failover"), and the
//! replica line of `evolve status`.

use std::time::Duration;

use chrono::Utc;
use serde_json::json;
use shared::domain::SystemId;
use shared::store::dynamo::{DynamoStore, Move, ReplicaView, WriterRecord, move_writer};

use crate::args::{Cli, FailoverArgs, MoveArgs, StoreKind};
use crate::output::{bad_input, print_json};

/// Seconds between two catch-up checks.
const POLL: Duration = Duration::from_secs(5);

fn aws_only(cli: &Cli, command: &str) -> anyhow::Result<()> {
    if cli.store == StoreKind::Aws {
        Ok(())
    } else {
        Err(bad_input(format!(
            "{command} moves a deployed stack's writer: run it with --store aws"
        )))
    }
}

pub async fn failover(cli: &Cli, args: &FailoverArgs) -> anyhow::Result<()> {
    aws_only(cli, "failover")?;
    let source = super::aws::store(cli).await?;
    if args.status {
        return status(&source, cli, args).await;
    }
    let target_region = args.to.as_deref().unwrap_or_default();
    let target = target(cli, target_region, &args.moving).await?;
    run_move(&source, &target, &args.moving, args.force).await
}

pub async fn failback(cli: &Cli, args: &MoveArgs) -> anyhow::Result<()> {
    aws_only(cli, "failback")?;
    let source = super::aws::store(cli).await?;
    let Some(record) = source.writer().await? else {
        return Err(bad_input(
            "the writer never moved: there is nothing to fail back from",
        ));
    };
    let target = target(cli, &record.home, args).await?;
    run_move(&source, &target, args, false).await
}

/// The target region's store: the same table (a global table has one name in every region)
/// and the replica bucket there.
async fn target(cli: &Cli, region: &str, args: &MoveArgs) -> anyhow::Result<DynamoStore> {
    let bucket = args.to_bucket.as_deref().ok_or_else(|| {
        bad_input(
            "--to-bucket (or EVOLVE_TARGET_BUCKET_NAME) names the bucket in the target region",
        )
    })?;
    super::aws::store_in(cli, region, bucket).await
}

async fn run_move(
    source: &DynamoStore,
    target: &DynamoStore,
    args: &MoveArgs,
    force: bool,
) -> anyhow::Result<()> {
    let plan = Move {
        actor: super::aws::caller_identity().await?,
        since: args.since,
        timeout: Duration::from_secs(args.timeout),
        poll: POLL,
        now: Utc::now(),
        force,
    };
    let moved = move_writer(source, target, &plan).await?;
    if args.json {
        return print_json(&json!({
            "from": moved.from, "to": moved.to, "epoch": moved.record.epoch,
            "checks": moved.checks, "forced": force,
            "systems": moved.catch_up.as_ref().map(|c| c.systems),
            "events": moved.catch_up.as_ref().map(|c| c.events),
        }));
    }
    println!(
        "the writer moved from {} to {} (epoch {}){}",
        moved.from,
        moved.to,
        moved.record.epoch,
        moved.catch_up.as_ref().map_or_else(
            || " without checking the old region (--force)".to_owned(),
            |c| format!(" after {} checks: {}", moved.checks, c.summary())
        )
    );
    Ok(())
}

async fn status(source: &DynamoStore, cli: &Cli, args: &FailoverArgs) -> anyhow::Result<()> {
    let record = source.writer().await?;
    let fence = source.fence_copies().await?;
    let behind = match &args.to {
        Some(region) => {
            let target = target(cli, region, &args.moving).await?;
            let epoch = record.as_ref().map_or(0, |r| r.epoch);
            Some(source.catch_up(&target, args.moving.since, epoch).await?)
        }
        None => None,
    };
    let region = source.region().unwrap_or_default();
    let fenced_copies = fence.iter().flatten().count();
    if args.moving.json {
        return print_json(&json!({
            "region": region, "record": record, "fence_copies": fenced_copies,
            "target": args.to, "caught_up": behind.as_ref().map(shared::store::dynamo::CatchUp::caught_up),
            "behind": behind.as_ref().map(|c| &c.lagging),
        }));
    }
    println!("region      {region}");
    println!("writer      {}", describe(record.as_ref()));
    println!(
        "fence       {fenced_copies} of {} copies written",
        fence.len()
    );
    if let (Some(to), Some(behind)) = (&args.to, &behind) {
        println!("{to:<11} {}", behind.summary());
    }
    Ok(())
}

fn describe(record: Option<&WriterRecord>) -> String {
    match record {
        None => "never moved: the stack's region writes".to_owned(),
        Some(r) => format!(
            "{} (epoch {}, home {}, changed {} by {})",
            r.writer.as_deref().map_or_else(
                || format!("none: moving to {}", r.moving_to.as_deref().unwrap_or("?")),
                ToOwned::to_owned
            ),
            r.epoch,
            r.home,
            r.changed_at.format("%Y-%m-%d %H:%M:%SZ"),
            r.changed_by
        ),
    }
}

/// What `status` says of the replica it reads: its region, who writes, and whether the head's
/// generation has arrived here.
pub(crate) struct Replica {
    region: String,
    record: Option<WriterRecord>,
    /// The head points at a generation not replicated yet.
    lagging: bool,
    /// The newest generation this replica holds, when it lags.
    newest: Option<u64>,
}

impl Replica {
    pub(crate) async fn read(cli: &Cli, id: &SystemId) -> anyhow::Result<Option<Self>> {
        if cli.store != StoreKind::Aws {
            return Ok(None);
        }
        let store = super::aws::store(cli).await?;
        let (lagging, newest) = match store.read_view(id).await? {
            Some(ReplicaView::Lagging { newest, .. }) => (true, newest),
            _ => (false, None),
        };
        Ok(Some(Self {
            region: store.region().unwrap_or_default().to_owned(),
            record: store.writer().await?,
            lagging,
            newest,
        }))
    }

    pub(crate) fn to_json(&self) -> serde_json::Value {
        json!({
            "region": self.region,
            "writer": self.record.as_ref().map_or(Some(self.region.as_str()), |r| r.writer.as_deref()),
            "epoch": self.record.as_ref().map(|r| r.epoch),
            "lagging": self.lagging,
            "newest_replicated_generation": self.newest,
        })
    }

    pub(crate) fn print(&self, head_generation: u64) {
        println!(
            "replica     {}, writer {}",
            self.region,
            describe(self.record.as_ref())
        );
        if self.lagging {
            println!(
                "            lagging: the head's generation {head_generation} has not arrived here \
                 yet (newest here: {})",
                self.newest
                    .map_or_else(|| "none".to_owned(), |g| g.to_string())
            );
        }
    }
}
