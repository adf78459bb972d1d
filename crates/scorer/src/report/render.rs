//! report.md's tables and the report's charts (report.png, sweep.png): the
//! reward table, the paired comparisons, the judge's table and a sweep, as
//! `report.rs` and `head_to_head.rs` computed them.

use std::path::Path;

use anyhow::{anyhow, Result};
use wrpo_common::eval::{JudgeComparison, ModelReport, PairedComparison};

/// The paired comparisons as a markdown table.
pub fn paired_markdown(paired: &[PairedComparison]) -> String {
    let mut out = String::from(
        "| model - against | measure | prompts | mean difference [95% CI] | paired win rate [95% CI] | p (sign-flip) |\n|---|---|---|---|---|---|\n",
    );
    for c in paired {
        let win = percent(c.win_rate, c.win_low, c.win_high);
        out += &format!("| {} - {} | {} | {} | {} | {win} | {} |\n", c.model, c.against, c.measure, c.prompts, difference(c), p_text(c.p_value));
    }
    out
}

/// A paired comparison's mean difference and its 95% interval.
fn difference(c: &PairedComparison) -> String {
    format!("{:+.4} [{:+.4}, {:+.4}]", c.mean_diff, c.diff_low, c.diff_high)
}

/// A rate and its 95% interval, in percent.
fn percent(rate: f64, low: f64, high: f64) -> String {
    format!("{:.1}% [{:.1}, {:.1}]", 100.0 * rate, 100.0 * low, 100.0 * high)
}

/// A p-value as a reader wants it: four decimals, or its order of magnitude when smaller.
pub(crate) fn p_text(p: f64) -> String {
    if p < 1e-3 {
        format!("{p:.1e}")
    } else {
        format!("{p:.4}")
    }
}

/// The report as a markdown table.
pub fn markdown(rows: &[ModelReport], baseline: &str, reward: &str) -> String {
    let mut out = format!(
        "| model | mean reward ({reward}) [95% CI] | win rate vs {baseline} [95% CI] | numeric accuracy | ROUGE-L F1 | prompts x samples |\n|---|---|---|---|---|---|\n"
    );
    for r in rows {
        let win = match (r.win_rate, r.win_low, r.win_high) {
            (Some(w), Some(l), Some(h)) => percent(w, l, h),
            _ => "(baseline)".into(),
        };
        let acc = r.verifier_accuracy.map_or("-".into(), |a| format!("{:.1}% of {}", 100.0 * a, r.verifier_prompts));
        out += &format!(
            "| {} | {:.3} [{:.3}, {:.3}] | {win} | {acc} | {:.3} | {} x {} |\n",
            r.model,
            r.reward_mean,
            r.reward_low,
            r.reward_high,
            r.rouge_l,
            r.prompts,
            r.samples / r.prompts.max(1)
        );
    }
    out
}

