//! The report's figures, each drawn once into an SVG and once into a PNG:
//! speed-up against workers (log2 axis, ideal line, host ceiling, optional
//! Theano-MPI reference), time per 5120 images as stacked compute / comm /
//! wait / data bars, and efficiency against workers.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::rows::{ScalingRow, Series};
use crate::model::ModelKind;
type DrawResult = Result<(), Box<dyn std::error::Error>>;

const PALETTE: [RGBColor; 5] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
];
const GREY: RGBColor = RGBColor(150, 150, 150);

fn colour(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

fn label(key: &(ModelKind, String)) -> String {
    format!("{} ({})", key.0, key.1)
}

fn log2(n: usize) -> f64 {
    (n as f64).log2()
}

/// Draws a figure into `stem.svg` and `stem.png` with the same code.
macro_rules! svg_and_png {
    ($stem:expr, $size:expr, $draw:ident ( $($arg:expr),* )) => {{
        let svg = $stem.with_extension("svg");
        let png = $stem.with_extension("png");
        {
            let area = SVGBackend::new(&svg, $size).into_drawing_area();
            $draw(&area, $($arg),*).map_err(|e| anyhow::anyhow!("drawing {}: {e}", svg.display()))?;
            area.present().map_err(|e| anyhow::anyhow!("writing {}: {e}", svg.display()))?;
        }
        let area = BitMapBackend::new(&png, $size).into_drawing_area();
        $draw(&area, $($arg),*).map_err(|e| anyhow::anyhow!("drawing {}: {e}", png.display()))?;
        area.present().map_err(|e| anyhow::anyhow!("writing {}: {e}", png.display()))?;
        Ok(())
    }};
}

fn max_workers(series: &Series) -> usize {
    series.iter().flat_map(|(_, rows)| rows.iter().map(|r| r.workers)).max().unwrap_or(1).max(2)
}

type WorkersChart<'a, DB> =
    ChartContext<'a, DB, Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>>;

/// A white chart with workers on a log2 x axis (x = log2 N, labelled N) up
/// to 2^top, and y from 0 to `y_max`.
fn workers_chart<'a, DB: DrawingBackend>(
    area: &'a DrawingArea<DB, Shift>,
    title: &str,
    top: f64,
    y_max: f64,
    y_desc: &str,
    y_label: &dyn Fn(&f64) -> String,
) -> Result<WorkersChart<'a, DB>, Box<dyn std::error::Error>>
where
    DB::ErrorType: 'static,
{
    area.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(-0.15f64..top + 0.15, 0f64..y_max)?;
    chart
        .configure_mesh()
        .x_desc("workers (log2 axis)")
        .y_desc(y_desc)
        .x_labels(top as usize + 1)
        .x_label_formatter(&|x| format!("{}", 2f64.powf(x.round()) as usize))
        .y_label_formatter(y_label)
        .draw()?;
    Ok(chart)
}

/// A predicted curve: its label and (workers, speed-up) points.
pub type Predicted = (String, Vec<(usize, f64)>);

/// Speed-up t1/tN against workers, with the ideal line, each network's host
/// ceiling (dashed, same colour), the reference (grey dashes) and predicted
/// curves (dotted, the network's colour), the axis out to the largest N of either.
pub fn speedup(
    stem: &Path,
    series: &Series,
    reference: Option<&[(&str, [f64; 4])]>,
    predicted: &[Predicted],
    title: &str,
) -> anyhow::Result<()> {
    svg_and_png!(stem, (900, 600), draw_speedup(series, reference, predicted, title))
}

fn draw_speedup<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    series: &Series,
    reference: Option<&[(&str, [f64; 4])]>,
    predicted: &[Predicted],
    title: &str,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let most = predicted.iter().flat_map(|(_, p)| p.iter().map(|q| q.0)).max().unwrap_or(1);
    let top = log2(max_workers(series).max(most));
    let y_max = series
        .iter()
        .flat_map(|(_, rows)| rows.iter().map(|r| r.speedup.mean + r.speedup.std))
        .fold(2f64.powf(top), f64::max)
        * 1.05;
    let y_max = predicted.iter().flat_map(|(_, p)| p.iter().map(|q| q.1)).fold(y_max, f64::max);
    let mut chart = workers_chart(area, title, top, y_max, "speed-up t1 / tN", &|y| format!("{y:.1}"))?;
    chart
        .draw_series(LineSeries::new(
            (0..=top as usize).map(|k| (k as f64, 2f64.powi(k as i32))),
            BLACK.stroke_width(1),
        ))?
        .label("ideal")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
    for (i, (key, rows)) in series.iter().enumerate() {
        let c = colour(i);
        let pts: Vec<(f64, f64)> =
            rows.iter().filter(|r| r.speedup.n > 0).map(|r| (log2(r.workers), r.speedup.mean)).collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))?
            .label(label(key))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart.draw_series(pts.iter().map(|p| Circle::new(*p, 4, c.filled())))?;
        // Error bars: one standard deviation over the repeats.
        chart.draw_series(rows.iter().filter(|r| r.speedup.n > 1).map(|r| {
            let x = log2(r.workers);
            PathElement::new(
                vec![(x, r.speedup.mean - r.speedup.std), (x, r.speedup.mean + r.speedup.std)],
                c.stroke_width(1),
            )
        }))?;
        let ceiling: Vec<(f64, f64)> =
            rows.iter().filter_map(|r| Some((log2(r.workers), r.ceiling_speedup?))).collect();
        if ceiling.len() > 1 {
            chart
                .draw_series(DashedLineSeries::new(ceiling, 4, 4, c.mix(0.7).stroke_width(1)))?
                .label(format!("{}: host ceiling", key.0))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.mix(0.7)));
        }
    }
    for (label, pts) in predicted {
        let i = series.iter().position(|(key, _)| label.starts_with(&format!("{}:", key.0))).unwrap_or(0);
        let c = colour(i);
        let pts: Vec<(f64, f64)> = pts.iter().map(|&(n, s)| (log2(n), s)).collect();
        chart
            .draw_series(DashedLineSeries::new(pts, 2, 3, c.stroke_width(2)))?
            .label(label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(1)));
    }
    for (name, s) in reference.unwrap_or(&[]) {
        let pts: Vec<(f64, f64)> =
            s.iter().enumerate().filter(|(k, _)| (*k as f64) <= top + 1e-9).map(|(k, v)| (k as f64, *v)).collect();
        chart
            .draw_series(DashedLineSeries::new(pts, 6, 4, GREY.stroke_width(1)))?
            .label(format!("Theano-MPI, K80: {name}"))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], GREY));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    Ok(())
}

