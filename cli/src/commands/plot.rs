//! `elf plot RUN_DIR`: one SVG of the loss parts, learning rate, gradient norm and throughput
//! over steps (`metrics/train.jsonl`, `metrics/timing.jsonl`) and the eval metrics of every
//! sampling run (`metrics/eval.jsonl`). Hand-written SVG: no plotting dependency, opens in any
//! browser.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::Value;

use crate::out;

/// `elf plot`.
#[derive(Debug, clap::Args)]
pub struct PlotArgs {
    /// The run folder (with `metrics/train.jsonl`).
    run_dir: PathBuf,
    /// Output file (default `<run dir>/plot.svg`).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// (step, value) points.
type Points = Vec<(f64, f64)>;

/// A named series.
type Series = (String, Points);

/// One chart: a title and its series.
struct Chart {
    title: String,
    series: Vec<Series>,
}

const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];
const W: f64 = 420.0;
const H: f64 = 260.0;
const PAD: (f64, f64, f64, f64) = (58.0, 16.0, 30.0, 40.0); // left, right, top, bottom

fn read_lines(path: &Path) -> anyhow::Result<Vec<Value>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(e).with_context(|| format!("{}: cannot read", path.display())),
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{}: line {}: not JSON", path.display(), i + 1))
        })
        .collect()
}

fn series(rows: &[Value], key: &str) -> Vec<(f64, f64)> {
    rows.iter()
        .filter_map(|r| Some((r["step"].as_f64()?, r[key].as_f64()?)))
        .filter(|(_, v)| v.is_finite())
        .collect()
}

/// A tick label short enough for the axis.
fn label(v: f64) -> String {
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e5).contains(&a) {
        format!("{v:.2e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn draw(svg: &mut String, chart: &Chart, x0: f64, y0: f64) {
    let pts: Vec<(f64, f64)> = chart
        .series
        .iter()
        .flat_map(|(_, p)| p.iter().copied())
        .collect();
    let _ = write!(
        svg,
        r##"<g transform="translate({x0},{y0})"><rect width="{W}" height="{H}" fill="white" stroke="#ccc"/><text x="{}" y="18" font-size="13" text-anchor="middle" font-weight="bold">{}</text>"##,
        W / 2.0,
        escape(&chart.title)
    );
    if pts.is_empty() {
        let _ = write!(
            svg,
            r##"<text x="{}" y="{}" font-size="12" text-anchor="middle" fill="#888">no data</text></g>"##,
            W / 2.0,
            H / 2.0
        );
        return;
    }
    let (mut xmin, mut xmax, mut ymin, mut ymax) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for (x, y) in &pts {
        (xmin, xmax, ymin, ymax) = (xmin.min(*x), xmax.max(*x), ymin.min(*y), ymax.max(*y));
    }
    if xmax == xmin {
        (xmin, xmax) = (xmin - 0.5, xmax + 0.5);
    }
    if ymax == ymin {
        (ymin, ymax) = (ymin - 0.5, ymax + 0.5);
    }
    let (pl, pr, pt, pb) = PAD;
    let (pw, ph) = (W - pl - pr, H - pt - pb);
    let sx = |x: f64| pl + (x - xmin) / (xmax - xmin) * pw;
    let sy = |y: f64| pt + (1.0 - (y - ymin) / (ymax - ymin)) * ph;
    // Axes with min/mid/max ticks.
    let _ = write!(
        svg,
        r##"<line x1="{pl}" y1="{}" x2="{}" y2="{}" stroke="#444"/><line x1="{pl}" y1="{pt}" x2="{pl}" y2="{}" stroke="#444"/>"##,
        pt + ph,
        pl + pw,
        pt + ph,
        pt + ph
    );
    for k in 0..3 {
        let f = k as f64 / 2.0;
        let (xv, yv) = (xmin + f * (xmax - xmin), ymin + f * (ymax - ymin));
        let _ = write!(
            svg,
            r##"<text x="{}" y="{}" font-size="10" text-anchor="middle">{xv:.0}</text><text x="{}" y="{}" font-size="10" text-anchor="end">{}</text><line x1="{pl}" y1="{}" x2="{}" y2="{}" stroke="#eee"/>"##,
            sx(xv),
            pt + ph + 14.0,
            pl - 4.0,
            sy(yv) + 3.0,
            label(yv),
            sy(yv),
            pl + pw,
            sy(yv)
        );
    }
    let _ = write!(
        svg,
        r##"<text x="{}" y="{}" font-size="10" text-anchor="middle" fill="#555">step</text>"##,
        pl + pw / 2.0,
        H - 6.0
    );
    for (i, (name, p)) in chart.series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let path: Vec<String> = p
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
            .collect();
        let _ = write!(
            svg,
            r##"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/>"##,
            path.join(" ")
        );
        if p.len() <= 30 {
            for (x, y) in p {
                let _ = write!(
                    svg,
                    r##"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{color}"/>"##,
                    sx(*x),
                    sy(*y)
                );
            }
        }
        if chart.series.len() > 1 {
            let _ = write!(
                svg,
                r##"<text x="{}" y="{}" font-size="9" fill="{color}">{}</text>"##,
                pl + 6.0,
                pt + 10.0 + 11.0 * i as f64,
                escape(name)
            );
        }
    }
    svg.push_str("</g>");
}

