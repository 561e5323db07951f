//! Charts of `apf compare` and `apf sweep` (plotters), as PNG or SVG by the file's
//! extension; and the sweep's text table.

use crate::report::RunReport;
use crate::table::{Table, secs};
use plotters::coord::Shift;
use plotters::coord::ranged1d::Ranged;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use std::path::Path;

const OFF: RGBColor = RGBColor(0x9e, 0x9e, 0x9e);
const ON: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
const SIZE: (u32, u32) = (1200, 500);

/// A sweep: one parameter's values, each run with APF off and on.
#[derive(Debug)]
pub struct Sweep {
    /// What varies, for axis labels.
    pub parameter: &'static str,
    /// (value label, APF off, APF on) per value.
    pub points: Vec<(String, RunReport, RunReport)>,
}

fn draw_to(
    path: &Path,
    draw: impl Fn(&DrawingArea<SVGBackend, Shift>) -> Result<(), String>,
    draw_png: impl Fn(&DrawingArea<BitMapBackend, Shift>) -> Result<(), String>,
) -> Result<(), String> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("svg") => {
            let root = SVGBackend::new(path, SIZE).into_drawing_area();
            draw(&root)?;
            root.present().map_err(|e| e.to_string())
        }
        Some("png") => {
            let root = BitMapBackend::new(path, SIZE).into_drawing_area();
            draw_png(&root)?;
            root.present().map_err(|e| e.to_string())
        }
        _ => Err("name the file .png or .svg".into()),
    }
}

/// Bars per process (work per second, log scale) and per vCPU (blocktime), APF off
/// beside APF on.
pub fn compare(path: &Path, off: &RunReport, on: &RunReport) -> Result<(), String> {
    draw_to(
        path,
        |root| draw_compare(root, off, on),
        |root| draw_compare(root, off, on),
    )
}

/// Work per second by workload and blocktime against the swept parameter.
pub fn sweep(path: &Path, sweep: &Sweep) -> Result<(), String> {
    draw_to(
        path,
        |root| draw_sweep(root, sweep),
        |root| draw_sweep(root, sweep),
    )
}

fn err<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// An axis value in few characters: `500`, `20k`, `1.5M`.
fn short_number(v: &f64) -> String {
    let v = *v;
    if v >= 1e6 {
        format!("{}M", trim(v / 1e6))
    } else if v >= 1e3 {
        format!("{}k", trim(v / 1e3))
    } else {
        trim(v)
    }
}

fn trim(v: f64) -> String {
    let text = format!("{v:.1}");
    text.strip_suffix(".0").map_or(text.clone(), str::to_string)
}

/// Log axis bounds that hold every positive value in `values`.
fn log_range(values: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let (lo, hi) = values
        .filter(|v| *v > 0.0)
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        return 0.1..10.0;
    }
    10f64.powf(lo.log10().floor())..10f64.powf(hi.log10().ceil() + 0.2)
}

