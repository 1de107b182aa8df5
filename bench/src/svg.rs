//! One picture of the run: every scenario's latency by percentile, the
//! latency on a log axis and the percentile on a "nines" axis (50%, 90%,
//! 99%, 99.9%: equal steps), so the tail gets as much room as the median.
//!
//! Written as SVG text by hand: the tick labels are placed here, where a
//! test can check that no two of them overlap.

use crate::report::{fmt_us, vs_floor, wrap};
use crate::scenario::{Report, Scenario, ScenarioResult, IN_FLIGHT};

/// The whole picture's least width, px (wider when a legend line needs it).
const MIN_WIDTH: f64 = 1100.0;
/// The plot area: its left edge leaves room for the latency labels, its
/// right edge for the legend.
const PLOT_LEFT: f64 = 80.0;
const PLOT_RIGHT: f64 = 700.0;
const PLOT_TOP: f64 = 70.0;
const PLOT_HEIGHT: f64 = 460.0;
const LEGEND_LEFT: f64 = PLOT_RIGHT + 24.0;
/// Tick labels, px.
const TICK_FONT: f64 = 13.0;
/// The least space between two neighbouring tick labels' boxes, px.
const TICK_GAP: f64 = 6.0;
const LEGEND_FONT: f64 = 13.0;
const LEGEND_STEP: f64 = 20.0;
const NOTE_FONT: f64 = 13.0;

/// Strong colours, each at least 3:1 against white (WCAG's floor for
/// lines), after Okabe and Ito's colour-blind-safe set: the yellow and the
/// sky blue darkened, the pale ones left out. Past eight curves the
/// colours come round again, dashed.
pub const COLOURS: [&str; 8] = [
    "#0072B2", "#D55E00", "#009E73", "#000000", "#CC3D91", "#A86B00", "#2F86C4", "#6F4E9E",
];
const DASHES: [Option<&str>; 2] = [None, Some("9 5")];
const STROKE: f64 = 2.5;

/// A tick: where it sits along its axis (px from the axis' start) and
/// what it says.
#[derive(Debug, Clone, PartialEq)]
pub struct Tick {
    pub at: f64,
    pub label: String,
}

/// A label's estimated width, px: sans-serif digits and most letters run
/// about 0.55 em, so 0.62 em a char over-estimates a little, which errs
/// towards fewer ticks rather than touching ones.
pub fn label_width(label: &str, font: f64) -> f64 {
    label.chars().count() as f64 * font * 0.62
}

/// The log latency axis: its ends (µs, on a 1-2-5 step, around `lo` and
/// `hi`) and its ticks along `len` px, measured upwards. The finest of
/// 1-2-5 a decade, 1 a decade, 1 every 2, 3... decades whose neighbouring
/// labels are all at least a label's height plus [`TICK_GAP`] apart.
pub fn latency_axis(lo: f64, hi: f64, len: f64) -> ((f64, f64), Vec<Tick>) {
    let lo = if lo.is_finite() && lo > 0.0 { lo } else { 1.0 };
    let hi = if hi.is_finite() && hi > lo { hi } else { lo };
    let (mut a, mut b) = (step_125_below(lo), step_125_above(hi));
    if b <= a {
        // One value: a step either side of it.
        b = step_125_above(a * 1.01);
        a = step_125_below(a / 1.01);
    }
    let (la, lb) = (a.log10(), b.log10());
    let px = |v: f64| (v.log10() - la) / (lb - la) * len;
    let (d0, d1) = (la.floor() as i32, lb.ceil() as i32);
    let min_gap = TICK_FONT + TICK_GAP;
    let mut levels: Vec<Vec<f64>> = vec![(d0..=d1)
        .flat_map(|d| [1.0, 2.0, 5.0].map(|m| m * 10f64.powi(d)))
        .collect()];
    levels.extend((1..=(d1 - d0 + 1)).map(|every| {
        (d0..=d1)
            .filter(|d| d.rem_euclid(every) == 0)
            .map(|d| 10f64.powi(d))
            .collect()
    }));
    let in_range = |v: &f64| *v >= a * (1.0 - 1e-9) && *v <= b * (1.0 + 1e-9);
    // The coarsest level holds at most one tick, so some level always fits.
    let ticks = levels
        .into_iter()
        .map(|level| -> Vec<Tick> {
            level
                .into_iter()
                .filter(in_range)
                .map(|v| Tick {
                    at: px(v),
                    label: tick_us(v),
                })
                .collect()
        })
        .find(|ticks| ticks.windows(2).all(|w| w[1].at - w[0].at >= min_gap))
        .unwrap_or_default();
    ((a, b), ticks)
}

