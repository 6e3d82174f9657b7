//! `<output>/loss.svg`: the loss per step as an SVG line chart, rewritten at every checkpoint and
//! at the end of a run (docs/training.md, "Loss log and plot").
//!
//! Two polylines with one point per logged step: the raw loss (thin, light) and its exponential
//! moving average (bold), debiased as TensorBoard's smoothing is: e_i = β·e_{i−1} + (1 − β)·x_i
//! from e_0 = 0, plotted as e_i / (1 − β^i), so the first point is the first loss. Axes carry
//! "nice" ticks (1, 2 or 5 × 10^k) labelled with the step and the loss; the title names the
//! run's key settings. Plain text, no dependencies; written to a temporary file and renamed.

use crate::weights::writer::TempOutput;
use crate::{Error, Result};
use std::fmt::Write;
use std::path::Path;

/// The plot's file name in the output folder.
pub const PLOT_FILE: &str = "loss.svg";
/// β of the smoothed curve.
pub const SMOOTHING: f64 = 0.9;

const W: f64 = 800.0;
const H: f64 = 450.0;
/// Plot area margins: left (y labels), right, top (title), bottom (x labels).
const MARGIN: [f64; 4] = [80.0, 24.0, 48.0, 56.0];

/// The debiased exponential moving average of `x` with factor `beta`.
pub fn smooth(x: &[f64], beta: f64) -> Vec<f64> {
    let (mut e, mut debias) = (0.0, 1.0);
    x.iter()
        .map(|&v| {
            e = beta * e + (1.0 - beta) * v;
            debias *= beta;
            e / (1.0 - debias)
        })
        .collect()
}

/// About `n` round tick values covering [lo, hi] (1, 2 or 5 × 10^k apart) and that spacing.
pub fn nice_ticks(lo: f64, hi: f64, n: usize) -> (Vec<f64>, f64) {
    let raw = (hi - lo) / n.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    ((first..=last).map(|i| i as f64 * step).collect(), step)
}

/// A value range with room around it (a flat curve gets a band of its own size, or ±1 at 0).
fn padded(lo: f64, hi: f64) -> (f64, f64) {
    if hi > lo {
        let pad = 0.05 * (hi - lo);
        return (lo - pad, hi + pad);
    }
    let pad = if lo == 0.0 { 1.0 } else { 0.1 * lo.abs() };
    (lo - pad, hi + pad)
}

