//! The page: one HTML file with inline CSS and inline SVG, nothing fetched. Every string from
//! the store goes through [`esc`]: reasoning is LLM output, and gene and model names come from
//! users' files.
//!
//! Machine-readable markers, for tests and scripts: each chart is a
//! `<figure data-chart="NAME" data-points="N">`; the summary section carries the headline
//! numbers as `data-*` attributes; table rows carry raw numbers (nano-USD, full precision).

use std::collections::BTreeSet;
use std::fmt::Write as _;

use shared::cost::format_usd;

use super::charts::{self, ChartError};
use super::data::ReportData;

/// Escapes text for HTML element content and quoted attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.4}"))
}

/// A number as a `data-*` value: full precision, empty when absent.
fn raw(v: Option<f64>) -> String {
    v.map_or_else(String::new, |v| v.to_string())
}

const STYLE: &str = "
body { font-family: system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif; margin: 0;
  background: #f6f7f9; color: #1d2330; }
main { max-width: 1000px; margin: 0 auto; padding: 24px; }
h1 { font-size: 1.6em; margin: 0 0 4px; }
h2 { font-size: 1.2em; margin: 28px 0 8px; border-bottom: 2px solid #d7dce4; padding-bottom: 4px; }
p.note { color: #5a6473; font-size: 0.9em; margin: 4px 0 10px; }
section { background: #fff; border: 1px solid #e1e5eb; border-radius: 6px; padding: 6px 16px 14px;
  margin-bottom: 18px; }
figure { margin: 8px 0; }
figure svg { max-width: 100%; height: auto; display: block; }
figcaption { font-size: 0.85em; color: #5a6473; }
.genes { display: grid; grid-template-columns: repeat(auto-fill, minmax(300px, 1fr)); gap: 8px; }
.genes figure { border: 1px solid #eef0f3; border-radius: 4px; padding: 4px; }
.genes figcaption { font-weight: 600; color: #1d2330; }
dl.summary { display: grid; grid-template-columns: repeat(4, 1fr); gap: 8px; margin: 8px 0; }
dl.summary div { background: #f0f4fa; border-radius: 6px; padding: 8px 10px; }
dl.summary dt { font-size: 0.8em; color: #5a6473; }
dl.summary dd { margin: 0; font-size: 1.25em; font-weight: 600; }
table { border-collapse: collapse; width: 100%; font-size: 0.85em; }
th, td { border-bottom: 1px solid #e6e9ee; padding: 4px 6px; text-align: left; vertical-align: top; }
th { background: #f0f2f5; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.rec { font-weight: 600; padding: 1px 6px; border-radius: 3px; font-size: 0.9em; }
.rec-APPROVE { background: #dff3e6; color: #11683a; }
.rec-REJECT { background: #fbe0e0; color: #a11d1e; }
.rec-DEFER { background: #fff1d6; color: #8a5a00; }
.rec-PENDING_APPROVAL { background: #e3ecfb; color: #1f4e99; }
.scroll { max-height: 520px; overflow-y: auto; }
table.decisions { table-layout: fixed; }
table.decisions td { overflow-wrap: anywhere; }
";

/// The whole page.
pub fn render(data: &ReportData) -> Result<String, ChartError> {
    let mut html = String::with_capacity(256 * 1024);
    let id = esc(data.system_id.as_str());
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>evolve report: {id}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<main>\n\
         <h1>Evolution report: {id}</h1>\n\
         <p class=\"note\">Records from {} to {} (UTC); generated {}.</p>\n",
        data.span.0.format("%Y-%m-%d %H:%M"),
        data.span.1.format("%Y-%m-%d %H:%M"),
        data.generated_at.format("%Y-%m-%d %H:%M:%S UTC"),
    );
    summary(&mut html, data);
    fitness(&mut html, data)?;
    super::judging::section(&mut html, data)?;
    genes(&mut html, data)?;
    decisions(&mut html, data);
    spend(&mut html, data)?;
    budget(&mut html, data)?;
    predictions(&mut html, data)?;
    if let Some(replay) = &data.replay {
        super::what_if::section(&mut html, replay);
    }
    html.push_str("</main>\n</body>\n</html>\n");
    Ok(html)
}

fn summary(html: &mut String, data: &ReportData) {
    let evaluated = data.kept() + data.rolled_back();
    let baseline = data
        .evaluations
        .iter()
        .find(|e| e.kind == super::data::PointKind::Baseline)
        .and_then(|e| e.fitness);
    let _ = write!(
        html,
        "<section id=\"summary\" data-system=\"{}\" data-head-generation=\"{}\" \
         data-head-status=\"{}\" \
         data-generations=\"{}\" data-evaluations=\"{}\" data-mutations-evaluated=\"{evaluated}\" \
         data-kept=\"{}\" data-rollbacks=\"{}\" data-initial-fitness=\"{}\" \
         data-final-fitness=\"{}\" data-decisions=\"{}\" data-total-cost-nano=\"{}\">\n\
         <h2>Summary</h2>\n<dl class=\"summary\">\n",
        esc(data.system_id.as_str()),
        data.head_generation,
        esc(data.head_status),
        data.generations.len(),
        data.evaluations.len(),
        data.kept(),
        data.rolled_back(),
        raw(baseline),
        raw(data.stable_fitness),
        data.decisions.len(),
        data.total_cost_nano(),
    );
    let items = [
        (
            "head generation",
            format!("{} ({})", data.head_generation, data.head_status),
        ),
        ("baseline fitness", fmt_opt(baseline)),
        ("current fitness", fmt_opt(data.stable_fitness)),
        (
            "mutations evaluated",
            format!("{evaluated} ({} kept)", data.kept()),
        ),
        ("rollbacks", data.rolled_back().to_string()),
        ("decisions", data.decisions.len().to_string()),
        ("LLM spend", format_usd(data.total_cost_nano())),
        ("budget mode now", data.budget_now.mode.as_str().to_owned()),
    ];
    for (name, value) in items {
        let _ = writeln!(
            html,
            "<div><dt>{}</dt><dd>{}</dd></div>",
            esc(name),
            esc(&value)
        );
    }
    html.push_str("</dl>\n</section>\n");
}

fn fitness(html: &mut String, data: &ReportData) -> Result<(), ChartError> {
    let svg = charts::fitness(data)?;
    let _ = write!(
        html,
        "<section id=\"fitness\">\n<h2>Fitness per generation</h2>\n\
         <p class=\"note\">One point per closed evaluation. Green: a mutation measured and kept; \
         red cross: a mutation rolled back (on the bottom edge when it produced no valid score); \
         grey: a baseline. The line is the fitness the system ran with.</p>\n\
         <figure data-chart=\"fitness\" data-points=\"{}\" data-kept=\"{}\" data-rollbacks=\"{}\">\n\
         {svg}</figure>\n",
        data.evaluations.len(),
        data.kept(),
        data.rolled_back(),
    );
    html.push_str(
        "<details><summary>Closed evaluations</summary>\n<div class=\"scroll\"><table>\n\
         <tr><th>generation</th><th>outcome</th><th>fitness</th><th>parent fitness</th>\
         <th>reports</th><th>verdict</th><th>changes</th><th>closed</th></tr>\n",
    );
    for e in &data.evaluations {
        let _ = writeln!(
            html,
            "<tr data-generation=\"{}\" data-fitness=\"{}\" data-kind=\"{}\" data-failed=\"{}\" \
             data-p-value=\"{}\" data-breaches=\"{}\">\
             <td class=\"num\">{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            e.generation,
            raw(e.fitness),
            esc(e.kind.as_str()),
            e.failed,
            raw(e.p_value),
            e.breaches.len(),
            e.generation,
            esc(&format!("{:?}", e.outcome).to_lowercase()),
            fmt_opt(e.fitness),
            fmt_opt(e.baseline_fitness),
            esc(&e.reports),
            esc(&e.verdict),
            esc(if e.changes.is_empty() {
                "(baseline)"
            } else {
                &e.changes
            }),
            e.closed_at.format("%Y-%m-%d %H:%M"),
        );
    }
    html.push_str("</table></div></details>\n</section>\n");
    Ok(())
}

fn genes(html: &mut String, data: &ReportData) -> Result<(), ChartError> {
    let origins = |origin: &str| {
        data.generations
            .iter()
            .filter(|g| g.origin == origin)
            .count()
    };
    let _ = write!(
        html,
        "<section id=\"genes\" data-generations=\"{}\">\n<h2>Genes over generations</h2>\n\
         <p class=\"note\">One point per generation ({} from mutations, {} from rollbacks, \
         which restore the parent's genes), on the gene's declared range.</p>\n\
         <div class=\"genes\">\n",
        data.generations.len(),
        origins("mutation"),
        origins("rollback"),
    );
    let last = data.generations.last().map_or(0, |g| g.generation);
    for series in &data.genes {
        let svg = charts::gene(series, last)?;
        let name = esc(&series.name);
        let _ = write!(
            html,
            "<figure data-chart=\"gene\" data-gene=\"{name}\" data-points=\"{}\">\n\
             <figcaption>{name}</figcaption>\n{svg}</figure>\n",
            series.points.len(),
        );
    }
    html.push_str("</div>\n</section>\n");
    Ok(())
}

fn decisions(html: &mut String, data: &ReportData) {
    let cost: u64 = data.decisions.iter().map(|d| d.cost_nano).sum();
    let _ = write!(
        html,
        "<section id=\"decisions\" data-rows=\"{}\" data-cost-nano=\"{cost}\">\n\
         <h2>Decisions</h2>\n<p class=\"note\">Every decision in the audit trail, oldest first; \
         reasoning cut to an excerpt.</p>\n<div class=\"scroll\"><table class=\"decisions\">\n\
         <colgroup><col style=\"width:12%\"><col style=\"width:15%\"><col style=\"width:6%\">\
         <col style=\"width:14%\"><col style=\"width:6%\"><col style=\"width:12%\">\
         <col style=\"width:26%\"><col style=\"width:9%\"></colgroup>\n\
         <tr><th>time</th><th>mutation</th><th>risk</th><th>recommendation</th>\
         <th>conf.</th><th>model</th><th>reasoning</th><th>cost</th></tr>\n",
        data.decisions.len(),
    );
    for d in &data.decisions {
        let rec = esc(d.recommendation);
        let _ = writeln!(
            html,
            "<tr data-risk=\"{}\" data-confidence=\"{}\" data-cost-nano=\"{}\"><td>{}</td><td>{}</td>\
             <td class=\"num\">{:.2}</td><td><span class=\"rec rec-{rec}\">{rec}</span></td>\
             <td class=\"num\">{:.2}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td></tr>",
            d.risk,
            d.confidence,
            d.cost_nano,
            d.timestamp.format("%Y-%m-%d %H:%M:%S"),
            esc(&d.mutation),
            d.risk,
            d.confidence,
            esc(&d.model),
            esc(&d.reasoning_excerpt),
            format_usd(d.cost_nano),
        );
    }
    html.push_str("</table></div>\n</section>\n");
}

/// Models in a stable order, for colours that agree between a chart and its table.
fn models<'a>(names: impl Iterator<Item = &'a str>) -> Vec<String> {
    names
        .collect::<BTreeSet<_>>()
        .into_iter()
        .map(str::to_owned)
        .collect()
}

fn spend(html: &mut String, data: &ReportData) -> Result<(), ChartError> {
    let models = models(data.spend.iter().map(|s| s.model.as_str()));
    let svg = charts::spend(data, &models)?;
    let budget = data.daily_budget_nano.map_or_else(
        || "no daily budget set".to_owned(),
        |b| format!("daily budget {}", format_usd(b)),
    );
    let _ = write!(
        html,
        "<section id=\"spend\">\n<h2>LLM spend by model and day</h2>\n\
         <p class=\"note\">This system's LLM calls by UTC day, stacked by model; {} (the budget \
         is global: it covers every system).</p>\n\
         <figure data-chart=\"spend\" data-points=\"{}\" data-total-cost-nano=\"{}\" \
         data-daily-budget-nano=\"{}\">\n{svg}</figure>\n\
         <table>\n<tr><th>day</th><th>model</th><th>calls</th><th>cost</th></tr>\n",
        esc(&budget),
        data.spend.len(),
        data.total_cost_nano(),
        data.daily_budget_nano
            .map_or_else(String::new, |b| b.to_string()),
    );
    for s in &data.spend {
        let _ = writeln!(
            html,
            "<tr data-cost-nano=\"{}\"><td>{}</td><td>{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td></tr>",
            s.cost_nano,
            esc(&s.day),
            esc(&s.model),
            s.calls,
            format_usd(s.cost_nano),
        );
    }
    html.push_str("</table>\n</section>\n");
    Ok(())
}

fn budget(html: &mut String, data: &ReportData) -> Result<(), ChartError> {
    let svg = charts::budget_modes(data)?;
    let _ = write!(
        html,
        "<section id=\"budget\">\n<h2>Budget mode</h2>\n\
         <p class=\"note\">Normal, Economy (cheapest capable models) or Paused (the local engine \
         answers), from cost-guard's mode changes. Now: {} ({}).</p>\n\
         <figure data-chart=\"budget-mode\" data-points=\"{}\">\n{svg}</figure>\n\
         <table>\n<tr><th>from</th><th>mode</th><th>why</th></tr>\n",
        esc(data.budget_now.mode.as_str()),
        esc(&data.budget_now.reason),
        data.budget_modes.len(),
    );
    for c in &data.budget_modes {
        let _ = writeln!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            c.at.format("%Y-%m-%d %H:%M:%S"),
            esc(c.mode.as_str()),
            esc(&c.reason),
        );
    }
    html.push_str("</table>\n");
    let _ = writeln!(
        html,
        "<h3>Cost actions on this system</h3>\n<p class=\"note\">What the tick did to the \
         system's cycle schedule for the budget mode (stretched in Economy, stopped when Paused, \
         restored in Normal).</p>\n<table data-rows=\"{}\">\n\
         <tr><th>at</th><th>generation</th><th>action</th></tr>",
        data.cost_actions.len()
    );
    if data.cost_actions.is_empty() {
        html.push_str("<tr><td colspan=\"3\">none recorded</td></tr>\n");
    }
    for a in &data.cost_actions {
        let _ = writeln!(
            html,
            "<tr><td>{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
            a.at.format("%Y-%m-%d %H:%M:%S"),
            a.generation,
            esc(&a.detail),
        );
    }
    html.push_str("</table>\n</section>\n");
    Ok(())
}

fn predictions(html: &mut String, data: &ReportData) -> Result<(), ChartError> {
    let models = models(data.predictions.iter().map(|p| p.model.as_str()));
    let svg = charts::predictions(data, &models)?;
    let measured = data
        .predictions
        .iter()
        .filter(|p| p.actual.is_some())
        .count();
    let _ = write!(
        html,
        "<section id=\"predictions\">\n<h2>Predicted vs actual fitness impact</h2>\n\
         <p class=\"note\">Each planned mutation's predicted impact (from the plan step) against \
         its measured fitness minus its parent's, by the model that made the plan. Mutations \
         without a valid score are counted but not drawn.</p>\n\
         <figure data-chart=\"predictions\" data-points=\"{measured}\" data-planned=\"{}\">\n\
         {svg}</figure>\n<table>\n<tr><th>model</th><th>planned</th><th>measured</th>\
         <th>mean predicted</th><th>mean actual</th><th>mean |error|</th></tr>\n",
        data.predictions.len(),
    );
    for model in &models {
        let all: Vec<_> = data
            .predictions
            .iter()
            .filter(|p| &p.model == model)
            .collect();
        let pairs: Vec<(f64, f64)> = all
            .iter()
            .filter_map(|p| p.actual.map(|a| (p.predicted, a)))
            .collect();
        let mean = |f: &dyn Fn(&(f64, f64)) -> f64| {
            (!pairs.is_empty()).then(|| pairs.iter().map(f).sum::<f64>() / pairs.len() as f64)
        };
        let _ = writeln!(
            html,
            "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            esc(model),
            all.len(),
            pairs.len(),
            fmt_opt(mean(&|p| p.0)),
            fmt_opt(mean(&|p| p.1)),
            fmt_opt(mean(&|p| (p.0 - p.1).abs())),
        );
    }
    html.push_str("</table>\n");
    if !data.model_errors.is_empty() {
        html.push_str(
            "<p class=\"note\">The router's performance record (a moving average of \
             |predicted - actual|):</p>\n<table>\n<tr><th>model</th><th>role</th>\
             <th>predictions</th><th>prediction error</th></tr>\n",
        );
        for e in &data.model_errors {
            let _ = writeln!(
                html,
                "<tr><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{:.4}</td></tr>",
                esc(&e.model),
                esc(e.role.as_str()),
                e.predictions,
                e.prediction_error,
            );
        }
        html.push_str("</table>\n");
    }
    html.push_str("</section>\n");
    Ok(())
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};
    use shared::domain::{BudgetMode, EvaluationOutcome, GeneValue, SystemId};
    use shared::store::BudgetState;

    use super::super::data::{
        CostAction, DecisionRow, EvaluationPoint, GeneAxis, GeneSeries, GenerationPoint,
        ModeChange, PointKind, ReportData, SpendRow,
    };
    use super::{esc, render};

    fn at(minute: i64) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .expect("time")
            .with_timezone(&Utc)
            + chrono::Duration::minutes(minute)
    }

    /// A system that was just created: nothing evaluated, decided or spent yet.
    fn empty() -> ReportData {
        ReportData {
            system_id: SystemId::parse("svc").expect("id"),
            generated_at: at(10),
            span: (at(0), at(0)),
            head_generation: 0,
            head_status: "evaluating",
            stable_fitness: None,
            evaluations: vec![],
            generations: vec![GenerationPoint {
                generation: 0,
                origin: "initial",
            }],
            genes: vec![GeneSeries {
                name: "x".into(),
                axis: GeneAxis::Numeric {
                    min: 0.0,
                    max: 10.0,
                },
                points: vec![(0, GeneValue::Int(5))],
            }],
            decisions: vec![],
            spend: vec![],
            daily_budget_nano: None,
            budget_modes: vec![ModeChange {
                at: at(0),
                mode: BudgetMode::Normal,
                reason: "start".into(),
            }],
            budget_now: BudgetState::default(),
            cost_actions: vec![],
            predictions: vec![],
            model_errors: vec![],
            guardrails: vec![],
            objectives: vec![],
            pareto_axes: None,
            replay: None,
            confidence_percent: 80,
        }
    }

    #[test]
    fn a_system_with_no_history_still_renders_every_chart() {
        let page = render(&empty()).expect("renders");
        for chart in ["fitness", "gene", "spend", "budget-mode", "predictions"] {
            assert!(
                page.contains(&format!("data-chart=\"{chart}\"")),
                "{chart} chart missing"
            );
        }
        assert_eq!(page.matches("<svg").count(), 5);
        assert!(page.contains("data-points=\"0\""));
    }

    #[test]
    fn llm_and_user_text_is_escaped_everywhere() {
        let hostile = "</td><script>alert(1)</script><img src=x onerror=y>\"'&";
        let mut data = empty();
        data.decisions.push(DecisionRow {
            timestamp: at(1),
            mutation: hostile.into(),
            risk: 0.4,
            recommendation: "APPROVE",
            confidence: 0.9,
            model: hostile.into(),
            reasoning_excerpt: hostile.into(),
            cost_nano: 42,
        });
        data.spend.push(SpendRow {
            day: "2026-01-01".into(),
            model: hostile.into(),
            calls: 1,
            cost_nano: 42,
        });
        data.evaluations.push(EvaluationPoint {
            generation: 1,
            fitness: Some(1.0),
            baseline_fitness: Some(0.5),
            kind: PointKind::Kept,
            outcome: EvaluationOutcome::Keep,
            changes: hostile.into(),
            reports: hostile.into(),
            failed: 0,
            verdict: hostile.into(),
            breaches: vec![hostile.into()],
            p_value: Some(0.01),
            canary: None,
            metrics: std::collections::BTreeMap::new(),
            closed_at: at(1),
        });
        data.budget_now.reason = hostile.into();
        data.span.1 = at(90);
        data.budget_modes.push(ModeChange {
            at: at(30),
            mode: BudgetMode::Paused,
            reason: hostile.into(),
        });
        data.cost_actions.push(CostAction {
            at: at(31),
            generation: 1,
            detail: hostile.into(),
        });
        let page = render(&data).expect("renders");
        assert!(!page.contains("<script"), "raw markup leaked");
        assert!(!page.contains("<img"), "raw markup leaked");
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(page.contains("data-total-cost-nano=\"42\""));
        assert!(page.contains("data-chart=\"budget-mode\" data-points=\"2\""));
        assert!(page.contains("<table data-rows=\"1\">"));
    }

    #[test]
    fn escaping_neutralises_markup_in_llm_text() {
        assert_eq!(
            esc("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
    }
}
