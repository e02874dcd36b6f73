//! SVG pictures beside the report: a metric per fold for each model, and the score of each iteration of
//! a `run` against the success threshold. Drawn with plotters' SVG backend into a string; the caller
//! writes it. Non-finite values are never drawn as numbers: they are left out and the caption says so.

use plotters::prelude::*;

use super::metrics::Metrics;
use super::stats::Direction;

const W: u32 = 900;
const H: u32 = 520;

/// Tableau's 10 colours: distinct and readable on white (plotters' Palette99 has a pale yellow).
const COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

fn err(e: impl std::fmt::Display) -> String {
    format!("drawing failed: {e}")
}

/// y range covering `vals` with a margin (never empty, always finite). Err for magnitudes plotters
/// cannot lay out (|x| > 1e300), which no real metric has.
fn y_range(vals: impl Iterator<Item = f64>) -> Result<Option<(f64, f64)>, String> {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in vals.filter(|v| v.is_finite()) {
        if v.abs() > 1e300 {
            return Err(format!("a value ({v:e}) is too large to plot"));
        }
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return Ok(None);
    }
    let mag = lo.abs().max(hi.abs());
    let span = hi - lo;
    // a span lost in rounding is drawn as a flat line around the value
    let pad = if span > 1e-9 * mag.max(1e-300) { span * 0.12 } else { mag.max(1.0) * 0.05 };
    Ok(Some((lo - pad, hi + pad)))
}

/// Raise the top of a y range so `entries` legend lines fit above the data.
fn room_for_legend((lo, hi): (f64, f64), entries: usize) -> (f64, f64) {
    let frac = ((entries as f64) * 20.0 + 18.0) / 420.0;
    (lo, lo + (hi - lo) / (1.0 - frac.min(0.6)))
}

fn short(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n - 1).collect::<String>())
    }
}

/// The metric per fold for each model (models with only an aggregate value as dashed flat lines).
pub fn folds_svg(metrics: &Metrics, metric: &str, direction: Direction, title: Option<&str>) -> Result<String, String> {
    let metric = metrics.resolve_metric(metric).ok_or_else(|| format!("no model reports the metric '{metric}'"))?;
    let folds = &metrics.folds;
    let mut all = Vec::new();
    for m in &metrics.models {
        all.extend(m.fold_values(&metric).into_iter().map(|(_, v)| v));
        if m.fold_values(&metric).is_empty() {
            all.extend(m.aggregate_value(&metric));
        }
    }
    let dropped = all.iter().filter(|v| !v.is_finite()).count();
    let range = y_range(all.iter().copied())?.ok_or_else(|| format!("no finite {metric} values to plot"))?;
    let (ylo, yhi) = room_for_legend(range, metrics.models.len());
    let n = folds.len().max(1) as i32;
    let title = title.map(String::from).unwrap_or_else(|| {
        format!("{metric} per fold ({} is better)", if direction == Direction::Lower { "lower" } else { "higher" })
    });

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (W, H)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(short(&title, 90), ("sans-serif", 26))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(70)
            .build_cartesian_2d(-1i32..n, ylo..yhi)
            .map_err(err)?;
        let fold_label = |x: &i32| -> String {
            if *x >= 0 && (*x as usize) < folds.len() {
                short(&folds[*x as usize], 14)
            } else {
                String::new()
            }
        };
        chart
            .configure_mesh()
            .x_labels((n + 2) as usize)
            .x_label_formatter(&fold_label)
            .y_labels(8)
            .x_desc(if folds.is_empty() { "(no folds: aggregate values)" } else { "fold" })
            .y_desc(short(&metric, 40))
            .light_line_style(WHITE.mix(0.0))
            .label_style(("sans-serif", 15))
            .axis_desc_style(("sans-serif", 16))
            .draw()
            .map_err(err)?;
        for (i, m) in metrics.models.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let label = short(&m.name, 40);
            let pts: Vec<(i32, f64)> = m
                .fold_values(&metric)
                .into_iter()
                .filter(|(_, v)| v.is_finite())
                .filter_map(|(f, v)| folds.iter().position(|x| *x == f).map(|p| (p as i32, v)))
                .collect();
            if !pts.is_empty() {
                chart
                    .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                    .map_err(err)?
                    .label(label)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
                chart.draw_series(pts.iter().map(|p| Circle::new(*p, 4, color.filled()))).map_err(err)?;
            } else if let Some(v) = m.aggregate_value(&metric).filter(|v| v.is_finite()) {
                let (x0, x1) = if folds.is_empty() { (-1, n) } else { (0, n - 1) };
                chart
                    .draw_series(DashedLineSeries::new(vec![(x0, v), (x1, v)], 8, 6, color.stroke_width(2)))
                    .map_err(err)?
                    .label(format!("{label} (aggregate)"))
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(1)));
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .label_font(("sans-serif", 15))
            .draw()
            .map_err(err)?;
        if dropped > 0 {
            root.draw(&Text::new(
                format!("{dropped} NaN or infinite value{} not drawn", if dropped == 1 { "" } else { "s" }),
                (16, (H - 18) as i32),
                ("sans-serif", 13).into_font().color(&RED.mix(0.8)),
            ))
            .map_err(err)?;
        }
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// One iteration of a `run`.
#[derive(Debug, Clone, PartialEq)]
pub struct Iteration {
    pub number: i64,
    pub score: Option<f64>,
    pub status: Option<String>,
    /// Whether the success policy said the criterion was met; None = judge by the threshold here.
    pub met: Option<bool>,
}

