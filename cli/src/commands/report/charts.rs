//! The report's charts, drawn by plotters into SVG strings that the page embeds inline, so the
//! file needs nothing from the network to show them. Plotters escapes the text it writes.

use chrono::{DateTime, Duration, Utc};
use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use shared::domain::BudgetMode;

use super::data::{GeneAxis, GeneSeries, PointKind, ReportData};

/// Drawing failed; with the SVG backend that is a formatting error, not bad input.
#[derive(Debug, thiserror::Error)]
#[error("drawing a chart: {0}")]
pub struct ChartError(String);

impl<E: std::error::Error + Send + Sync> From<DrawingAreaErrorKind<E>> for ChartError {
    fn from(e: DrawingAreaErrorKind<E>) -> Self {
        Self(e.to_string())
    }
}

type Result<T> = std::result::Result<T, ChartError>;

const KEPT: RGBColor = RGBColor(22, 150, 80);
const ROLLED_BACK: RGBColor = RGBColor(214, 39, 40);
const BASELINE: RGBColor = RGBColor(90, 90, 90);
const LINE: RGBColor = RGBColor(31, 119, 180);
const BUDGET: RGBColor = RGBColor(214, 39, 40);
const GRID: RGBColor = RGBColor(225, 225, 225);

/// Distinct colours for series keyed by position (models), repeating after ten.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
    RGBColor(214, 39, 40),
];

pub fn palette(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// Runs `draw` on a white canvas of the given size and returns the SVG text.
fn svg(
    size: (u32, u32),
    draw: impl FnOnce(&DrawingArea<SVGBackend<'_>, Shift>) -> Result<()>,
) -> Result<String> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, size).into_drawing_area();
        root.fill(&WHITE)?;
        draw(&root)?;
        root.present()?;
    }
    Ok(out)
}

/// What every chart here draws on: numbers against numbers, into SVG.
type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// The series' legend, on a translucent box so that points behind it stay visible.
fn draw_legend<'a, 'b: 'a>(chart: &mut Chart<'a, 'b>, position: SeriesLabelPosition) -> Result<()> {
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.3))
        .draw()?;
    Ok(())
}

/// `lo..hi` widened by a margin, and never empty.
fn padded(lo: f64, hi: f64) -> std::ops::Range<f64> {
    if !lo.is_finite() || !hi.is_finite() {
        return 0.0..1.0;
    }
    let span = (hi - lo).abs();
    let pad = if span < 1e-12 {
        lo.abs().max(1.0) * 0.05
    } else {
        span * 0.08
    };
    (lo - pad)..(hi + pad)
}

fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    })
}

/// Fitness of each closed evaluation: kept mutations, rollbacks and baselines as distinct
/// markers, with the line of the fitness the system ran with. An unmeasured (inconclusive)
/// rollback sits on the chart's bottom edge.
pub fn fitness(data: &ReportData) -> Result<String> {
    let points = &data.evaluations;
    let (lo, hi) = bounds(
        points
            .iter()
            .flat_map(|p| [p.fitness, p.baseline_fitness])
            .flatten(),
    );
    let y = padded(lo, hi);
    let x_max = points.last().map_or(1, |p| p.generation.max(1)) as f64;
    svg((960, 380), |root| {
        let mut chart = ChartBuilder::on(root)
            .margin(14)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d(-0.5..x_max + 0.5, y.clone())?;
        chart
            .configure_mesh()
            .light_line_style(GRID)
            .x_desc("generation")
            .y_desc("fitness")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .draw()?;
        chart
            .draw_series(LineSeries::new(
                points
                    .iter()
                    .filter_map(|p| p.running_fitness().map(|f| (p.generation as f64, f))),
                LINE.stroke_width(2),
            ))?
            .label("fitness in use")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], LINE.stroke_width(2)));
        let at =
            |p: &super::data::EvaluationPoint| (p.generation as f64, p.fitness.unwrap_or(y.start));
        for (kind, label, colour) in [
            (PointKind::Baseline, "baseline", BASELINE),
            (PointKind::Kept, "mutation kept", KEPT),
        ] {
            chart
                .draw_series(
                    points
                        .iter()
                        .filter(|p| p.kind == kind)
                        .map(|p| Circle::new(at(p), 5, colour.filled())),
                )?
                .label(label)
                .legend(move |(x, y)| Circle::new((x + 8, y), 5, colour.filled()));
        }
        chart
            .draw_series(
                points
                    .iter()
                    .filter(|p| p.kind == PointKind::RolledBack)
                    .map(|p| Cross::new(at(p), 6, ROLLED_BACK.stroke_width(3))),
            )?
            .label("mutation rolled back")
            .legend(|(x, y)| Cross::new((x + 8, y), 6, ROLLED_BACK.stroke_width(3)));
        draw_legend(&mut chart, SeriesLabelPosition::LowerRight)?;
        Ok(())
    })
}