/// Bars of mean reward and win rate with their intervals, and below them a
/// forest plot of the paired reward differences with theirs.
pub fn chart(rows: &[ModelReport], paired: &[PairedComparison], path: &Path) -> Result<()> {
    use plotters::prelude::*;
    let err = |e: &dyn std::fmt::Display| anyhow!("chart: {e}");
    let reward: Vec<&PairedComparison> = paired.iter().filter(|c| c.measure == "reward").collect();
    let forest_height = if reward.is_empty() { 0 } else { 120 + 40 * reward.len() as u32 };
    write_png(path, (1200, 500 + forest_height), |root| {
        let (top, bottom) = root.split_vertically(500);
        let (left, right) = top.split_horizontally(600);
        let n = rows.len();
        let names: Vec<String> = rows.iter().map(|r| r.model.clone()).collect();
        for (area, title, values) in [
            (&left, "mean reward (95% CI)", rows.iter().map(|r| Some((r.reward_mean, r.reward_low, r.reward_high))).collect::<Vec<_>>()),
            (
                &right,
                "win rate vs baseline (95% CI)",
                rows.iter().map(|r| r.win_rate.zip(r.win_low).zip(r.win_high).map(|((a, b), c)| (a, b, c))).collect(),
            ),
        ] {
            let top = values.iter().flatten().map(|v| v.2).fold(0.0f64, f64::max).max(1e-3) * 1.15;
            let low = values.iter().flatten().map(|v| v.1).fold(0.0f64, f64::min);
            let mut chart = ChartBuilder::on(area)
                .caption(title, ("sans-serif", 22))
                .margin(15)
                .x_label_area_size(40)
                .y_label_area_size(60)
                // plotters' discrete range holds its end too: 0..n - 1 is n slots, with no empty one after the last.
                .build_cartesian_2d((0..n.saturating_sub(1)).into_segmented(), low..top)
                .map_err(|e| err(&e))?;
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_label_formatter(&|x| slot_label(&names, x))
                .label_style(("sans-serif", 15))
                .draw()
                .map_err(|e| err(&e))?;
            for (i, v) in values.iter().enumerate() {
                let Some((mean, lo, hi)) = *v else { continue };
                let color = Palette99::pick(i).to_rgba();
                chart
                    .draw_series([Rectangle::new([(SegmentValue::Exact(i), 0.0), (SegmentValue::Exact(i + 1), mean)], color.filled())])
                    .map_err(|e| err(&e))?;
                chart
                    .draw_series([PathElement::new(vec![(SegmentValue::CenterOf(i), lo), (SegmentValue::CenterOf(i), hi)], BLACK.stroke_width(2))])
                    .map_err(|e| err(&e))?;
            }
        }
        if !reward.is_empty() {
            let reach = reward.iter().map(|c| c.diff_low.abs().max(c.diff_high.abs())).fold(1e-3, f64::max) * 1.1;
            // The table's first comparison on top.
            let reward: Vec<&PairedComparison> = reward.iter().rev().copied().collect();
            let labels: Vec<String> = reward.iter().map(|c| format!("{} - {}", c.model, c.against)).collect();
            let mut chart = ChartBuilder::on(&bottom)
                .caption("paired reward difference per prompt: mean and 95% CI (p: sign-flip test)", ("sans-serif", 20))
                .margin(15)
                .x_label_area_size(35)
                .y_label_area_size(220)
                // Room on the right for each interval's label.
                .build_cartesian_2d(-reach..reach * 1.8, (0..reward.len() - 1).into_segmented())
                .map_err(|e| err(&e))?;
            chart
                .configure_mesh()
                .disable_y_mesh()
                .y_label_formatter(&|y| slot_label(&labels, y))
                .label_style(("sans-serif", 15))
                .draw()
                .map_err(|e| err(&e))?;
            let zero = [(0.0, SegmentValue::Exact(0)), (0.0, SegmentValue::Exact(reward.len()))];
            chart.draw_series([PathElement::new(zero.to_vec(), BLACK.mix(0.5).stroke_width(1))]).map_err(|e| err(&e))?;
            for (i, c) in reward.iter().enumerate() {
                // The model's own colour, as in the bars above.
                let bar = names.iter().position(|m| *m == c.model).unwrap_or(i);
                let (y, color) = (SegmentValue::CenterOf(i), Palette99::pick(bar).to_rgba());
                chart
                    .draw_series([PathElement::new(vec![(c.diff_low, y.clone()), (c.diff_high, y.clone())], color.stroke_width(3))])
                    .map_err(|e| err(&e))?;
                chart.draw_series([Circle::new((c.mean_diff, y.clone()), 6, color.filled())]).map_err(|e| err(&e))?;
                let note = format!("{:+.4}  p={}", c.mean_diff, p_text(c.p_value));
                chart.draw_series([Text::new(note, (c.diff_high, y), ("sans-serif", 14))]).map_err(|e| err(&e))?;
            }
        }
        Ok(())
    })
}

/// A segmented axis's label: slot i's name at its centre, nothing at its edges.
fn slot_label(names: &[String], at: &plotters::prelude::SegmentValue<usize>) -> String {
    match at {
        plotters::prelude::SegmentValue::CenterOf(i) => names.get(*i).cloned().unwrap_or_default(),
        _ => String::new(),
    }
}

/// Draw a white PNG of `size` with `draw` and move it to `path` whole: the
/// image is written to a hidden file beside it first (the backend picks the
/// format by extension, hence `.NAME.tmp.png`).
pub(crate) fn write_png(
    path: &Path,
    size: (u32, u32),
    draw: impl FnOnce(&plotters::drawing::DrawingArea<plotters::prelude::BitMapBackend, plotters::coord::Shift>) -> Result<()>,
) -> Result<()> {
    use plotters::prelude::*;
    // A font in the binary: no system fonts needed.
    let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    let tmp = path.with_file_name(format!(".{}.tmp.png", path.file_stem().unwrap_or_default().to_string_lossy()));
    {
        let root = BitMapBackend::new(&tmp, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("cannot draw {}: {e}", path.display()))?;
        draw(&root)?;
        root.present().map_err(|e| anyhow!("cannot write {}: {e}", tmp.display()))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| anyhow!("cannot move the chart to {}: {e}", path.display()))
}

/// The sweep as a table: value, comparison, mean difference with its interval, p.
pub fn sweep_markdown(label: &str, points: &[(f64, &PairedComparison)]) -> String {
    let mut out = format!("| {label} | model - against | prompts | mean reward difference [95% CI] | p (sign-flip) |\n|---|---|---|---|---|\n");
    for (x, c) in points {
        out += &format!("| {x} | {} - {} | {} | {} | {} |\n", c.model, c.against, c.prompts, difference(c), p_text(c.p_value));
    }
    out
}