/// The largest 1-2-5 step at or below `v` (> 0).
fn step_125_below(v: f64) -> f64 {
    let d = 10f64.powf(v.log10().floor());
    let m = [5.0, 2.0, 1.0]
        .into_iter()
        .find(|m| m * d <= v * (1.0 + 1e-9))
        .unwrap_or(1.0);
    m * d
}

/// The smallest 1-2-5 step at or above `v` (> 0).
fn step_125_above(v: f64) -> f64 {
    let d = 10f64.powf(v.log10().floor());
    let m = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .find(|m| m * d >= v * (1.0 - 1e-9))
        .unwrap_or(10.0);
    m * d
}

/// A tick's latency: `500 µs`, `2 ms`, `1 s` (a tick is a round number;
/// the table's two decimals would only widen the label).
fn tick_us(us: f64) -> String {
    let (v, unit) = if us < 999.5 {
        (us, "µs")
    } else if us < 999_500.0 {
        (us / 1e3, "ms")
    } else {
        (us / 1e6, "s")
    };
    // Three significant digits at most; f64's Display drops trailing zeros.
    let scale = 10f64.powi(2 - v.abs().log10().floor() as i32);
    format!("{} {unit}", (v * scale).round() / scale)
}

/// Where percentile `p` (0..1) sits on the nines axis: log10(1 / (1 - p)),
/// so 50% is 0.3, 90% is 1, 99% is 2.
fn nines(p: f64) -> f64 {
    -(1.0 - p).log10()
}

/// The percentile axis: its end (in nines) for curves of at most `n`
/// samples, and its ticks along `len` px. From the left, a label that
/// would come nearer than [`TICK_GAP`] to the one before is left out.
pub fn percentile_axis(n: usize, len: f64) -> (f64, Vec<Tick>) {
    // The last sample of n sits at p = 1 - 0.5 / n (see `point_p`); the
    // axis shows 90% at least.
    let end = nines(point_p(n.max(1) - 1, n.max(1))).max(1.0);
    let candidates = [
        (0.0, "0%"),
        (0.5, "50%"),
        (0.9, "90%"),
        (0.99, "99%"),
        (0.999, "99.9%"),
        (0.9999, "99.99%"),
        (0.99999, "99.999%"),
        (0.999999, "99.9999%"),
    ];
    let mut ticks: Vec<Tick> = Vec::new();
    for (p, label) in candidates {
        let x = nines(p);
        if x > end + 1e-9 {
            break;
        }
        let at = x / end * len;
        let half = label_width(label, TICK_FONT) / 2.0;
        let clear = ticks
            .last()
            .is_none_or(|t| t.at + label_width(&t.label, TICK_FONT) / 2.0 + TICK_GAP <= at - half);
        if clear {
            ticks.push(Tick {
                at,
                label: label.to_owned(),
            });
        }
    }
    (end, ticks)
}

/// The percentile sample `k` of `n` sorted ones is drawn at: the middle
/// of the share of samples it stands for, so the last one is still finite
/// on the nines axis.
fn point_p(k: usize, n: usize) -> f64 {
    (k as f64 + 0.5) / n as f64
}

/// The picture, as SVG text.
pub fn render(report: &Report) -> anyhow::Result<String> {
    Ok(draw(report))
}

