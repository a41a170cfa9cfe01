//! `status`, `history`, `decisions`, `cost` and `rollback`.

use chrono::{NaiveDate, Utc};
use serde::Serialize;
use serde_json::json;
use shared::cost::billing::cost_explorer::CostExplorerBilling;
use shared::cost::reconcile::{
    Outcome, Reconciliation, format_billed, format_bp, format_difference,
};
use shared::cost::{LedgerScope, PeriodKey, format_usd};
use shared::domain::{
    Body, BudgetPeriod, DecisionRecord, Envelope, Head, HeadStatus, HistoryEntry, PendingApproval,
    SystemId, derive_id, describe_changes,
};
use shared::stages::cost_guard::reconcile::{alert, builtin_models, summary};
use shared::store::{BudgetState, FullStore, Transaction, Write};
use std::collections::BTreeMap;

use super::{open_existing, resolve_system};
use crate::args::{
    Cli, Command, CostArgs, Format, HistoryArgs, ListArgs, RollbackArgs, StatusArgs, StoreKind,
};
use crate::output::{bad_input, fmt_fitness, print_json};

/// Direction of the last few kept fitness values: the mean step between them.
fn trend(history: &[HistoryEntry]) -> Option<f64> {
    let kept: Vec<f64> = history
        .iter()
        .filter(|h| h.outcome == shared::domain::EvaluationOutcome::Keep)
        .filter_map(|h| h.fitness)
        .collect();
    let tail = &kept[kept.len().saturating_sub(6)..];
    (tail.len() >= 2).then(|| (tail[tail.len() - 1] - tail[0]) / (tail.len() - 1) as f64)
}

pub async fn status(cli: &Cli, args: &StatusArgs) -> anyhow::Result<()> {
    let daily_budget = budget_flag(args.daily_budget_usd.as_deref(), "--daily-budget-usd")?;
    let monthly_budget = budget_flag(args.monthly_budget_usd.as_deref(), "--monthly-budget-usd")?;
    let store = open_existing(cli).await?;
    let id = resolve_system(store.as_ref(), cli.system.as_deref()).await?;
    let head = super::head_of(store.as_ref(), &id).await?;
    let history = store.list_history(&id, 50).await?;
    let budget = store.budget_state().await?;
    let now = Utc::now();
    let total = |period| store.totals(PeriodKey::of(period, now), &LedgerScope::Total);
    let (day, month) = (
        total(BudgetPeriod::Day).await?,
        total(BudgetPeriod::Month).await?,
    );
    let scope = LedgerScope::System(id.clone());
    let system = |period| store.totals(PeriodKey::of(period, now), &scope);
    let (system_day, system_month) = (
        system(BudgetPeriod::Day).await?,
        system(BudgetPeriod::Month).await?,
    );
    let replica = super::failover::Replica::read(cli, &id).await?;
    let status = Status {
        replica,
        last_decision: store.list_decisions(&id, None, usize::MAX).await?.pop(),
        trend: trend(&history),
        id,
        head,
        budget,
        spend: Spend {
            day: day.spent_nano,
            month: month.spent_nano,
            system_day: system_day.spent_nano,
            system_month: system_month.spent_nano,
            daily_budget,
            monthly_budget,
        },
    };
    if args.json {
        return print_json(&status.to_json());
    }
    status.print();
    Ok(())
}

/// A budget flag in US dollars, as nano-USD.
fn budget_flag(value: Option<&str>, flag: &str) -> anyhow::Result<Option<u64>> {
    value
        .map(super::llm::parse_usd)
        .transpose()
        .map_err(|e| bad_input(format!("{flag}: {e}")))
}

/// What `status` shows, read once and then printed as JSON or as text.
struct Status {
    id: SystemId,
    head: Head,
    trend: Option<f64>,
    budget: BudgetState,
    spend: Spend,
    last_decision: Option<DecisionRecord>,
    /// With `--store aws`: the replica read, who writes, and whether it lags.
    replica: Option<super::failover::Replica>,
}

/// Spend in nano-USD, all systems and this one, today and this month, with the budgets given.
struct Spend {
    day: u64,
    month: u64,
    system_day: u64,
    system_month: u64,
    daily_budget: Option<u64>,
    monthly_budget: Option<u64>,
}

