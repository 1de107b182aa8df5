//! One picture of the run: the latency CDF of every scenario on a log time
//! axis, so how far each sits from the floor shows at a glance.

use plotters::prelude::*;

use crate::report::{fmt_us, vs_floor};
use crate::scenario::Report;

/// Points drawn per curve at most: enough for a smooth line, few enough
/// for a small file.
const MAX_POINTS: usize = 400;

/// The picture, as SVG text.
pub fn render(report: &Report) -> anyhow::Result<String> {
    let mut text = String::new();
    draw(report, &mut text)?;
    Ok(text)
}

fn draw(report: &Report, text: &mut String) -> anyhow::Result<()> {
    let curves: Vec<_> = report
        .results
        .iter()
        .filter(|r| !r.samples.is_empty())
        .collect();
    let lo = curves
        .iter()
        .map(|r| r.samples[0])
        .fold(f64::INFINITY, f64::min)
        .max(1.0);
    let hi = curves
        .iter()
        .map(|r| r.samples[r.samples.len() - 1])
        .fold(0.0, f64::max)
        .max(lo * 10.0);
    let (lo, hi) = (lo * 0.8, hi * 1.25);

    let root = SVGBackend::with_string(text, (1000, 620)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err)?;
    let title = format!(
        "parley bench: latency CDF ({} messages, {}, registry {})",
        report.options.messages,
        if report.options.in_process {
            "in-process"
        } else {
            "members as processes"
        },
        if report.options.etcd.is_empty() {
            "in memory"
        } else {
            "in etcd"
        }
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d((lo..hi).log_scale(), 0.0..1.0)
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .x_desc("latency (a message: until every member stored and acknowledged; login, join: the router's answer)")
        .y_desc("fraction of messages or calls")
        .x_label_formatter(&|us| fmt_us(*us))
        .y_label_formatter(&|f| format!("{:.0}%", f * 100.0))
        .draw()
        .map_err(draw_err)?;
    for (i, r) in curves.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let n = r.samples.len();
        let step = n.div_ceil(MAX_POINTS).max(1);
        let points = (0..n)
            .step_by(step)
            .chain(std::iter::once(n - 1))
            .map(|k| (r.samples[k], (k + 1) as f64 / n as f64));
        let label = format!(
            "{}  p50 {}  ({:.1}x floor)",
            r.scenario.name(),
            fmt_us(r.summary.p50_us),
            vs_floor(report, r)
        );
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(draw_err)?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(draw_err)?;
    root.present().map_err(draw_err)?;
    Ok(())
}

fn draw_err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing the chart failed: {e}")
}