/// The SVG of `points` (step, loss) in step order, under `title`.
pub fn loss_svg(points: &[(u64, f64)], title: &str) -> String {
    let [ml, mr, mt, mb] = MARGIN;
    let (pw, ph) = (W - ml - mr, H - mt - mb);
    let steps = points.iter().map(|p| p.0 as f64);
    let (x0, x1) = (steps.clone().fold(f64::INFINITY, f64::min), steps.fold(f64::NEG_INFINITY, f64::max));
    let (x0, x1) = if points.is_empty() {
        (0.0, 1.0)
    } else if x1 > x0 {
        (x0, x1)
    } else {
        (x0 - 1.0, x1 + 1.0)
    };
    let losses: Vec<f64> = points.iter().map(|p| p.1).collect();
    let lo = losses.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = losses.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let (y0, y1) = if points.is_empty() { (0.0, 1.0) } else { padded(lo, hi) };
    let px = |s: f64| ml + (s - x0) / (x1 - x0) * pw;
    let py = |v: f64| mt + (1.0 - (v - y0) / (y1 - y0)) * ph;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ =
        writeln!(svg, r#"<text x="{}" y="24" text-anchor="middle" font-size="14">{}</text>"#, W / 2.0, escape(title));
    // steps are whole numbers: fractional ticks of a short run are left out
    for s in nice_ticks(x0, x1, 8).0.iter().filter(|s| s.fract() == 0.0) {
        let x = px(*s);
        let _ = writeln!(svg, r##"<line x1="{x:.1}" y1="{mt}" x2="{x:.1}" y2="{:.1}" stroke="#eeeeee"/>"##, mt + ph);
        let _ = writeln!(svg, r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"#, mt + ph + 18.0, s);
    }
    let (yt, ys) = nice_ticks(y0, y1, 6);
    let decimals = (-ys.log10().floor()).max(0.0) as usize;
    for v in &yt {
        let y = py(*v);
        let _ = writeln!(svg, r##"<line x1="{ml}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#eeeeee"/>"##, ml + pw);
        let _ =
            writeln!(svg, r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{v:.decimals$}</text>"#, ml - 6.0, y + 4.0);
    }
    let _ = writeln!(svg, r#"<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="none" stroke="black"/>"#);
    let _ = writeln!(svg, r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">step</text>"#, ml + pw / 2.0, H - 12.0);
    let (lx, ly) = (18.0, mt + ph / 2.0);
    let _ =
        writeln!(svg, r#"<text x="{lx}" y="{ly}" text-anchor="middle" transform="rotate(-90 {lx} {ly})">loss</text>"#);
    let line = |vals: &[f64]| -> String {
        let pts: Vec<String> =
            points.iter().zip(vals).map(|(p, v)| format!("{:.2},{:.2}", px(p.0 as f64), py(*v))).collect();
        pts.join(" ")
    };
    let smoothed = smooth(&losses, SMOOTHING);
    let _ = writeln!(
        svg,
        r##"<polyline class="raw" fill="none" stroke="#9ecae1" stroke-width="1" points="{}"/>"##,
        line(&losses)
    );
    let _ = writeln!(
        svg,
        r##"<polyline class="smoothed" fill="none" stroke="#08519c" stroke-width="2.5" points="{}"/>"##,
        line(&smoothed)
    );
    let _ = writeln!(
        svg,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="end" fill="#08519c">raw (light), smoothed β={SMOOTHING} (bold)</text>"##,
        ml + pw - 6.0,
        mt + 16.0
    );
    svg.push_str("</svg>\n");
    svg
}

/// Writes [`loss_svg`] to `path` through a temporary file and a rename.
pub fn write_loss_svg(path: &Path, points: &[(u64, f64)], title: &str) -> Result<()> {
    let tmp = TempOutput::new(path, false)?;
    std::fs::write(&tmp.tmp, loss_svg(points, title)).map_err(|e| Error::io(&tmp.tmp, e))?;
    tmp.commit()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The run's key settings, for the loss plot's title.
pub(super) fn title(o: &super::run::TrainOptions) -> String {
    let warmup = if o.warmup > 0 { format!(", warmup {}", o.warmup) } else { String::new() };
    let targets = super::lora::parse_targets(&o.targets).len();
    format!(
        "wgdit train: rank {}, alpha {}, lr {:e} {}{warmup}, batch {}×{}, {targets} target patterns, {:?} σ, {} steps",
        o.rank, o.alpha, o.lr, o.lr_schedule, o.batch_size, o.grad_accum, o.sampling, o.steps
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smoothing_is_debiased_so_it_starts_at_the_first_loss() {
        let s = smooth(&[2.0, 4.0], 0.5);
        // e1 = 1, /0.5 = 2; e2 = 0.5 + 2 = 2.5, /0.75 = 3.333…
        assert_eq!(s[0], 2.0);
        assert!((s[1] - 2.5 / 0.75).abs() < 1e-15, "{s:?}");
    }

    #[test]
    fn ticks_are_round_and_inside_the_range() {
        assert_eq!(nice_ticks(0.0, 10.0, 5), (vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0], 2.0));
        let (t, s) = nice_ticks(0.93, 2.61, 6);
        assert_eq!(s, 0.5);
        assert_eq!(t, [1.0, 1.5, 2.0, 2.5]);
    }

    #[test]
    fn the_chart_has_a_raw_and_a_smoothed_line_of_one_point_per_step_and_an_escaped_title() {
        let pts: Vec<(u64, f64)> = (1..=7).map(|s| (s, 1.0 / s as f64)).collect();
        let svg = loss_svg(&pts, "rank 4 <lr & co>");
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        let lines: Vec<&str> = svg.lines().filter(|l| l.starts_with("<polyline")).collect();
        assert_eq!(lines.len(), 2);
        for l in lines {
            let pts = l.split("points=\"").nth(1).unwrap().split('"').next().unwrap();
            assert_eq!(pts.split(' ').count(), 7, "{l}");
        }
        assert!(svg.contains("rank 4 &lt;lr &amp; co&gt;"));
        // one point and a flat curve still have a drawable range
        assert!(!loss_svg(&[(3, 0.5)], "").contains("NaN"));
    }
}