/// `spent` as a percentage of a non-zero `budget`, one decimal.
fn percent(spent: u64, budget: Option<u64>) -> Option<f64> {
    budget
        .filter(|b| *b > 0)
        .map(|b| (spent as f64 / b as f64 * 1000.0).round() / 10.0)
}

/// `spent` against `budget` in words.
fn against(spent: u64, budget: Option<u64>) -> String {
    match budget {
        Some(b) => format!(
            "{} of {} ({:.1}%)",
            format_usd(spent),
            format_usd(b),
            percent(spent, Some(b)).unwrap_or(0.0)
        ),
        None => format!("{} (no budget given)", format_usd(spent)),
    }
}

impl Status {
    /// The approval the head waits for, if it does.
    fn pending(&self) -> Vec<&PendingApproval> {
        let head = &self.head;
        head.approval
            .iter()
            .map(Box::as_ref)
            .filter(|_| head.status == HeadStatus::AwaitingApproval)
            .collect()
    }

    fn to_json(&self) -> serde_json::Value {
        let (id, head, spend) = (&self.id, &self.head, &self.spend);
        json!({
            "system_id": id,
            "generation": head.generation,
            "status": head.status.as_str(),
            "stable_generation": head.stable_generation,
            "fitness": head.stable_fitness,
            "trend_per_kept_generation": self.trend,
            "evaluating": head.evaluation.as_ref().filter(|_| head.status == HeadStatus::Evaluating).map(|e| json!({
                "generation": e.generation, "deadline": e.deadline, "samples_required": e.samples_required
            })),
            "budget_mode": self.budget.mode.as_str(),
            "budget_mode_reason": self.budget.reason,
            "spend": {
                "today_nano_usd": spend.day,
                "month_nano_usd": spend.month,
                "system_today_nano_usd": spend.system_day,
                "system_month_nano_usd": spend.system_month,
                "daily_budget_nano_usd": spend.daily_budget,
                "monthly_budget_nano_usd": spend.monthly_budget,
                "today_percent_of_budget": percent(spend.day, spend.daily_budget),
                "month_percent_of_budget": percent(spend.month, spend.monthly_budget),
            },
            "pending_approvals": self.pending().iter().map(|p| json!({
                "decision_id": p.decision_id, "mutation": describe_changes(&p.mutation.changes),
                "risk": p.risk, "requested_at": p.requested_at, "expires_at": p.expires_at,
            })).collect::<Vec<_>>(),
            "last_decision": self.last_decision.as_ref().map(|d| json!({
                "decision_id": d.decision_id, "decision": d.decision, "mutation_id": d.mutation_id,
                "model_used": d.model_used, "timestamp": d.timestamp, "decided_by": d.decided_by,
                "approver": d.approver,
            })),
            "replica": self.replica.as_ref().map(super::failover::Replica::to_json),
        })
    }

    fn print(&self) {
        let (head, spend) = (&self.head, &self.spend);
        println!("system      {}", self.id);
        println!(
            "generation  {} ({}), stable generation {}",
            head.generation,
            head.status.as_str(),
            head.stable_generation
        );
        println!(
            "fitness     {}{}",
            fmt_fitness(head.stable_fitness),
            self.trend.map_or(String::new(), |t| format!(
                ", trend {t:+.4} per kept generation"
            ))
        );
        println!(
            "budget      {}: today {}, this month {}",
            self.budget.mode.as_str(),
            against(spend.day, spend.daily_budget),
            against(spend.month, spend.monthly_budget)
        );
        if let Some(replica) = &self.replica {
            replica.print(head.generation);
        }
        self.print_approvals_and_last();
    }