fn bars<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    y_desc: &str,
    labels: &[String],
    pairs: &[(f64, f64)],
    log: bool,
) -> Result<(), String> {
    #[allow(clippy::cast_precision_loss)] // a handful of bars
    let n = labels.len() as f64;
    let label_of = |x: &f64| {
        let i = x.floor();
        if (x - i - 0.5).abs() < 1e-6 && i >= 0.0 {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // checked
            labels.get(i as usize).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    };
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70);
    if log {
        let range = log_range(pairs.iter().flat_map(|&(a, b)| [a, b]));
        let base = range.start;
        let mut chart = builder
            .build_cartesian_2d(0f64..n, range.log_scale())
            .map_err(err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(labels.len() * 2 + 1)
            .x_label_formatter(&label_of)
            .y_label_formatter(&short_number)
            .y_desc(y_desc)
            .draw()
            .map_err(err)?;
        draw_pairs(&mut chart, pairs, base)?;
        legend(&mut chart)
    } else {
        let top = pairs.iter().flat_map(|&(a, b)| [a, b]).fold(0.0, f64::max) * 1.15;
        let mut chart = builder
            .build_cartesian_2d(0f64..n, 0f64..top.max(1e-3))
            .map_err(err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(labels.len() * 2 + 1)
            .x_label_formatter(&label_of)
            .y_desc(y_desc)
            .draw()
            .map_err(err)?;
        draw_pairs(&mut chart, pairs, 0.0)?;
        legend(&mut chart)
    }
}

/// APF off and on bars for each pair, side by side in slot `i`.
fn draw_pairs<'a, DB: DrawingBackend + 'a, Y: Ranged<ValueType = f64>>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<RangedCoordf64, Y>>,
    pairs: &[(f64, f64)],
    base: f64,
) -> Result<(), String> {
    for (i, &(a, b)) in pairs.iter().enumerate() {
        #[allow(clippy::cast_precision_loss)] // a handful of bars
        let x = i as f64;
        chart
            .draw_series([
                Rectangle::new([(x + 0.1, base), (x + 0.5, a.max(base))], OFF.filled()),
                Rectangle::new([(x + 0.5, base), (x + 0.9, b.max(base))], ON.filled()),
            ])
            .map_err(err)?;
    }
    Ok(())
}

fn legend<'a, DB: DrawingBackend + 'a, X: Ranged, Y: Ranged>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
) -> Result<(), String> {
    // Empty series that exist only to name the colours in the legend.
    for (name, colour) in [("APF off", OFF), ("APF on", ON)] {
        chart
            .draw_series(std::iter::empty::<Rectangle<(X::ValueType, Y::ValueType)>>())
            .map_err(err)?
            .label(name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], colour.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(err)
}

fn draw_compare<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    off: &RunReport,
    on: &RunReport,
) -> Result<(), String> {
    root.fill(&WHITE).map_err(err)?;
    let (left, right) = root.split_horizontally(SIZE.0 * 3 / 5);
    let labels: Vec<String> = off
        .processes
        .iter()
        .map(|p| format!("{} {} (vcpu {})", p.index, p.name, p.vcpu))
        .collect();
    let work: Vec<(f64, f64)> = off
        .processes
        .iter()
        .zip(&on.processes)
        .map(|(a, b)| (a.work_per_s, b.work_per_s))
        .collect();
    bars(
        &left,
        "Work per second by process",
        "units/s (log)",
        &labels,
        &work,
        true,
    )?;
    let labels: Vec<String> = off
        .vcpus
        .iter()
        .map(|v| format!("vcpu {}", v.index))
        .collect();
    let block: Vec<(f64, f64)> = off
        .vcpus
        .iter()
        .zip(&on.vcpus)
        .map(|(a, b)| (a.blocktime_s, b.blocktime_s))
        .collect();
    bars(
        &right,
        "Blocktime by vCPU",
        "seconds",
        &labels,
        &block,
        false,
    )
}