/// One stacked part of a bar: its name, colour, and value in a row.
type Part = (&'static str, RGBColor, fn(&ScalingRow) -> f64);

/// Stacked bars of seconds per 5120 images (compute, comm, wait, data) per
/// worker count, one panel per network.
pub fn breakdown(stem: &Path, series: &Series, title: &str) -> anyhow::Result<()> {
    let width = 360 * series.len().max(1) as u32;
    svg_and_png!(stem, (width.max(600), 480), draw_breakdown(series, title))
}

fn draw_breakdown<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, series: &Series, title: &str) -> DrawResult
where
    DB::ErrorType: 'static,
{
    area.fill(&WHITE)?;
    let area = area.titled(title, ("sans-serif", 20))?;
    let panels = area.split_evenly((1, series.len().max(1)));
    let parts: [Part; 4] = [
        ("compute", colour(0), |r| r.compute),
        ("comm", colour(1), |r| r.comm),
        ("wait", colour(4), |r| r.wait),
        ("data", GREY, |r| r.data),
    ];
    for (panel, (key, rows)) in panels.iter().zip(series) {
        let y_max = rows.iter().map(|r| r.compute + r.comm + r.wait + r.data).fold(0.0, f64::max).max(1e-9) * 1.15;
        let mut chart = ChartBuilder::on(panel)
            .caption(label(key), ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(55)
            .build_cartesian_2d(-0.5f64..rows.len() as f64 - 0.5, 0f64..y_max)?;
        let names: Vec<String> =
            rows.iter().map(|r| format!("{}{}", r.workers, if r.oversubscribed { "*" } else { "" })).collect();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_desc("workers (* oversubscribed)")
            .y_desc("s per 5120 images")
            .x_labels(rows.len().max(1))
            .x_label_formatter(&|x| {
                if (x - x.round()).abs() < 1e-6 {
                    names.get(x.round() as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .draw()?;
        for (p, (name, c, get)) in parts.iter().enumerate() {
            let bars = rows.iter().enumerate().map(|(i, r)| {
                let below: f64 = parts[..p].iter().map(|(_, _, g)| g(r)).sum();
                let x = i as f64;
                Rectangle::new([(x - 0.3, below), (x + 0.3, below + get(r))], c.filled())
            });
            let c = *c;
            chart
                .draw_series(bars)?
                .label(*name)
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()?;
    }
    Ok(())
}

/// Parallel efficiency (speed-up / N, solid) and against the host ceiling (dashed).
pub fn efficiency(stem: &Path, series: &Series, title: &str) -> anyhow::Result<()> {
    svg_and_png!(stem, (900, 600), draw_efficiency(series, title))
}

fn draw_efficiency<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, series: &Series, title: &str) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let top = log2(max_workers(series));
    let y_max = series
        .iter()
        .flat_map(|(_, rows)| rows.iter().flat_map(|r| [Some(r.efficiency), r.efficiency_vs_ceiling]).flatten())
        .fold(1.0f64, f64::max)
        * 1.1;
    let mut chart = workers_chart(area, title, top, y_max, "efficiency", &|y| format!("{:.0}%", y * 100.0))?;
    for (i, (key, rows)) in series.iter().enumerate() {
        let c = colour(i);
        let pts: Vec<(f64, f64)> =
            rows.iter().filter(|r| r.speedup.n > 0).map(|r| (log2(r.workers), r.efficiency)).collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))?
            .label(format!("{}: speed-up / N", label(key)))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart.draw_series(pts.iter().map(|p| Circle::new(*p, 4, c.filled())))?;
        let vs: Vec<(f64, f64)> =
            rows.iter().filter_map(|r| Some((log2(r.workers), r.efficiency_vs_ceiling?))).collect();
        if vs.len() > 1 {
            chart
                .draw_series(DashedLineSeries::new(vs, 4, 4, c.stroke_width(2)))?
                .label(format!("{}: against the host ceiling", key.0))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c));
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerLeft)
        .draw()?;
    Ok(())
}