    fn print_approvals_and_last(&self) {
        let pending = self.pending();
        if pending.is_empty() {
            println!("approvals   none pending");
        }
        for p in &pending {
            println!(
                "approvals   {} awaits approval: {} (risk {:.2}), expires {}",
                p.decision_id,
                describe_changes(&p.mutation.changes),
                p.risk,
                p.expires_at.format("%Y-%m-%d %H:%M:%S")
            );
        }
        if let Some(d) = &self.last_decision {
            println!(
                "last        {} {} by {}{} at {}",
                d.decision.as_str(),
                d.mutation
                    .as_ref()
                    .map_or(d.mutation_id.clone(), |m| describe_changes(&m.changes)),
                d.model_used,
                d.approver
                    .as_ref()
                    .map_or(String::new(), |a| format!(" ({a})")),
                d.timestamp.format("%Y-%m-%d %H:%M:%S")
            );
        }
    }
}

pub async fn history(cli: &Cli, history_args: &HistoryArgs) -> anyhow::Result<()> {
    let store = open_existing(cli).await?;
    let id = resolve_system(store.as_ref(), cli.system.as_deref()).await?;
    let args = &history_args.list;
    if history_args.events || history_args.id.is_some() || !history_args.types.is_empty() {
        return events(store.as_ref(), &id, history_args).await;
    }
    let mut history = store.list_history(&id, usize::MAX).await?;
    history.retain(|h| args.covers(h.closed_at));
    let history = &history[history.len().saturating_sub(args.limit())..];
    if args.format() != Format::Table {
        return print_rows(args.format(), history);
    }
    println!(
        "{:>5}  {:<12}  {:>12}  {:>12}  {:<14}  changes",
        "gen", "outcome", "fitness", "parent", "reports"
    );
    for h in history {
        println!(
            "{:>5}  {:<12}  {:>12}  {:>12}  {:<14}  {}",
            h.generation,
            format!("{:?}", h.outcome).to_lowercase(),
            fmt_fitness(h.fitness),
            fmt_fitness(h.baseline_fitness),
            reports(h),
            if h.changes.is_empty() {
                "(baseline)".to_owned()
            } else {
                describe_changes(&h.changes)
            } + &judged_by(h)
        );
    }
    Ok(())
}

/// What beyond the mean a verdict rested on: the guardrails broken, the test's p-value.
fn judged_by(h: &shared::domain::HistoryEntry) -> String {
    let mut notes = Vec::new();
    if !h.breaches.is_empty() {
        let rails: Vec<&str> = h.breaches.iter().map(|b| b.guardrail.as_str()).collect();
        notes.push(format!("breached {}", rails.join("; ")));
    }
    if let Some(s) = h.significance {
        notes.push(format!("p = {:.3}", s.p_value));
    }
    if notes.is_empty() {
        String::new()
    } else {
        format!("  [{}]", notes.join(", "))
    }
}

/// The reports a window heard: `3`, or `2 (1 failed)`, or `none` when the running system
/// said nothing before the deadline.
pub(crate) fn reports(h: &shared::domain::HistoryEntry) -> String {
    match (h.reports, h.failed) {
        (0, _) => "none".to_owned(),
        (n, 0) => n.to_string(),
        (n, failed) => format!("{n} ({failed} failed)"),
    }
}

/// The seed's history query: evolution events by type, id and time range, newest `limit`.
async fn events(
    store: &dyn shared::store::EvolutionStore,
    id: &shared::domain::SystemId,
    args: &HistoryArgs,
) -> anyhow::Result<()> {
    let list = &args.list;
    let query = shared::domain::EventQuery {
        id: args.id.clone(),
        types: args.types.clone(),
        since: list.since,
        until: list.until,
        limit: usize::MAX,
    };
    let all = store.query_events(id, &query).await?;
    let shown = &all[all.len().saturating_sub(list.limit())..];
    if list.format() != Format::Table {
        return print_rows(list.format(), shown);
    }
    println!(
        "{:<19}  {:<24}  {:>5}  {:<28}  {:>7}  detail",
        "time", "type", "gen", "id", "bytes"
    );
    for e in shown {
        let event_type = serde_json::to_value(e.event_type)?;
        println!(
            "{:<19}  {:<24}  {:>5}  {:<28}  {:>7}  {}",
            e.timestamp.format("%Y-%m-%d %H:%M:%S"),
            event_type.as_str().unwrap_or_default(),
            e.generation,
            e.id,
            e.storage_metadata
                .as_ref()
                .map_or_else(String::new, |m| m.size_bytes.to_string()),
            e.detail.as_deref().unwrap_or_default(),
        );
    }
    Ok(())
}