/// Runs `elf plot`.
pub fn run(a: PlotArgs) -> anyhow::Result<()> {
    let m = a.run_dir.join("metrics");
    let train = read_lines(&m.join("train.jsonl"))?;
    if train.is_empty() {
        anyhow::bail!(
            "{}: no training metrics (is this a run folder?)",
            m.join("train.jsonl").display()
        );
    }
    let timing = read_lines(&m.join("timing.jsonl"))?;
    let evals = read_lines(&m.join("eval.jsonl"))?;
    let mut charts = vec![
        Chart {
            title: "loss".into(),
            series: vec![("loss".into(), series(&train, "loss"))],
        },
        Chart {
            title: "loss parts (rescaled)".into(),
            series: vec![
                ("l2 (denoiser)".into(), series(&train, "l2_loss")),
                ("ce (decoder)".into(), series(&train, "ce_loss")),
            ],
        },
        Chart {
            title: "learning rate".into(),
            series: vec![("lr".into(), series(&train, "lr"))],
        },
        Chart {
            title: "gradient norm (before clipping)".into(),
            series: vec![("grad norm".into(), series(&train, "grad_norm"))],
        },
        Chart {
            title: "tokens / s".into(),
            series: vec![("tokens/s".into(), series(&timing, "tokens_per_s"))],
        },
    ];
    // Eval metrics: one chart per metric, one series per sampling run.
    let mut by_metric: BTreeMap<&str, BTreeMap<String, Points>> = BTreeMap::new();
    for e in &evals {
        let Some(step) = e["step"].as_f64() else {
            continue;
        };
        for r in e["results"].as_array().into_iter().flatten() {
            let run = r["run"].as_str().unwrap_or("?").to_string();
            for metric in ["ppl", "mean_entropy", "bleu", "rouge1", "rouge2", "rougeL"] {
                if let Some(v) = r[metric].as_f64() {
                    by_metric
                        .entry(metric)
                        .or_default()
                        .entry(run.clone())
                        .or_default()
                        .push((step, v));
                }
            }
        }
    }
    for (metric, runs) in by_metric {
        charts.push(Chart {
            title: format!("eval: {metric}"),
            series: runs.into_iter().collect(),
        });
    }
    let cols = 3usize;
    let rows = charts.len().div_ceil(cols);
    let (gap, head) = (12.0, 36.0);
    let (width, height) = (
        cols as f64 * (W + gap) + gap,
        head + rows as f64 * (H + gap) + gap,
    );
    let mut svg = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif"><rect width="100%" height="100%" fill="#f7f7f7"/><text x="{gap}" y="24" font-size="16">{}</text>"##,
        escape(&format!(
            "{} — {} steps, {} evaluations",
            a.run_dir.display(),
            train.len(),
            evals.len()
        ))
    );
    for (i, chart) in charts.iter().enumerate() {
        let (r, c) = (i / cols, i % cols);
        draw(
            &mut svg,
            chart,
            gap + c as f64 * (W + gap),
            head + r as f64 * (H + gap),
        );
    }
    svg.push_str("</svg>\n");
    let path = a.out.unwrap_or_else(|| a.run_dir.join("plot.svg"));
    std::fs::write(&path, svg).with_context(|| format!("{}: cannot write", path.display()))?;
    out::line(format!(
        "wrote {} ({} charts)",
        path.display(),
        charts.len()
    ));
    Ok(())
}
