//! The report's judging section: the guardrails and how often each was broken, the confidence
//! significance verdicts need, and the Pareto front of kept generations on two objectives
//! (docs/architecture.md, "Judging a generation").

use std::fmt::Write as _;

use shared::domain::judging::dominated;

use super::charts::{self, ChartError, ParetoPoint};
use super::data::{PointKind, ReportData};
use super::html::esc;

/// The kept generations (baselines included) that reported both objectives' metrics.
pub fn pareto_points(data: &ReportData) -> Vec<ParetoPoint> {
    let Some((x, y)) = &data.pareto_axes else {
        return Vec::new();
    };
    let kept: Vec<(u64, f64, f64)> = data
        .evaluations
        .iter()
        .filter(|e| matches!(e.kind, PointKind::Kept | PointKind::Baseline))
        .filter_map(|e| {
            Some((
                e.generation,
                *e.metrics.get(&x.metric)?,
                *e.metrics.get(&y.metric)?,
            ))
        })
        .collect();
    let values: Vec<(f64, f64)> = kept.iter().map(|&(_, a, b)| (a, b)).collect();
    kept.iter()
        .zip(dominated(&values, x, y))
        .map(|(&(generation, x, y), dominated)| ParetoPoint {
            generation,
            x,
            y,
            dominated,
        })
        .collect()
}

pub fn section(html: &mut String, data: &ReportData) -> Result<(), ChartError> {
    let breached = data
        .evaluations
        .iter()
        .filter(|e| !e.breaches.is_empty())
        .count();
    let tested = data
        .evaluations
        .iter()
        .filter(|e| e.p_value.is_some())
        .count();
    let _ = write!(
        html,
        "<section id=\"judging\" data-guardrails=\"{}\" data-breaches=\"{breached}\" \
         data-significance-verdicts=\"{tested}\" data-confidence-percent=\"{}\">\n\
         <h2>Judging</h2>\n<p class=\"note\">A generation that breaks a guardrail is rolled back \
         whatever its score. Windows of two or more samples are judged by a rank test against \
         the parent's samples at {}% confidence; an inconclusive window is extended once, then \
         the parent is kept.</p>\n<table>\n<tr><th>guardrail</th><th>windows that broke it</th></tr>\n",
        data.guardrails.len(),
        data.confidence_percent,
        data.confidence_percent,
    );
    for rail in &data.guardrails {
        let count = data
            .evaluations
            .iter()
            .filter(|e| {
                e.breaches
                    .iter()
                    .any(|b| b.contains(&format!("guardrail {rail} ")))
            })
            .count();
        let _ = writeln!(
            html,
            "<tr data-guardrail=\"{}\" data-breaches=\"{count}\"><td>{}</td><td class=\"num\">{count}</td></tr>",
            esc(rail),
            esc(rail)
        );
    }
    if data.guardrails.is_empty() {
        html.push_str("<tr><td colspan=\"2\">(no guardrails)</td></tr>\n");
    }
    html.push_str("</table>\n");
    if !data.objectives.is_empty() {
        html.push_str(
            "<h3>Objectives</h3>\n<table data-objectives=\"true\">\n<tr><th>metric</th>\
             <th>direction</th><th>weight</th><th>target</th></tr>\n",
        );
        for o in &data.objectives {
            let way = o.direction.as_str();
            let _ = writeln!(
                html,
                "<tr data-objective=\"{}\"><td>{}</td><td>{way}</td><td class=\"num\">{}</td>\
                 <td class=\"num\">{}</td></tr>",
                esc(o.metric.as_str()),
                esc(o.metric.as_str()),
                o.weight,
                o.target.map_or_else(|| "-".to_owned(), |t| t.to_string()),
            );
        }
        html.push_str("</table>\n");
    }
    canaries(html, data);
    if let Some((x, y)) = &data.pareto_axes {
        let points = pareto_points(data);
        let svg = charts::pareto(&points, x.metric.as_str(), y.metric.as_str())?;
        let front: Vec<String> = points
            .iter()
            .filter(|p| !p.dominated)
            .map(|p| p.generation.to_string())
            .collect();
        let _ = write!(
            html,
            "<h3>Pareto front of kept generations</h3>\n<figure data-chart=\"pareto\" \
             data-x=\"{}\" data-y=\"{}\" data-points=\"{}\" data-front=\"{}\">\n{svg}</figure>\n\
             <table>\n<tr><th>generation</th><th>{}</th><th>{}</th><th>dominated</th></tr>\n",
            esc(x.metric.as_str()),
            esc(y.metric.as_str()),
            points.len(),
            front.join(","),
            esc(x.metric.as_str()),
            esc(y.metric.as_str()),
        );
        for p in &points {
            let _ = writeln!(
                html,
                "<tr data-generation=\"{}\" data-dominated=\"{}\"><td class=\"num\">{}</td>\
                 <td class=\"num\">{:.4}</td><td class=\"num\">{:.4}</td><td>{}</td></tr>",
                p.generation,
                p.dominated,
                p.generation,
                p.x,
                p.y,
                if p.dominated { "yes" } else { "no" }
            );
        }
        html.push_str("</table>\n");
    }
    html.push_str("</section>\n");
    Ok(())
}

/// Every canary verdict: the share, both sides' samples, the control's fitness, the outcome.
fn canaries(html: &mut String, data: &ReportData) {
    let rows: Vec<_> = data
        .evaluations
        .iter()
        .filter_map(|e| e.canary.map(|c| (e, c)))
        .collect();
    if rows.is_empty() {
        return;
    }
    let _ = write!(
        html,
        "<h3>Canary verdicts</h3>\n<table data-canaries=\"{}\">\n<tr><th>generation</th>\
         <th>share</th><th>canary samples</th><th>control samples</th><th>canary fitness</th>\
         <th>control fitness</th><th>promoted</th></tr>\n",
        rows.len()
    );
    for (e, c) in rows {
        let _ = writeln!(
            html,
            "<tr data-canary-generation=\"{}\" data-promoted=\"{}\"><td class=\"num\">{}</td>\
             <td class=\"num\">{:.0}%</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
            e.generation,
            c.promoted,
            e.generation,
            c.share * 100.0,
            c.canary_samples,
            c.control_samples,
            e.fitness
                .map_or_else(|| "-".to_owned(), |f| format!("{f:.4}")),
            c.control_fitness
                .map_or_else(|| "-".to_owned(), |f| format!("{f:.4}")),
            if c.promoted { "yes" } else { "no" },
        );
    }
    html.push_str("</table>\n");
}