fn draw_sweep<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, s: &Sweep) -> Result<(), String> {
    root.fill(&WHITE).map_err(err)?;
    let (left, right) = root.split_horizontally(SIZE.0 / 2);
    let Some((_, first, _)) = s.points.first() else {
        return Err("nothing to draw".into());
    };
    let labels: Vec<String> = s
        .points
        .iter()
        .map(|(l, _, _)| l.rsplit(' ').next().unwrap_or(l).to_string())
        .collect();
    #[allow(clippy::cast_precision_loss)]
    let n = labels.len() as f64;
    let label_of = |x: &f64| {
        let i = x.round();
        if (x - i).abs() < 1e-6 && i >= 0.0 {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // checked
            labels.get(i as usize).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    };
    let workloads = first.workloads();
    let all = s.points.iter().flat_map(|(_, a, b)| {
        workloads
            .iter()
            .flat_map(move |w| [a.work_per_s_of(w), b.work_per_s_of(w)])
    });
    let range = log_range(all);
    let mut chart = ChartBuilder::on(&left)
        .caption("Work per second", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.3f64..n - 0.7, range.clone().log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_labels(labels.len())
        .x_label_formatter(&label_of)
        .x_desc(s.parameter)
        .y_label_formatter(&short_number)
        .y_desc("units/s (log)")
        .draw()
        .map_err(err)?;
    for (k, w) in workloads.iter().enumerate() {
        let shade = Palette99::pick(k);
        for (apf, dashed) in [(false, true), (true, false)] {
            let points: Vec<(f64, f64)> = s
                .points
                .iter()
                .enumerate()
                .map(|(i, (_, a, b))| {
                    #[allow(clippy::cast_precision_loss)]
                    let x = i as f64;
                    (x, if apf { b } else { a }.work_per_s_of(w).max(range.start))
                })
                .collect();
            let style = if dashed {
                shade.stroke_width(1)
            } else {
                shade.stroke_width(3)
            };
            let name = format!("{w}, APF {}", if apf { "on" } else { "off" });
            chart
                .draw_series(LineSeries::new(points.clone(), style))
                .map_err(err)?
                .label(name)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], style));
            chart
                .draw_series(
                    points
                        .into_iter()
                        .map(|p| Circle::new(p, 4, style.filled())),
                )
                .map_err(err)?;
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;

    let block: Vec<(f64, f64)> = s
        .points
        .iter()
        .map(|(_, a, b)| (a.blocktime_s(), b.blocktime_s()))
        .collect();
    let top = block.iter().flat_map(|&(a, b)| [a, b]).fold(0.0, f64::max) * 1.15;
    let mut chart = ChartBuilder::on(&right)
        .caption("Blocktime, all vCPUs", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.3f64..n - 0.7, 0f64..top.max(1e-3))
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_labels(labels.len())
        .x_label_formatter(&label_of)
        .x_desc(s.parameter)
        .y_desc("seconds")
        .draw()
        .map_err(err)?;
    for (apf, colour) in [(false, OFF), (true, ON)] {
        let points: Vec<(f64, f64)> = block
            .iter()
            .enumerate()
            .map(|(i, &(a, b))| {
                #[allow(clippy::cast_precision_loss)]
                let x = i as f64;
                (x, if apf { b } else { a })
            })
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), colour.stroke_width(3)))
            .map_err(err)?
            .label(if apf { "APF on" } else { "APF off" })
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], colour.stroke_width(3)));
        chart
            .draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 4, colour.filled())),
            )
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)
}

/// The sweep as a table: work per second by workload and blocktime, off and on.
pub fn render_sweep(s: &Sweep) -> String {
    let Some((_, first, _)) = s.points.first() else {
        return String::new();
    };
    let workloads = first.workloads();
    let mut head: Vec<String> = vec![s.parameter.to_string()];
    for w in &workloads {
        head.extend([format!("{w}/s off"), format!("{w}/s on"), "on/off".into()]);
    }
    head.extend(["blocktime off".into(), "blocktime on".into()]);
    let head_refs: Vec<&str> = head.iter().map(String::as_str).collect();
    let mut t = Table::new(&head_refs);
    for (label, a, b) in &s.points {
        let mut row = vec![label.rsplit(' ').next().unwrap_or(label).to_string()];
        for w in &workloads {
            let (x, y) = (a.work_per_s_of(w), b.work_per_s_of(w));
            row.extend([
                format!("{x:.1}"),
                format!("{y:.1}"),
                if x > 0.0 {
                    format!("{:.2}×", y / x)
                } else {
                    "-".into()
                },
            ]);
        }
        row.extend([secs(a.blocktime_s()), secs(b.blocktime_s())]);
        t.row(row);
    }
    let mut killed = String::new();
    for r in s.points.iter().flat_map(|(_, a, b)| [a, b]) {
        let lines = crate::report::killed_lines(r, &format!("  {}: ", r.label));
        killed.push_str(&lines);
    }
    format!(
        "{}: {}\n{}{}",
        s.parameter,
        crate::report::describe(&first.config, &first.store),
        t.render(),
        if killed.is_empty() {
            killed
        } else {
            format!("\n{killed}")
        }
    )
}