/// One gene's value per generation, on its declared range (choices by name, bools as
/// false/true).
pub fn gene(series: &GeneSeries, last_generation: u64) -> Result<String> {
    let (y, labels): (std::ops::Range<f64>, Option<Vec<String>>) = match &series.axis {
        GeneAxis::Numeric { min, max } => (padded(*min, *max), None),
        GeneAxis::Bool => (-0.3..1.3, Some(vec!["false".into(), "true".into()])),
        GeneAxis::Choice(choices) => (
            -0.4..(choices.len().max(1) as f64 - 0.6),
            Some(choices.clone()),
        ),
    };
    let x_max = last_generation.max(1) as f64;
    svg((300, 190), |root| {
        let mut chart = ChartBuilder::on(root)
            .margin(8)
            .x_label_area_size(24)
            .y_label_area_size(60)
            .build_cartesian_2d(-0.5..x_max + 0.5, y)?;
        let label = |v: &f64| match &labels {
            Some(names) => {
                let i = v.round();
                if (v - i).abs() < 1e-6 && i >= 0.0 {
                    names.get(i as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            }
            None => format!("{v}"),
        };
        let mut mesh = chart.configure_mesh();
        mesh.light_line_style(GRID)
            .x_labels(6)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&label);
        if let Some(names) = &labels {
            mesh.y_labels(names.len() * 2 + 1);
        } else {
            mesh.y_labels(5);
        }
        mesh.draw()?;
        let points: Vec<(f64, f64)> = series
            .points
            .iter()
            .filter_map(|(g, v)| series.y(v).map(|y| (*g as f64, y)))
            .collect();
        chart.draw_series(LineSeries::new(
            points.iter().copied(),
            LINE.stroke_width(1),
        ))?;
        chart.draw_series(points.iter().map(|p| Circle::new(*p, 3, LINE.filled())))?;
        Ok(())
    })
}

/// Spend per UTC day, stacked by model, with the daily budget as a line.
pub fn spend(data: &ReportData, models: &[String]) -> Result<String> {
    let mut days: Vec<&str> = data.spend.iter().map(|s| s.day.as_str()).collect();
    days.dedup();
    let usd = |nano: u64| nano as f64 / shared::cost::NANO_PER_USD as f64;
    let day_max = days
        .iter()
        .map(|d| {
            data.spend
                .iter()
                .filter(|s| s.day == *d)
                .map(|s| s.cost_nano)
                .sum::<u64>()
        })
        .max()
        .unwrap_or(0);
    let peak = day_max.max(data.daily_budget_nano.unwrap_or(0));
    // Nothing spent and no budget (the local engine): a plain dollar axis rather than zeros.
    let top = if peak == 0 { 1.0 } else { usd(peak) * 1.15 };
    // Enough decimals that the axis labels differ, even for fractions of a cent.
    let decimals = (2.0 - top.log10().floor()).clamp(2.0, 9.0) as usize;
    let n = days.len().max(1) as f64;
    svg((960, 320), |root| {
        let mut chart = ChartBuilder::on(root)
            .margin(14)
            .x_label_area_size(36)
            .y_label_area_size(80)
            .build_cartesian_2d(-0.5..n - 0.5, 0.0..top)?;
        let day_label = |x: &f64| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 {
                days.get(i as usize)
                    .map_or_else(String::new, |d| (*d).to_owned())
            } else {
                String::new()
            }
        };
        chart
            .configure_mesh()
            .light_line_style(GRID)
            .x_labels(days.len().clamp(1, 12) * 2 + 1)
            .x_label_formatter(&day_label)
            .y_label_formatter(&|v| format!("${v:.decimals$}"))
            .y_desc("US dollars")
            .draw()?;
        for (m, model) in models.iter().enumerate() {
            let colour = palette(m);
            let bars: Vec<Rectangle<(f64, f64)>> = days
                .iter()
                .enumerate()
                .filter_map(|(i, day)| {
                    let below: u64 = data
                        .spend
                        .iter()
                        .filter(|s| s.day == *day && models[..m].contains(&s.model))
                        .map(|s| s.cost_nano)
                        .sum();
                    let own = data
                        .spend
                        .iter()
                        .find(|s| s.day == *day && &s.model == model)?;
                    let x = i as f64;
                    Some(Rectangle::new(
                        [
                            (x - 0.35, usd(below)),
                            (x + 0.35, usd(below + own.cost_nano)),
                        ],
                        colour.filled(),
                    ))
                })
                .collect();
            chart
                .draw_series(bars)?
                .label(model.as_str())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], colour.filled())
                });
        }
        if let Some(budget) = data.daily_budget_nano {
            chart
                .draw_series(LineSeries::new(
                    [(-0.5, usd(budget)), (n - 0.5, usd(budget))],
                    BUDGET.stroke_width(2),
                ))?
                .label("daily budget")
                .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], BUDGET.stroke_width(2)));
        }
        if !models.is_empty() || data.daily_budget_nano.is_some() {
            draw_legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
        }
        Ok(())
    })
}

