//! The report's what-if section: a replay's verdicts beside the recorded ones, the flips with
//! both reasonings, spend recorded and replayed by day and model, and the budget modes the
//! replay's budget called for (docs/architecture.md, "What-if replay").

use std::fmt::Write as _;

use shared::cost::format_usd;
use shared::stages::replay::ReplayReport;

use super::html::esc;

pub fn section(html: &mut String, replay: &ReplayReport) {
    let a = replay.agreement;
    let flips: Vec<_> = replay.flips().collect();
    let _ = write!(
        html,
        "<section id=\"what-if\" data-compared=\"{}\" data-agreed=\"{}\" data-flips=\"{}\" \
         data-recorded-nano-usd=\"{}\" data-replayed-nano-usd=\"{}\" data-mode-changes=\"{}\">\n\
         <h2>What if</h2>\n<p class=\"note\">The recorded decisions asked again with the {} engine \
         against the DNA and history of their time: {} of {} verdicts agree ({}). Recorded spend \
         {}, replayed {}.</p>\n",
        a.compared,
        a.agreed,
        flips.len(),
        replay.recorded_nano_usd,
        replay.replayed_nano_usd,
        replay.mode_changes.len(),
        esc(&replay.engine),
        a.agreed,
        a.compared,
        a.percent_text(),
        format_usd(replay.recorded_nano_usd),
        format_usd(replay.replayed_nano_usd),
    );
    if !flips.is_empty() {
        html.push_str(
            "<h3>Flips</h3>\n<div class=\"scroll\"><table class=\"decisions\">\n<tr><th>decision</th>\
             <th>recorded</th><th>replayed</th><th>recorded reasoning</th>\
             <th>replayed reasoning</th></tr>\n",
        );
        for d in flips {
            let _ = writeln!(
                html,
                "<tr data-decision=\"{}\"><td>{}</td><td><span class=\"rec rec-{r}\">{r}</span> \
                 {}</td><td><span class=\"rec rec-{p}\">{p}</span> {}</td><td>{}</td><td>{}</td></tr>",
                esc(&d.decision_id),
                esc(&d.decision_id),
                esc(&d.recorded.model),
                esc(&d.replayed.model),
                esc(&d.recorded.reasoning),
                esc(&d.replayed.reasoning),
                r = d.recorded.decision.as_str(),
                p = d.replayed.decision.as_str(),
            );
        }
        html.push_str("</table></div>\n");
    }
    html.push_str(
        "<h3>Spend</h3>\n<table>\n<tr><th>day</th><th>model</th><th>recorded</th>\
         <th>replayed</th></tr>\n",
    );
    for row in &replay.spend {
        let _ = writeln!(
            html,
            "<tr data-recorded-nano-usd=\"{}\" data-replayed-nano-usd=\"{}\"><td>{}</td><td>{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            row.recorded_nano_usd,
            row.replayed_nano_usd,
            row.day,
            esc(&row.model),
            format_usd(row.recorded_nano_usd),
            format_usd(row.replayed_nano_usd),
        );
    }
    html.push_str("</table>\n");
    if replay.mode_changes.is_empty() {
        html.push_str("<p class=\"note\">The replay's budgets called for no change of mode.</p>\n");
    } else {
        html.push_str(
            "<h3>Budget modes</h3>\n<table>\n<tr><th>at</th><th>from</th><th>to</th>\
             <th>why</th></tr>\n",
        );
        for m in &replay.mode_changes {
            let _ = writeln!(
                html,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                m.at.format("%Y-%m-%d %H:%M:%S"),
                m.from.as_str(),
                m.to.as_str(),
                esc(&m.reason),
            );
        }
        html.push_str("</table>\n");
    }
    html.push_str("</section>\n");
}