/// Rows as one JSON array or as JSON lines.
fn print_rows<T: Serialize>(format: Format, rows: &[T]) -> anyhow::Result<()> {
    match format {
        Format::Jsonl => {
            for row in rows {
                println!("{}", serde_json::to_string(row)?);
            }
            Ok(())
        }
        Format::Json | Format::Table => print_json(&rows),
    }
}

pub async fn decisions(cli: &Cli, args: &ListArgs) -> anyhow::Result<()> {
    let store = open_existing(cli).await?;
    let id = resolve_system(store.as_ref(), cli.system.as_deref()).await?;
    let mut all = store.list_decisions(&id, args.since, usize::MAX).await?;
    all.retain(|d| args.covers(d.timestamp));
    let shown = &all[all.len().saturating_sub(args.limit())..];
    if args.format() != Format::Table {
        return print_rows(args.format(), shown);
    }
    println!(
        "{:<19}  {:<16}  {:>5}  {:>5}  {:<18}  mutation / reasoning",
        "time", "verdict", "risk", "conf", "model"
    );
    for d in shown {
        let changes = d
            .mutation
            .as_ref()
            .map_or(d.mutation_id.clone(), |m| describe_changes(&m.changes));
        let reasoning: String = d.reasoning.chars().take(80).collect();
        println!(
            "{:<19}  {:<16}  {:>5.2}  {:>5.2}  {:<18}  {changes} / {reasoning}",
            d.timestamp.format("%Y-%m-%d %H:%M:%S"),
            d.decision.as_str(),
            d.risk_assessment.overall_risk,
            d.confidence,
            d.model_used,
        );
    }
    Ok(())
}

#[derive(Debug, Default, Serialize)]
struct ModelSpend {
    calls: u64,
    input_tokens: u64,
    output_tokens: u64,
    cost_nano_usd: u64,
}

pub async fn cost(cli: &Cli, json: bool) -> anyhow::Result<()> {
    if let Command::Cost(args) = &cli.command {
        if args.reconcile {
            return reconciliations(cli, args).await;
        }
    }
    let store = open_existing(cli).await?;
    let now = Utc::now();
    let day = store
        .totals(PeriodKey::of(BudgetPeriod::Day, now), &LedgerScope::Total)
        .await?;
    let month = store
        .totals(PeriodKey::of(BudgetPeriod::Month, now), &LedgerScope::Total)
        .await?;
    let mut by_model: BTreeMap<String, ModelSpend> = BTreeMap::new();
    let mut requests: BTreeMap<&'static str, RequestsPerCall> = BTreeMap::new();
    for call in store.list_llm_calls(None, None).await? {
        for key in ["all", call.role.as_str()] {
            requests.entry(key).or_default().add(call.bedrock_requests);
        }
        let m = by_model.entry(call.model_id).or_default();
        m.calls += 1;
        m.input_tokens += call.usage.input_tokens;
        m.output_tokens += call.usage.output_tokens;
        m.cost_nano_usd += call.cost_nano_usd;
    }
    let holds = store.holds(far_future(now), usize::MAX).await?;
    let reclaims = store.reclaims(None).await?;
    let budget = store.budget_state().await?;
    if json {
        return print_json(&json!({
            "budget_mode": budget.mode.as_str(),
            "today": {"spent_nano_usd": day.spent_nano, "reserved_nano_usd": day.reserved_nano, "calls": day.calls},
            "month": {"spent_nano_usd": month.spent_nano, "reserved_nano_usd": month.reserved_nano, "calls": month.calls},
            "by_model": by_model,
            "requests_per_call": requests,
            "holds": {
                "count": holds.len(),
                "reserved_nano_usd": holds.iter().map(|h| h.amount_nano).sum::<u64>(),
                "oldest_expires_at": holds.first().map(|h| h.expires_at),
            },
            "reclaimed": {
                "count": reclaims.len(),
                "released_nano_usd": reclaims.iter().map(|r| r.hold.amount_nano).sum::<u64>(),
            },
        }));
    }
    println!("budget mode  {} ({})", budget.mode.as_str(), budget.reason);
    println!(
        "today        {} in {} Bedrock calls",
        format_usd(day.spent_nano),
        day.calls
    );
    println!(
        "this month   {} in {} Bedrock calls",
        format_usd(month.spent_nano),
        month.calls
    );
    println!(
        "{:<40}  {:>6}  {:>10}  {:>10}  {:>12}",
        "model", "calls", "in tok", "out tok", "cost"
    );
    for (model, m) in &by_model {
        println!(
            "{model:<40}  {:>6}  {:>10}  {:>10}  {:>12}",
            m.calls,
            m.input_tokens,
            m.output_tokens,
            format_usd(m.cost_nano_usd)
        );
    }
    if let Some(all) = requests.get("all") {
        println!(
            "requests     {} Bedrock requests in {} role calls (at most {} in one)",
            all.bedrock_requests, all.calls, all.max_per_call
        );
    }
    println!(
        "held         {} reservation(s), {}; {} reclaimed after their calls never settled",
        holds.len(),
        format_usd(holds.iter().map(|h| h.amount_nano).sum()),
        reclaims.len()
    );
    Ok(())
}