fn mode_level(mode: BudgetMode) -> f64 {
    match mode {
        BudgetMode::Normal => 0.0,
        BudgetMode::Economy => 1.0,
        BudgetMode::Paused => 2.0,
    }
}

/// The budget mode as a step line over the records' time span.
pub fn budget_modes(data: &ReportData) -> Result<String> {
    let (start, end) = data.span;
    let hours = |at: DateTime<Utc>| (at - start).num_seconds() as f64 / 3600.0;
    let x_max = hours(end).max(1.0 / 60.0);
    let mut steps = Vec::new();
    for (i, change) in data.budget_modes.iter().enumerate() {
        let until = data.budget_modes.get(i + 1).map_or(end, |next| next.at);
        let level = mode_level(change.mode);
        steps.push((hours(change.at), level));
        steps.push((hours(until), level));
    }
    svg((960, 200), |root| {
        let mut chart = ChartBuilder::on(root)
            .margin(14)
            .x_label_area_size(36)
            .y_label_area_size(80)
            .build_cartesian_2d(0.0..x_max, -0.4..2.4)?;
        // Labels as fine as the span needs: a demo's simulated run lasts minutes.
        let format = match end - start {
            d if d >= Duration::days(1) => "%m-%d %H:%M",
            d if d >= Duration::minutes(30) => "%H:%M",
            _ => "%H:%M:%S",
        };
        let time_label = |h: &f64| {
            let at = start + Duration::seconds((h * 3600.0).round() as i64);
            at.format(format).to_string()
        };
        let mode_label = |v: &f64| match v.round() as i64 {
            0 if (v - 0.0).abs() < 1e-6 => "normal".to_owned(),
            1 if (v - 1.0).abs() < 1e-6 => "economy".to_owned(),
            2 if (v - 2.0).abs() < 1e-6 => "paused".to_owned(),
            _ => String::new(),
        };
        chart
            .configure_mesh()
            .light_line_style(GRID)
            .x_labels(8)
            .y_labels(7)
            .x_label_formatter(&time_label)
            .y_label_formatter(&mode_label)
            .x_desc("time (UTC)")
            .draw()?;
        chart.draw_series(LineSeries::new(steps, LINE.stroke_width(3)))?;
        chart.draw_series(
            data.budget_modes
                .iter()
                .map(|c| Circle::new((hours(c.at), mode_level(c.mode)), 4, LINE.filled())),
        )?;
        Ok(())
    })
}