fn draw(report: &Report) -> String {
    let ran = &report.results;
    let curves: Vec<&ScenarioResult> = ran.iter().filter(|r| !r.samples.is_empty()).collect();
    let lo = curves
        .iter()
        .map(|r| r.samples[0])
        .fold(f64::INFINITY, f64::min);
    let hi = curves
        .iter()
        .map(|r| r.samples[r.samples.len() - 1])
        .fold(0.0, f64::max);
    let n = curves.iter().map(|r| r.samples.len()).max().unwrap_or(1);
    let plot_w = PLOT_RIGHT - PLOT_LEFT;
    let ((ya, yb), y_ticks) = latency_axis(lo, hi, PLOT_HEIGHT);
    let (x_end, x_ticks) = percentile_axis(n, plot_w);
    let plot_bottom = PLOT_TOP + PLOT_HEIGHT;
    let x_px = |p: f64| PLOT_LEFT + nines(p) / x_end * plot_w;
    let y_px = |us: f64| {
        let us = us.clamp(ya, yb);
        plot_bottom - (us.log10() - ya.log10()) / (yb.log10() - ya.log10()) * PLOT_HEIGHT
    };

    let legend: Vec<String> = ran
        .iter()
        .map(|r| {
            let name = r.scenario.name();
            if r.samples.is_empty() {
                format!("{name}  (nothing delivered)")
            } else {
                format!(
                    "{name}  p50 {}  ({:.1}x floor)",
                    fmt_us(r.summary.p50_us),
                    vs_floor(report, r)
                )
            }
        })
        .collect();
    let legend_w = legend
        .iter()
        .map(|l| label_width(l, LEGEND_FONT))
        .fold(0.0, f64::max);
    let width = MIN_WIDTH.max((LEGEND_LEFT + 34.0 + legend_w + 16.0).ceil());
    let notes = notes(report, width);
    let legend_bottom = PLOT_TOP + LEGEND_STEP * (ran.len() as f64 + 1.0);
    let notes_top = plot_bottom.max(legend_bottom) + 62.0;
    let height = notes_top + notes.len() as f64 * (NOTE_FONT + 5.0) + 16.0;

    let mut s = String::new();
    let mut el = |line: String| {
        s.push_str(&line);
        s.push('\n');
    };
    // Spaces kept as written: the legend sets its figures apart by two.
    el(format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" xml:space="preserve" style="white-space: pre">"#
    ));
    el(r##"<rect width="100%" height="100%" fill="#ffffff"/>"##.into());
    el(text(
        "title",
        PLOT_LEFT,
        30.0,
        20.0,
        "start",
        "parley bench: latency by percentile",
    ));
    el(text(
        "subtitle",
        PLOT_LEFT,
        52.0,
        14.0,
        "start",
        &subtitle(report),
    ));

    // The grid, then the frame over it.
    for t in &y_ticks {
        let y = plot_bottom - t.at;
        el(format!(
            r##"<line x1="{PLOT_LEFT}" y1="{y:.1}" x2="{PLOT_RIGHT}" y2="{y:.1}" stroke="#dddddd" stroke-width="1"/>"##
        ));
        el(text(
            "tick-y",
            PLOT_LEFT - 8.0,
            y + TICK_FONT * 0.35,
            TICK_FONT,
            "end",
            &t.label,
        ));
    }
    for t in &x_ticks {
        let x = PLOT_LEFT + t.at;
        el(format!(
            r##"<line x1="{x:.1}" y1="{PLOT_TOP}" x2="{x:.1}" y2="{plot_bottom}" stroke="#dddddd" stroke-width="1"/>"##
        ));
        el(text(
            "tick-x",
            x,
            plot_bottom + 20.0,
            TICK_FONT,
            "middle",
            &t.label,
        ));
    }
    el(format!(
        r##"<rect x="{PLOT_LEFT}" y="{PLOT_TOP}" width="{plot_w}" height="{PLOT_HEIGHT}" fill="none" stroke="#333333" stroke-width="1"/>"##
    ));
    el(text(
        "axis-x",
        PLOT_LEFT + plot_w / 2.0,
        plot_bottom + 44.0,
        14.0,
        "middle",
        "percentile (each step right: ten times rarer)",
    ));
    el(format!(
        r#"<text class="axis-y" x="0" y="0" font-size="14" text-anchor="middle" transform="translate(22 {:.1}) rotate(-90)">latency (log scale)</text>"#,
        PLOT_TOP + PLOT_HEIGHT / 2.0
    ));

    // Curves and the legend, in the table's order: every row that ran,
    // and only those.
    let mut drawn = 0;
    for (i, (r, label)) in ran.iter().zip(&legend).enumerate() {
        let ly = PLOT_TOP + 8.0 + i as f64 * LEGEND_STEP;
        let name = r.scenario.name();
        el(text(
            "legend",
            LEGEND_LEFT + 34.0,
            ly + LEGEND_FONT * 0.35,
            LEGEND_FONT,
            "start",
            label,
        ));
        if r.samples.is_empty() {
            continue;
        }
        let colour = COLOURS[drawn % COLOURS.len()];
        let dashed = DASHES[(drawn / COLOURS.len()) % DASHES.len()];
        let dash = dashed
            .map(|d| format!(r#" stroke-dasharray="{d}""#))
            .unwrap_or_default();
        drawn += 1;
        let points = curve(&r.samples, &x_px, &y_px);
        if let [(x, y)] = points[..] {
            // One sample (join-100k: one join): a dot, not a line; hollow
            // where a line of its colour would be dashed, so it is not
            // taken for the solid line's row. The legend shows the dot.
            let fill = if dashed.is_some() { "#ffffff" } else { colour };
            let dot = |cx: f64, cy: f64| {
                format!(
                    r#"<circle class="curve" cx="{cx:.1}" cy="{cy:.1}" r="5" fill="{fill}" stroke="{colour}" stroke-width="{STROKE}"><title>{}</title></circle>"#,
                    esc(name)
                )
            };
            el(dot(x, y));
            el(dot(LEGEND_LEFT + 13.0, ly).replace(r#"class="curve""#, r#"class="key""#));
        } else {
            let path: Vec<String> = points
                .iter()
                .map(|(x, y)| format!("{x:.1},{y:.1}"))
                .collect();
            el(format!(
                r#"<polyline class="curve" fill="none" stroke="{colour}" stroke-width="{STROKE}" stroke-linejoin="round"{dash} points="{}"><title>{}</title></polyline>"#,
                path.join(" "),
                esc(name)
            ));
            el(format!(
                r#"<line class="key" x1="{LEGEND_LEFT}" y1="{ly}" x2="{}" y2="{ly}" stroke="{colour}" stroke-width="{STROKE}"{dash}/>"#,
                LEGEND_LEFT + 26.0
            ));
        }
    }
    if curves.is_empty() {
        el(text(
            "empty",
            PLOT_LEFT + plot_w / 2.0,
            PLOT_TOP + PLOT_HEIGHT / 2.0,
            16.0,
            "middle",
            "no latencies to draw",
        ));
    }
    for (i, line) in notes.iter().enumerate() {
        el(text(
            "note",
            PLOT_LEFT,
            notes_top + i as f64 * (NOTE_FONT + 5.0),
            NOTE_FONT,
            "start",
            line,
        ));
    }
    el("</svg>".into());
    s
}

/// A curve's points, px: one per sample, less those within a pixel of the
/// point before (a run of 10,000 samples would otherwise weigh a
/// megabyte); the tail's samples lie far apart, so all of them stay.
fn curve(samples: &[f64], x_px: &dyn Fn(f64) -> f64, y_px: &dyn Fn(f64) -> f64) -> Vec<(f64, f64)> {
    let n = samples.len();
    let mut out: Vec<(f64, f64)> = Vec::new();
    for (k, &us) in samples.iter().enumerate() {
        let (x, y) = (x_px(point_p(k, n)), y_px(us));
        let last = k + 1 == n;
        let far = out
            .last()
            .is_none_or(|&(px, py)| (x - px).abs() >= 1.0 || (y - py).abs() >= 1.0);
        if far || last {
            out.push((x, y));
        }
    }
    out
}

/// The line under the title: how the run went.
fn subtitle(report: &Report) -> String {
    let o = &report.options;
    let throughput = report.results.iter().any(|r| r.scenario.is_throughput());
    format!(
        "{} messages per scenario{}, {}-byte bodies, {}, registry {}",
        o.messages,
        if throughput {
            format!(" ({}x for throughput)", crate::scenario::THROUGHPUT_FACTOR)
        } else {
            String::new()
        },
        o.payload,
        if o.in_process {
            "in-process"
        } else {
            "members as processes"
        },
        if o.etcd.is_empty() {
            "in memory"
        } else {
            "in etcd"
        }
    )
}

/// What a latency is, for the rows that ran only (the words of a row
/// that did not run would promise a curve that is not there).
fn notes(report: &Report, width: f64) -> Vec<String> {
    let ran = |sc: Scenario| report.results.iter().any(|r| r.scenario == sc);
    let names = |of: &[Scenario]| -> Vec<&str> {
        of.iter()
            .copied()
            .filter(|&sc| ran(sc))
            .map(Scenario::name)
            .collect()
    };
    let mut parts = vec!["Latency:".to_owned()];
    let messages: Vec<&str> = report
        .results
        .iter()
        .map(|r| r.scenario)
        .filter(|sc| {
            !matches!(
                sc,
                Scenario::Floor
                    | Scenario::Login
                    | Scenario::Join
                    | Scenario::Mailbox
                    | Scenario::Join100k
            )
        })
        .map(Scenario::name)
        .collect();
    if !messages.is_empty() {
        let tp = names(&[Scenario::ThroughputPrivate, Scenario::ThroughputRoom20]);
        parts.push(format!(
            "a message, from the send call until every member stored and acknowledged it{};",
            if tp.is_empty() {
                String::new()
            } else {
                format!(" ({}: one of {IN_FLIGHT} in flight)", tp.join(", "))
            }
        ));
    }
    if ran(Scenario::Floor) {
        parts.push("floor: a bare gRPC Ping on the same loopback;".into());
    }
    let calls = names(&[Scenario::Login, Scenario::Join]);
    if !calls.is_empty() {
        parts.push(format!("{}: one call to the router;", calls.join(", ")));
    }
    if ran(Scenario::Mailbox) {
        parts.push("mailbox: a deposit plus its share of the drain;".into());
    }
    if ran(Scenario::Join100k) {
        parts.push("join-100k: pulling the whole history, once (a dot);".into());
    }
    if let Some(last) = parts.last_mut() {
        if last.ends_with(';') {
            last.pop();
            last.push('.');
        }
    }
    // Wrapped to the picture's width at the note's estimated char width.
    let chars = ((width - PLOT_LEFT - 20.0) / (NOTE_FONT * 0.62)) as usize;
    // Without wrap's indent: a picture's lines read as one paragraph.
    wrap(&parts.join(" "), chars)
        .into_iter()
        .map(|l| l.trim_start().to_owned())
        .collect()
}

/// A `<text>` element; `class` lets a reader (or a test) tell the kinds
/// apart.
fn text(class: &str, x: f64, y: f64, size: f64, anchor: &str, body: &str) -> String {
    format!(
        r#"<text class="{class}" x="{x:.1}" y="{y:.1}" font-size="{size}" text-anchor="{anchor}">{}</text>"#,
        esc(body)
    )
}

/// Text as SVG takes it.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::scenario::Options;
    use crate::stats::{summarise, SignatureCost};

    /// A report of `rows` (the floor always among them, as in a run), each
    /// with `n` samples spread from `lo` to `hi` µs, a long tail.
    fn report(rows: &[Scenario], n: usize, lo: f64, hi: f64) -> Report {
        let mut all = vec![Scenario::Floor];
        all.extend(rows.iter().copied().filter(|&s| s != Scenario::Floor));
        let results = all
            .into_iter()
            .enumerate()
            .map(|(i, scenario)| {
                let n = if scenario == Scenario::Join100k { 1 } else { n };
                let mut samples: Vec<f64> = (0..n)
                    .map(|k| {
                        let f = (k as f64 + 1.0) / n as f64;
                        lo * (1.0 + i as f64 * 0.1) * (hi / lo).powf(f.powi(6))
                    })
                    .collect();
                let summary = summarise(&mut samples);
                ScenarioResult {
                    scenario,
                    messages: n,
                    delivered: n,
                    failed: 0,
                    senders: 1,
                    members: 2,
                    in_flight: 1,
                    wall: Duration::from_millis(10),
                    summary,
                    samples,
                    own_floor_us: None,
                }
            })
            .collect();
        Report {
            options: Options::default(),
            run_id: "t".into(),
            results,
            floor_p50_us: lo,
            signatures: SignatureCost {
                sign_us: 1.0,
                check_us: 1.0,
                batch_check_us: 1.0,
            },
            router_peak_kib: None,
            peer_peak_kib: None,
            bench_peak_kib: None,
            total: Duration::from_secs(1),
        }
    }

    /// Every `<text class="{class}" x=".." y="..">body</text>`: (x, y, body).
    fn texts(svg: &str, class: &str) -> Vec<(f64, f64, String)> {
        let open = format!(r#"<text class="{class}" "#);
        let attr = |el: &str, name: &str| -> f64 {
            let key = format!(r#" {name}=""#);
            let at = el.find(&key).expect("attribute") + key.len();
            el[at..]
                .split('"')
                .next()
                .unwrap_or("")
                .parse()
                .expect("number")
        };
        svg.lines()
            .filter(|l| l.starts_with(&open))
            .map(|l| {
                let body = l.split('>').nth(1).unwrap_or("").trim_end_matches("</text");
                (attr(l, "x"), attr(l, "y"), body.replace("&amp;", "&"))
            })
            .collect()
    }

    /// No two tick labels of `svg` overlap, on either axis (x labels
    /// centred, y labels right-aligned one text line high), and neither
    /// axis is bare.
    fn assert_ticks_apart(svg: &str) {
        let xs = texts(svg, "tick-x");
        assert!(xs.len() >= 2, "{xs:?}");
        for w in xs.windows(2) {
            let (a, b) = (&w[0], &w[1]);
            let right_of_a = a.0 + label_width(&a.2, TICK_FONT) / 2.0;
            let left_of_b = b.0 - label_width(&b.2, TICK_FONT) / 2.0;
            assert!(right_of_a < left_of_b, "x labels touch: {a:?} {b:?}");
        }
        let ys = texts(svg, "tick-y");
        assert!(ys.len() >= 2, "{ys:?}");
        for w in ys.windows(2) {
            assert!(
                (w[0].1 - w[1].1).abs() > TICK_FONT,
                "y labels touch: {:?} {:?}",
                w[0],
                w[1]
            );
        }
        // Distinct labels: a label twice would be a rounding gone wrong.
        let mut labels: Vec<&str> = ys.iter().map(|t| t.2.as_str()).collect();
        labels.dedup();
        assert_eq!(labels.len(), ys.len(), "{ys:?}");
    }

    #[test]
    fn tick_labels_never_overlap() {
        // The issue's ranges (0.1-10 ms, 0.2-8 ms), a narrow one, a wide
        // one, one value, sub-µs, each with few and many samples.
        let ranges = [
            (100.0, 10_000.0),
            (200.0, 8_000.0),
            (900.0, 1_100.0),
            (1_000.0, 8_000.0),
            (5_000.0, 8_000.0),
            (1.0, 100e6),
            (0.3, 50.0),
            (1_500.0, 1_500.0),
            (140.0, 2_000_000.0),
        ];
        for (lo, hi) in ranges {
            for n in [1, 20, 1000, 10_000] {
                let svg = draw(&report(&Scenario::ALL, n, lo, hi));
                assert_ticks_apart(&svg);
                // The plot spans every sample: the axis ends enclose them.
                let ((a, b), _) = latency_axis(lo, hi, PLOT_HEIGHT);
                assert!(a <= lo && b >= hi, "{lo}..{hi}: {a}..{b}");
            }
        }
        // Axes squeezed short still keep their labels apart.
        for len in [40.0, 90.0, 200.0, 460.0, 2000.0] {
            for (lo, hi) in ranges {
                let (_, ticks) = latency_axis(lo, hi, len);
                assert!(!ticks.is_empty(), "{lo}..{hi} on {len} px");
                for w in ticks.windows(2) {
                    assert!(w[1].at - w[0].at >= TICK_FONT + TICK_GAP, "{ticks:?}");
                }
            }
            for n in [1, 20, 1000, 100_000] {
                let (_, ticks) = percentile_axis(n, len);
                for w in ticks.windows(2) {
                    let room = (label_width(&w[0].label, TICK_FONT)
                        + label_width(&w[1].label, TICK_FONT))
                        / 2.0;
                    assert!(w[1].at - w[0].at >= room, "{ticks:?}");
                }
            }
        }
    }

    #[test]
    fn ticks_are_round_and_the_tail_is_labelled() {
        let (_, ticks) = latency_axis(100.0, 10_000.0, PLOT_HEIGHT);
        let labels: Vec<&str> = ticks.iter().map(|t| t.label.as_str()).collect();
        assert_eq!(
            labels,
            ["100 µs", "200 µs", "500 µs", "1 ms", "2 ms", "5 ms", "10 ms"]
        );
        let (_, ticks) = percentile_axis(1000, 620.0);
        let labels: Vec<&str> = ticks.iter().map(|t| t.label.as_str()).collect();
        assert_eq!(labels, ["0%", "50%", "90%", "99%", "99.9%"]);
    }

    /// The scenario names a picture's text holds, as whole words.
    fn names_in(svg: &str) -> Vec<&'static str> {
        let words: Vec<&str> = svg
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .collect();
        Scenario::ALL
            .iter()
            .map(|s| s.name())
            .filter(|name| words.contains(name))
            .collect()
    }

    #[test]
    fn the_picture_names_what_ran_and_nothing_else() {
        let subsets: [&[Scenario]; 5] = [
            &[Scenario::Private],
            &[Scenario::Room3, Scenario::Room20],
            &[Scenario::Login, Scenario::Mailbox],
            &[Scenario::ThroughputPrivate, Scenario::Join100k],
            &Scenario::ALL,
        ];
        for rows in subsets {
            let r = report(rows, 200, 150.0, 9_000.0);
            let svg = draw(&r);
            let ran: Vec<&str> = r.results.iter().map(|r| r.scenario.name()).collect();
            let legend: Vec<String> = texts(&svg, "legend")
                .into_iter()
                .filter_map(|t| t.2.split("  ").next().map(str::to_owned))
                .collect();
            assert_eq!(legend, ran, "{svg}");
            let mut named = names_in(&svg);
            let mut want = ran.clone();
            named.sort();
            want.sort();
            assert_eq!(named, want, "{svg}");
            assert_ticks_apart(&svg);
        }
    }

    #[test]
    fn a_row_with_nothing_delivered_is_named_but_not_drawn() {
        let mut r = report(&[Scenario::Private, Scenario::Room3], 50, 150.0, 900.0);
        r.results[1].samples.clear();
        let svg = draw(&r);
        let legend: Vec<String> = texts(&svg, "legend").into_iter().map(|t| t.2).collect();
        assert_eq!(legend[1], "private  (nothing delivered)");
        assert_eq!(svg.matches(r#"class="curve""#).count(), 2, "{svg}");
    }

    /// WCAG's relative luminance of `#RRGGBB`.
    fn luminance(hex: &str) -> f64 {
        let c = |i: usize| {
            let v = f64::from(u8::from_str_radix(&hex[i..i + 2], 16).expect("hex")) / 255.0;
            if v <= 0.03928 {
                v / 12.92
            } else {
                ((v + 0.055) / 1.055).powf(2.4)
            }
        };
        0.2126 * c(1) + 0.7152 * c(3) + 0.0722 * c(5)
    }

    #[test]
    fn every_colour_stands_out_on_white_and_from_the_others() {
        for c in COLOURS {
            let contrast = 1.05 / (luminance(c) + 0.05);
            assert!(contrast >= 3.0, "{c}: {contrast:.2}:1 on white");
        }
        let mut distinct = COLOURS.to_vec();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), COLOURS.len());
        // Every curve of a full run drawn, no colour and dash twice.
        let svg = draw(&report(&Scenario::ALL, 100, 150.0, 9_000.0));
        let styles: Vec<&str> = svg
            .lines()
            .filter(|l| l.starts_with(r#"<polyline class="curve""#))
            .map(|l| l.split(" points=").next().unwrap_or(""))
            .collect();
        let mut unique = styles.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), styles.len(), "{styles:#?}");
        assert!(styles.iter().all(|s| s.contains(r#"stroke-width="2.5""#)));
    }
}
