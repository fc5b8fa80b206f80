//! SVG plots of a run: latency percentile curves and per-second series
//! (throughput, CPU, memory), drawn with plotters.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};
use plotters::prelude::*;

use crate::metrics::LatencySummary;
use crate::report::RunReport;

/// Maps a percentile to the "number of nines" axis: p50 -> 0.3, p99 -> 2, p99.9 -> 3.
fn nines(p: f64) -> f64 {
    if p >= 100.0 {
        5.0
    } else {
        (-(1.0 - p / 100.0).log10()).min(5.0)
    }
}

fn nines_label(x: f64) -> String {
    if x >= 4.99 {
        return "max".into();
    }
    let p = 100.0 * (1.0 - 10f64.powf(-x));
    format!("p{}", (p * 1000.0).round() / 1000.0)
}

/// Draws latency-versus-percentile curves (milliseconds) into `path`.
pub fn latency_svg(path: &Path, title: &str, lat: &BTreeMap<String, LatencySummary>) -> Result<()> {
    let ymax = lat
        .values()
        .map(|l| l.max as f64 / 1000.0)
        .fold(0.001, f64::max)
        * 1.05;
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..5f64, 0f64..ymax)
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_labels(6)
        .x_label_formatter(&|x| nines_label(*x))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    for (i, (name, l)) in lat.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let pts: Vec<(f64, f64)> = l
            .curve
            .iter()
            .map(|&(p, v)| (nines(p), v as f64 / 1000.0))
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(|e| anyhow!("{e}"))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart
            .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))
            .map_err(|e| anyhow!("{e}"))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

/// Draws per-second series against seconds since the run epoch into `path`.
pub fn series_svg(path: &Path, title: &str, y_desc: &str, series: &[(&str, &[f64])]) -> Result<()> {
    let len = series
        .iter()
        .map(|(_, v)| v.len())
        .max()
        .unwrap_or(0)
        .max(2);
    let ymax = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .filter(|v| v.is_finite())
        .fold(1.0, f64::max)
        * 1.1;
    let root = SVGBackend::new(path, (900, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..(len as f64), 0f64..ymax)
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc(y_desc)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    for (i, (name, values)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let pts: Vec<(f64, f64)> = values
            .iter()
            .enumerate()
            .filter(|(_, v)| v.is_finite())
            .map(|(s, v)| (s as f64 + 0.5, *v))
            .collect();
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))
            .map_err(|e| anyhow!("{e}"))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

/// Chooses the timeline series that go into one plot.
type SeriesFilter = fn(&str) -> bool;

/// Writes every plot of a report into `dir`; returns the files written.
pub fn write_all(dir: &Path, report: &RunReport) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let stem = match report.label.as_str() {
        "" => report.scenario.clone(),
        l => format!("{}-{}", report.scenario, l.replace(['/', ' '], "_")),
    };
    let mut files = Vec::new();
    if !report.latency_us.is_empty() {
        let p = dir.join(format!("{stem}-latency.svg"));
        latency_svg(
            &p,
            &format!("{stem}: latency percentiles"),
            &report.latency_us,
        )?;
        files.push(p);
    }
    let t = &report.timeline_per_s;
    let pick = |pred: SeriesFilter| -> Vec<(&str, &[f64])> {
        t.iter()
            .filter(|(k, v)| pred(k) && !v.is_empty())
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect()
    };
    let groups: [(&str, &str, SeriesFilter); 3] = [
        ("throughput", "events per second", |k| k.ends_with("_per_s")),
        ("cpu", "CPU %", |k| k.ends_with("cpu_percent")),
        ("memory", "server RSS (MiB)", |k| k == "server_rss_mib"),
    ];
    for (name, y, pred) in groups {
        let series = pick(pred);
        if series.is_empty() {
            continue;
        }
        let p = dir.join(format!("{stem}-{name}.svg"));
        series_svg(&p, &format!("{stem}: {name} over time"), y, &series)?;
        files.push(p);
    }
    Ok(files)
}
