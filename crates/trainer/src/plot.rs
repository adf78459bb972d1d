//! metrics.png: one panel per quantity against the step (training rows as a
//! thin line and, on longer runs, a running mean over them; eval rows as
//! points). Preference runs: loss, reward margin, reward
//! accuracy, alpha with the learning rate; SFT runs: loss, gradient norm,
//! learning rate, tokens/s.

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;
use wrpo_common::metrics::StepMetrics;

type Getter = fn(&StepMetrics) -> Option<f64>;

/// Title, value, and whether eval rows are drawn too.
type Panel = (&'static str, Getter, bool);

const PREFERENCE: [Panel; 4] = [
    ("loss", |m| Some(m.loss), true),
    ("reward margin (chosen - rejected)", |m| m.rewards_margins, true),
    ("reward accuracy", |m| m.rewards_accuracies, true),
    ("alpha (grey: learning rate, scaled)", |m| m.alpha, false),
];

const SFT: [Panel; 4] = [
    ("loss (mean token NLL)", |m| Some(m.loss), true),
    ("gradient norm", |m| m.grad_norm, false),
    ("learning rate", |m| Some(m.lr), false),
    ("tokens / s", |m| Some(m.tokens_per_second), false),
];

fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // A font in the binary: no system fonts needed.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    });
}

/// The running mean over a window centred on each point (a tenth of the run,
/// at least 3 steps): a step of 4 pairs swings its accuracy 0.25-1.0,
/// which hides the trend. Empty for runs too short to need it.
fn smoothed(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let half = (points.len() / 20).max(1);
    if points.len() < 10 {
        return vec![];
    }
    (0..points.len())
        .map(|i| {
            let window = &points[i.saturating_sub(half)..(i + half + 1).min(points.len())];
            (points[i].0, window.iter().map(|p| p.1).sum::<f64>() / window.len() as f64)
        })
        .collect()
}

pub fn plot(metrics: &[StepMetrics], path: &Path) -> Result<()> {
    register_font();
    // The backend picks the format by extension: a hidden name ending in .png.
    let tmp = path.with_file_name(format!(".{}.tmp.png", path.file_stem().unwrap_or_default().to_string_lossy()));
    {
        let root = BitMapBackend::new(&tmp, (1200, 800)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("plot: {e}"))?;
        let panels = root.split_evenly((2, 2));
        let max_lr = metrics.iter().map(|m| m.lr).fold(0.0, f64::max);
        let preference = metrics.iter().any(|m| m.alpha.is_some());
        for (area, (title, get, with_eval)) in panels.iter().zip(if preference { PREFERENCE } else { SFT }) {
            // Values a run did not log (NaN: an imported run's throughput) are not drawn.
            let point = |m: &StepMetrics| get(m).filter(|v| v.is_finite()).map(|v| (m.step as f64, v));
            let train: Vec<(f64, f64)> = metrics.iter().filter(|m| !m.stage.starts_with("eval")).filter_map(point).collect();
            let eval: Vec<(f64, f64)> = metrics.iter().filter(|m| with_eval && m.stage.starts_with("eval")).filter_map(point).collect();
            let lr: Vec<(f64, f64)> = if title.starts_with("alpha") {
                let top = train.iter().map(|p| p.1).fold(0.0, f64::max);
                metrics.iter().filter(|m| !m.stage.starts_with("eval")).map(|m| (m.step as f64, m.lr / max_lr.max(1e-30) * top)).collect()
            } else {
                vec![]
            };
            let all: Vec<&(f64, f64)> = train.iter().chain(&eval).chain(&lr).collect();
            if all.is_empty() {
                continue;
            }
            let (x0, x1) = all.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
            let (y0, y1) = all.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
            let pad = ((y1 - y0) * 0.05).max(1e-6);
            let mut chart = ChartBuilder::on(area)
                .caption(title, ("sans-serif", 22))
                .margin(12)
                .x_label_area_size(36)
                .y_label_area_size(70)
                .build_cartesian_2d(x0..x1.max(x0 + 1.0), (y0 - pad)..(y1 + pad))
                .map_err(|e| anyhow!("plot: {e}"))?;
            // Steps are whole numbers: at most one label per step.
            chart
                .configure_mesh()
                .x_desc("step")
                .x_labels(((x1 - x0) as usize + 1).min(10))
                .x_label_formatter(&|x| format!("{}", x.round() as i64))
                .label_style(("sans-serif", 14))
                .draw()
                .map_err(|e| anyhow!("plot: {e}"))?;
            let mean = smoothed(&train);
            let raw = if mean.is_empty() { BLUE.stroke_width(2) } else { RGBColor(150, 180, 230).stroke_width(1) };
            chart.draw_series(LineSeries::new(train, raw)).map_err(|e| anyhow!("plot: {e}"))?;
            chart.draw_series(LineSeries::new(mean, BLUE.stroke_width(2))).map_err(|e| anyhow!("plot: {e}"))?;
            if !lr.is_empty() {
                chart.draw_series(LineSeries::new(lr, RGBColor(150, 150, 150).stroke_width(1))).map_err(|e| anyhow!("plot: {e}"))?;
            }
            chart.draw_series(eval.into_iter().map(|p| Circle::new(p, 5, RED.filled()))).map_err(|e| anyhow!("plot: {e}"))?;
        }
        root.present().map_err(|e| anyhow!("cannot write {}: {e}", tmp.display()))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| anyhow!("cannot move the plot to {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_running_mean_follows_the_trend_of_a_swinging_line() {
        assert!(smoothed(&[(0.0, 1.0); 9]).is_empty(), "a short run is drawn as it is");
        let swinging: Vec<(f64, f64)> = (0..100).map(|i| (i as f64, if i % 2 == 0 { 0.25 } else { 1.0 })).collect();
        let mean = smoothed(&swinging);
        assert_eq!(mean.len(), 100);
        assert!(mean[10..90].iter().all(|p| (p.1 - 0.625).abs() < 0.1), "{mean:?}");
        assert_eq!(mean[42].0, 42.0);
    }
}