/// `evolve cost --reconcile`: every recorded reconciliation, or with `--day` that day's,
/// reconciled first when it is not yet.
async fn reconciliations(cli: &Cli, args: &CostArgs) -> anyhow::Result<()> {
    let store = open_existing(cli).await?;
    let records = match args.day {
        Some(day) => vec![reconcile_day(cli, store.as_ref(), day, args.threshold_bp).await?],
        None => store.reconciliations(None).await?,
    };
    if args.json {
        return match (args.day, records.first()) {
            (Some(_), Some(record)) => print_json(record),
            _ => print_json(&records),
        };
    }
    if records.is_empty() {
        println!(
            "no reconciliation recorded: cost-guard records one per past day from the first \
             sweep after its reconcile hour (deployed stacks), or run `evolve cost --reconcile \
             --store aws --day YYYY-MM-DD`"
        );
    }
    for record in &records {
        print_reconciliation(record);
    }
    Ok(())
}

/// Reconciles `day` from Cost Explorer unless it is already, records it, and returns the
/// day's record. Only a deployed stack has a bill: the local store's spend is no account's.
async fn reconcile_day(
    cli: &Cli,
    store: &dyn FullStore,
    day: NaiveDate,
    threshold_bp: u32,
) -> anyhow::Result<Reconciliation> {
    if cli.store != StoreKind::Aws {
        return Err(bad_input(
            "--day reads the bill from Cost Explorer, and only a deployed stack's spend is \
             billed to an AWS account: use --store aws (a local store has nothing to reconcile)",
        ));
    }
    let now = Utc::now();
    if day >= now.date_naive() {
        return Err(bad_input(format!(
            "{day} is not over yet (UTC): a day is reconciled once it has ended"
        )));
    }
    let stored = store
        .reconciliations(Some(day))
        .await?
        .into_iter()
        .find(|r| r.day == day);
    if let Some(stored) = stored.as_ref().filter(|s| s.is_compared()) {
        eprintln!(
            "{day} was reconciled on {} (a day is compared once)",
            stored.checked_at.format("%Y-%m-%d %H:%M UTC")
        );
        return Ok(stored.clone());
    }
    let source = CostExplorerBilling::from_env().await;
    let run = shared::stages::cost_guard::reconcile::reconcile_days(
        store,
        &source,
        builtin_models(),
        &[day],
        threshold_bp,
        now,
    )
    .await?;
    if let Some(error) = run.error {
        anyhow::bail!(
            "{error}: the cost-guard role's ce:GetCostAndUsage permission, or yours, is needed"
        );
    }
    let record = run
        .records
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("no record for {day}"))?;
    record_reconciliation(store, &record, stored.as_ref()).await?;
    Ok(record)
}