/// `apf migrate-bench --chart`: per network latency, the four migrations'
/// total time, destination blocktime and end-to-end time, side by side.
pub fn migrate(
    path: &Path,
    runs: &[(apf_vm::config::Span, Vec<crate::migrate::BenchRun>)],
) -> Result<(), String> {
    draw_to(
        path,
        |root| draw_migrate(root, runs),
        |root| draw_migrate(root, runs),
    )
}

const MODE_COLOURS: [RGBColor; 4] = [
    RGBColor(0x2c, 0xa0, 0x2c),
    OFF,
    ON,
    RGBColor(0xff, 0x7f, 0x0e),
];

fn draw_migrate<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    runs: &[(apf_vm::config::Span, Vec<crate::migrate::BenchRun>)],
) -> Result<(), String> {
    use crate::migrate::BenchRun;
    root.fill(&WHITE).map_err(err)?;
    let panels = root.split_evenly((1, 3));
    type Metric = fn(&BenchRun) -> f64;
    let metrics: [(&str, Metric); 3] = [
        ("total migration time (s)", BenchRun::total_s),
        ("destination blocktime (s)", |r| r.destination.blocktime_s),
        ("end to end, work done (s)", |r| {
            r.end_to_end_s().unwrap_or(0.0)
        }),
    ];
    let groups: Vec<String> = runs.iter().map(|(l, _)| l.to_string()).collect();
    for (area, (title, metric)) in panels.iter().zip(metrics) {
        #[allow(clippy::cast_precision_loss)] // a handful of groups
        let n = groups.len() as f64;
        let top = runs
            .iter()
            .flat_map(|(_, rs)| rs.iter().map(metric))
            .fold(0.0, f64::max)
            * 1.15;
        let label_of = |x: &f64| {
            let i = x.floor();
            if (x - i - 0.5).abs() < 1e-6 && i >= 0.0 {
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // checked
                groups.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        };
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d(0f64..n, 0f64..top.max(1e-3))
            .map_err(err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(groups.len() * 2 + 1)
            .x_label_formatter(&label_of)
            .x_desc("net latency")
            .draw()
            .map_err(err)?;
        for (g, (_, rs)) in runs.iter().enumerate() {
            #[allow(clippy::cast_precision_loss)] // a handful of bars
            let x = g as f64;
            for (k, r) in rs.iter().enumerate() {
                #[allow(clippy::cast_precision_loss)] // four bars
                let left = x + 0.1 + 0.2 * k as f64;
                let colour = MODE_COLOURS[k % MODE_COLOURS.len()];
                chart
                    .draw_series([Rectangle::new(
                        [(left, 0.0), (left + 0.2, metric(r))],
                        colour.filled(),
                    )])
                    .map_err(err)?;
            }
        }
        if let Some((_, first)) = runs.first() {
            for (k, r) in first.iter().enumerate() {
                let colour = MODE_COLOURS[k % MODE_COLOURS.len()];
                chart
                    .draw_series(std::iter::empty::<Rectangle<(f64, f64)>>())
                    .map_err(err)?
                    .label(r.label.clone())
                    .legend(move |(x, y)| {
                        Rectangle::new([(x, y - 6), (x + 14, y + 6)], colour.filled())
                    });
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .position(SeriesLabelPosition::UpperLeft)
                .draw()
                .map_err(err)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_ranges_hold_every_positive_value() {
        let r = log_range([3.0, 0.0, 4500.0].into_iter());
        assert!(r.start <= 3.0 && r.end >= 4500.0, "{r:?}");
        assert_eq!(r.start, 1.0);
        assert_eq!(log_range(std::iter::empty()), 0.1..10.0);
        assert_eq!(short_number(&500.0), "500");
        assert_eq!(short_number(&20_000.0), "20k");
        assert_eq!(short_number(&1_500_000.0), "1.5M");
    }
}