/// The sweep as a plot: the paired reward difference (mean and 95% CI)
/// against the swept value, with the zero line.
pub fn sweep_chart(label: &str, points: &[(f64, &PairedComparison)], path: &Path) -> Result<()> {
    use plotters::prelude::*;
    let err = |e: &dyn std::fmt::Display| anyhow!("sweep chart: {e}");
    write_png(path, (900, 560), |root| {
        let (x0, x1) = points.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
        let pad = ((x1 - x0) * 0.08).max(0.05);
        let (y0, y1) = points.iter().fold((0.0f64, 0.0f64), |(a, b), p| (a.min(p.1.diff_low), b.max(p.1.diff_high)));
        let ypad = ((y1 - y0) * 0.1).max(1e-3);
        let against: Vec<&str> = points.iter().map(|p| p.1.against.as_str()).collect();
        let title = if against.windows(2).all(|w| w[0] == w[1]) {
            format!("reward difference against {} (mean, 95% CI) by {label}", against.first().unwrap_or(&""))
        } else {
            format!("paired reward difference (mean, 95% CI) by {label}")
        };
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 20))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d((x0 - pad)..(x1 + pad), (y0 - ypad)..(y1 + ypad))
            .map_err(|e| err(&e))?;
        chart.configure_mesh().x_desc(label).y_desc("reward difference").label_style(("sans-serif", 15)).draw().map_err(|e| err(&e))?;
        chart.draw_series([PathElement::new(vec![(x0 - pad, 0.0), (x1 + pad, 0.0)], BLACK.mix(0.5).stroke_width(1))]).map_err(|e| err(&e))?;
        chart.draw_series(LineSeries::new(points.iter().map(|p| (p.0, p.1.mean_diff)), BLUE.stroke_width(2))).map_err(|e| err(&e))?;
        for (x, c) in points {
            chart.draw_series([PathElement::new(vec![(*x, c.diff_low), (*x, c.diff_high)], BLUE.stroke_width(2))]).map_err(|e| err(&e))?;
            chart.draw_series([Circle::new((*x, c.mean_diff), 6, BLUE.filled())]).map_err(|e| err(&e))?;
            let label = (*x + pad * 0.1, c.diff_high);
            chart.draw_series([Text::new(format!("p={}", p_text(c.p_value)), label, ("sans-serif", 14))]).map_err(|e| err(&e))?;
        }
        Ok(())
    })
}

/// The judge's table: each model against the baseline.
pub fn judge_markdown(rows: &[JudgeComparison]) -> String {
    let mut out = String::from(
        "| model vs baseline | prompts | win / tie / loss | win rate [95% CI] | length-adjusted win rate [95% CI] | split by order | unreadable |\n|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let (win, lc) = (percent(r.win_rate, r.win_low, r.win_high), percent(r.lc_win_rate, r.lc_low, r.lc_high));
        out += &format!(
            "| {} vs {} | {} | {} / {} / {} | {win} | {lc} | {} | {} |\n",
            r.model, r.baseline, r.prompts, r.wins, r.ties, r.losses, r.position_splits, r.unreadable
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::sweep_points;

    /// A sweep takes each model's first reward comparison, in the order of
    /// the values, names a model without one, and is drawn.
    #[test]
    fn a_sweep_orders_its_comparisons_by_value_and_is_plotted() {
        let row = |model: &str, against: &str, measure: &str, mean: f64| PairedComparison {
            model: model.into(),
            against: against.into(),
            measure: measure.into(),
            prompts: 10,
            mean_diff: mean,
            diff_low: mean - 0.02,
            diff_high: mean + 0.02,
            win_rate: 0.5,
            win_low: 0.4,
            win_high: 0.6,
            p_value: 0.5,
        };
        let paired = vec![
            row("alpha1", "target-sft", "rouge_l", 9.0),
            row("alpha1", "target-sft", "reward", 0.03),
            row("alpha0", "target-sft", "reward", 0.01),
            row("alpha0", "dpo", "reward", 0.0),
        ];
        let sweep = vec![("alpha1".to_string(), 1.0), ("alpha0".to_string(), 0.0)];
        let points = sweep_points(&sweep, &paired).unwrap();
        let got: Vec<(f64, &str, &str, f64)> = points.iter().map(|(x, c)| (*x, c.model.as_str(), c.against.as_str(), c.mean_diff)).collect();
        assert_eq!(got, vec![(0.0, "alpha0", "target-sft", 0.01), (1.0, "alpha1", "target-sft", 0.03)]);
        let table = sweep_markdown("alpha_max", &points);
        assert!(table.contains("| 0 | alpha0 - target-sft | 10 | +0.0100 [-0.0100, +0.0300] |"), "{table}");
        let err = sweep_points(&[("alpha9".to_string(), 9.0)], &paired).unwrap_err().to_string();
        assert!(err.contains("alpha9") && err.contains("--compare alpha9:AGAINST"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let png = dir.path().join("sweep.png");
        sweep_chart("alpha_max", &points, &png).unwrap();
        assert!(std::fs::read(&png).unwrap().starts_with(b"\x89PNG"));
    }
}