/// Stores the record (and its alert) unless the stored one stands: a comparison is written
/// once, a day not billed yet once per day it was asked for.
async fn record_reconciliation(
    store: &dyn FullStore,
    record: &Reconciliation,
    stored: Option<&Reconciliation>,
) -> anyhow::Result<()> {
    if let Some(why) = record.refused_over(stored) {
        eprintln!("not recorded: {why}");
        return Ok(());
    }
    let mut writes = vec![Write::PutReconciliation {
        record: record.clone(),
    }];
    if let Some(alert) = alert(record) {
        eprintln!("alert: {}", alert.message);
        writes.push(Write::PutAlert { alert });
    }
    store
        .commit(Transaction {
            writes,
            completion: None,
        })
        .await?;
    eprintln!("recorded: {}", summary(record));
    Ok(())
}

fn print_reconciliation(record: &Reconciliation) {
    let checked = record.checked_at.format("%Y-%m-%d %H:%M");
    match &record.outcome {
        Outcome::NotYetBilled { reason } => println!(
            "{}  not billed yet  ledger {}  ({reason}; asked {checked} UTC)",
            record.day,
            format_usd(record.ledger_nano)
        ),
        Outcome::Compared(c) => {
            println!(
                "{}  billed {}  ledger {}  difference {} ({}){}{}  (checked {checked} UTC)",
                record.day,
                format_billed(c.billed_nano),
                format_usd(record.ledger_nano),
                format_difference(c.difference_nano),
                c.difference_bp.map_or_else(|| "n/a".to_owned(), format_bp),
                if c.exceeded { "  OVER THRESHOLD" } else { "" },
                if c.unbilled { "  never billed" } else { "" },
            );
            for m in &c.models {
                println!(
                    "    {:<44}  billed {:>12}  ledger {:>12}  difference {:>13}",
                    m.model,
                    format_billed(m.billed_nano),
                    format_usd(m.ledger_nano),
                    format_difference(m.difference_nano)
                );
            }
        }
    }
}

/// Bedrock requests per role call: the figure a misbehaving model drives up.
#[derive(Debug, Default, Serialize)]
struct RequestsPerCall {
    calls: u64,
    bedrock_requests: u64,
    max_per_call: u32,
    /// Requests per call, two decimals (a display figure, not money).
    per_call: f64,
}

impl RequestsPerCall {
    fn add(&mut self, requests: u32) {
        self.calls += 1;
        self.bedrock_requests += u64::from(requests);
        self.max_per_call = self.max_per_call.max(requests);
        self.per_call = (self.bedrock_requests * 100 / self.calls) as f64 / 100.0;
    }
}

/// Later than any hold can expire: every hold.
fn far_future(now: chrono::DateTime<Utc>) -> chrono::DateTime<Utc> {
    now + chrono::Duration::days(36_500)
}

/// Sends a `RollbackRequested` through the pipeline, as an operator message.
pub async fn rollback(cli: &Cli, args: &RollbackArgs) -> anyhow::Result<()> {
    let store = open_existing(cli).await?;
    let id = resolve_system(store.as_ref(), cli.system.as_deref()).await?;
    let head = super::head_of(store.as_ref(), &id).await?;
    if let Some(to) = args.to {
        if to >= head.generation || store.get_generation(&id, to).await?.is_none() {
            return Err(bad_input(format!(
                "cannot roll back to generation {to}: the head is at {}",
                head.generation
            )));
        }
    }
    let now = Utc::now().max(head.updated_at + chrono::Duration::seconds(1));
    let operator = super::operator(cli).await?;
    let env = Envelope {
        id: derive_id(
            "op",
            &[id.as_str(), &head.generation.to_string(), &now.to_rfc3339()],
        ),
        causation_id: format!("operator:{operator}"),
        system_id: id.clone(),
        base_generation: head.generation,
        sent_at: now,
        traceparent: None,
        body: Body::RollbackRequested {
            to_generation: args.to,
            requested_by: operator,
            reason: args.reason.clone(),
        },
    };
    let sent = format!("{id}: rollback requested on the snapshot queue");
    let Some(handled) = super::deliver_operator_message(cli, store, env, now, &sent).await? else {
        return Ok(());
    };
    match handled {
        Ok(handled) => {
            eprintln!("{id}: rollback committed ({handled:?}); the next `evolve run` measures it");
            Ok(())
        }
        Err(e) if !e.is_retryable() => Err(bad_input(e.to_string())),
        Err(e) => Err(e.into()),
    }
}