/// The score of each iteration against the threshold; iterations without a score are marked at the
/// bottom with their status.
pub fn iterations_svg(
    its: &[Iteration],
    threshold: Option<f64>,
    metric: &str,
    direction: Direction,
    title: Option<&str>,
) -> Result<String, String> {
    if its.is_empty() {
        return Err("no iterations to plot".into());
    }
    // the x axis is i32 with a margin of one on each side; numbers past this are no iteration count
    const MAX_ITERATION: i64 = 1_000_000;
    if let Some(it) = its.iter().find(|i| i.number.abs() > MAX_ITERATION) {
        return Err(format!("iteration number {} is out of range (at most {MAX_ITERATION} either way)", it.number));
    }
    let scores = its.iter().filter_map(|i| i.score).chain(threshold);
    let (ylo, yhi) = room_for_legend(y_range(scores)?.unwrap_or((0.0, 1.0)), 4);
    let xmin = its.iter().map(|i| i.number).min().unwrap_or(1) as i32;
    let xmax = its.iter().map(|i| i.number).max().unwrap_or(1) as i32;
    let better = if direction == Direction::Lower { "lower" } else { "higher" };
    let title = title.map(String::from).unwrap_or_else(|| format!("{metric} per iteration ({better} is better)"));
    let meets = |s: f64| match threshold {
        Some(t) => match direction {
            Direction::Lower => s <= t,
            Direction::Higher => s >= t,
        },
        None => false,
    };

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (W, H)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(short(&title, 90), ("sans-serif", 26))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(70)
            .build_cartesian_2d((xmin - 1)..(xmax + 1), ylo..yhi)
            .map_err(err)?;
        let (lo, hi) = (xmin, xmax);
        let xl = move |x: &i32| if *x >= lo && *x <= hi { x.to_string() } else { String::new() };
        chart
            .configure_mesh()
            .x_labels(((xmax - xmin) as usize + 3).min(30))
            .x_label_formatter(&xl)
            .y_labels(8)
            .x_desc("iteration")
            .y_desc(short(metric, 40))
            .light_line_style(WHITE.mix(0.0))
            .label_style(("sans-serif", 15))
            .axis_desc_style(("sans-serif", 16))
            .draw()
            .map_err(err)?;
        if let Some(t) = threshold.filter(|t| t.is_finite()) {
            chart
                .draw_series(DashedLineSeries::new(vec![(xmin - 1, t), (xmax + 1, t)], 10, 6, RED.stroke_width(2)))
                .map_err(err)?
                .label(format!("threshold {} ({better} is better)", super::format::num(t)))
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], RED.stroke_width(2)));
        }
        let pts: Vec<(i32, f64)> =
            its.iter().filter_map(|i| i.score.filter(|s| s.is_finite()).map(|s| (i.number as i32, s))).collect();
        // The success policy's verdict where the caller gives it (the policy may not be a plain threshold).
        let met: Vec<bool> = its
            .iter()
            .filter(|i| i.score.is_some_and(f64::is_finite))
            .map(|i| i.met.unwrap_or_else(|| i.score.is_some_and(meets)))
            .collect();
        let blue = RGBColor(31, 119, 180);
        let green = RGBColor(44, 160, 44);
        if !pts.is_empty() {
            chart
                .draw_series(LineSeries::new(pts.clone(), blue.stroke_width(2)))
                .map_err(err)?
                .label("score")
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], blue.stroke_width(2)));
            chart
                .draw_series(
                    pts.iter()
                        .zip(&met)
                        .map(|(p, m)| Circle::new(*p, 6, if *m { green.filled() } else { blue.filled() })),
                )
                .map_err(err)?;
        }
        if met.iter().any(|m| *m) {
            // a legend entry for the green points
            chart
                .draw_series(std::iter::empty::<Circle<(i32, f64), i32>>())
                .map_err(err)?
                .label("criterion met")
                .legend(move |(x, y)| Circle::new((x + 9, y), 5, green.filled()));
        }
        let missing: Vec<&Iteration> = its.iter().filter(|i| i.score.is_none_or(|s| !s.is_finite())).collect();
        if !missing.is_empty() {
            let grey = RGBColor(120, 120, 120);
            let base = ylo + (yhi - ylo) * 0.04;
            chart
                .draw_series(missing.iter().map(|i| Cross::new((i.number as i32, base), 7, grey.stroke_width(2))))
                .map_err(err)?
                .label("no score")
                .legend(move |(x, y)| Cross::new((x + 9, y), 5, grey.stroke_width(2)));
            let style = ("sans-serif", 12).into_font().color(&grey);
            chart
                .draw_series(missing.iter().map(|i| {
                    Text::new(
                        short(i.status.as_deref().unwrap_or("no score"), 14),
                        (i.number as i32, ylo + (yhi - ylo) * 0.09),
                        style.clone(),
                    )
                }))
                .map_err(err)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .label_font(("sans-serif", 15))
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}