/// Predicted against measured fitness impact, one colour per model, with the line where the
/// two agree.
pub fn predictions(data: &ReportData, models: &[String]) -> Result<String> {
    let measured: Vec<_> = data
        .predictions
        .iter()
        .filter_map(|p| p.actual.map(|a| (p, a)))
        .collect();
    let (lo, hi) = bounds(measured.iter().flat_map(|(p, a)| [p.predicted, *a]));
    let range = padded(lo, hi);
    svg((560, 420), |root| {
        let mut chart = ChartBuilder::on(root)
            .margin(14)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d(range.clone(), range.clone())?;
        chart
            .configure_mesh()
            .light_line_style(GRID)
            .x_desc("predicted impact")
            .y_desc("actual impact")
            .draw()?;
        chart
            .draw_series(LineSeries::new(
                [(range.start, range.start), (range.end, range.end)],
                BASELINE.mix(0.6).stroke_width(1),
            ))?
            .label("actual = predicted")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], BASELINE.stroke_width(1)));
        for (m, model) in models.iter().enumerate() {
            let colour = palette(m);
            chart
                .draw_series(
                    measured
                        .iter()
                        .filter(|(p, _)| &p.model == model)
                        .map(|(p, a)| Circle::new((p.predicted, *a), 4, colour.filled())),
                )?
                .label(model.as_str())
                .legend(move |(x, y)| Circle::new((x + 8, y), 4, colour.filled()));
        }
        draw_legend(&mut chart, SeriesLabelPosition::LowerRight)?;
        Ok(())
    })
}

/// One kept generation on two objectives, and whether another kept generation dominates it.
#[derive(Debug, Clone, PartialEq)]
pub struct ParetoPoint {
    pub generation: u64,
    pub x: f64,
    pub y: f64,
    pub dominated: bool,
}

/// The kept generations on two objectives: the front filled, the dominated ones hollow, each
/// labelled with its generation.
pub fn pareto(points: &[ParetoPoint], x_name: &str, y_name: &str) -> Result<String> {
    let (x_lo, x_hi) = bounds(points.iter().map(|p| p.x));
    let (y_lo, y_hi) = bounds(points.iter().map(|p| p.y));
    svg((640, 420), |root| {
        let mut chart = ChartBuilder::on(root)
            .margin(14)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d(padded(x_lo, x_hi), padded(y_lo, y_hi))?;
        chart
            .configure_mesh()
            .light_line_style(GRID)
            .x_desc(x_name)
            .y_desc(y_name)
            .draw()?;
        chart
            .draw_series(
                points
                    .iter()
                    .filter(|p| !p.dominated)
                    .map(|p| Circle::new((p.x, p.y), 6, KEPT.filled())),
            )?
            .label("on the front")
            .legend(|(x, y)| Circle::new((x + 8, y), 6, KEPT.filled()));
        chart
            .draw_series(
                points
                    .iter()
                    .filter(|p| p.dominated)
                    .map(|p| Circle::new((p.x, p.y), 6, BASELINE.stroke_width(2))),
            )?
            .label("dominated")
            .legend(|(x, y)| Circle::new((x + 8, y), 6, BASELINE.stroke_width(2)));
        chart.draw_series(points.iter().map(|p| {
            Text::new(
                format!("{}", p.generation),
                (p.x, p.y),
                ("sans-serif", 12).into_font(),
            )
        }))?;
        draw_legend(&mut chart, SeriesLabelPosition::UpperRight)?;
        Ok(())
    })
}
