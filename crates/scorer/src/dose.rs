//! `wrpo-score dose`: WRPO's held-out gain against what its source brings.
//! A level is one choice of y_ws beside the same y_wt and y_l (a weaker or
//! stronger source); its x is the training pairs' mean gap y_ws - y_wt. Per
//! arm (a training recipe run at several levels: WRPO, DPO on y_ws, ...) the
//! y is the paired difference against the baseline (DPO on y_wt) on the
//! held-out prompts, and the dose-response is the slope of y against x,
//! with an interval from resampling the prompts jointly across levels.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use anyhow::{anyhow, bail, Result};
use wrpo_common::{
    eval::{DosePoint, DoseSlope, PromptScore},
    pairs::Pair,
};
use wrpo_llm::Rng;

use crate::{
    report::render::{p_text, write_png},
    select::SourceGain,
    stats::{bootstrap, interval_95, resample, sign_flip_p_value},
};

/// One y_ws: its name and what its training pairs say of the source.
#[derive(Clone, Debug, PartialEq)]
pub struct Level {
    pub name: String,
    pub pairs: usize,
    /// Mean y_ws - y_wt reward over the pairs.
    pub mean_gap: f64,
    /// Share of pairs where y_ws outscores y_wt, a tie counting half.
    pub win_rate: f64,
    pub ties: f64,
}

impl Level {
    /// The level's x from its pairs, by the rule of `pairs.summary.json`.
    pub fn from_pairs(name: &str, pairs: &[Pair]) -> Result<Level> {
        if pairs.is_empty() {
            bail!("level {name} has no pairs");
        }
        let g = SourceGain::of(pairs);
        Ok(Level { name: name.into(), pairs: g.pairs, mean_gap: g.mean_gap, win_rate: g.win_rate, ties: g.ties })
    }
}

/// A model trained at a level by one recipe (`arm`), e.g. level L+, arm
/// wrpo, model wrpo-lplus (a pool of seeds, NAME for NAME@SEED, is one model).
#[derive(Clone, Debug, PartialEq)]
pub struct Arm {
    pub level: String,
    pub arm: String,
    pub model: String,
}

/// A prompt's family: its id without a trailing -NUMBER (`arithmetic-012`
/// is `arithmetic`); an id without one is its own family.
pub fn family(prompt_id: &str) -> &str {
    match prompt_id.rsplit_once('-') {
        Some((head, tail)) if !head.is_empty() && !tail.is_empty() && tail.bytes().all(|b| b.is_ascii_digit()) => head,
        _ => prompt_id,
    }
}

/// The measures of the dose-response: the training reward on every prompt,
/// and numeric accuracy on the families whose answers are computed (where
/// the source's knowledge is checkable), not on every reference that happens
/// to hold a number.
fn measure_value(measure: &str, p: &PromptScore, numeric_families: &BTreeSet<String>) -> Option<f64> {
    match measure {
        "reward" => Some(p.reward_mean),
        _ => p.numeric_accuracy.filter(|_| numeric_families.contains(family(&p.prompt_id))),
    }
}

const MEASURES: [&str; 2] = ["reward", "numeric_accuracy"];

/// Everything `dose` computes.
pub struct Dose {
    pub levels: Vec<Level>,
    pub points: Vec<DosePoint>,
    pub slopes: Vec<DoseSlope>,
}

/// Least-squares slope of y on x (x not all equal).
pub fn slope(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let sxy: f64 = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum();
    let sxx: f64 = x.iter().map(|a| (a - mx) * (a - mx)).sum();
    sxy / sxx
}

/// The slope of the per-level mean differences against the levels' x, and
/// its 95% percentile interval: each resample draws the prompts once (with
/// replacement) and takes every level's mean over that same draw, so what
/// the prompts share across levels (their difficulty) cancels as it does in
/// the point estimate. `diffs[l][i]` is level l's difference on prompt i.
pub fn slope_bootstrap(x: &[f64], diffs: &[Vec<f64>], resamples: usize, seed: u64) -> (f64, f64, f64) {
    let n = diffs[0].len();
    let means = |idx: &mut dyn Iterator<Item = usize>| {
        let idx: Vec<usize> = idx.collect();
        diffs.iter().map(|d| idx.iter().map(|&i| d[i]).sum::<f64>() / idx.len() as f64).collect::<Vec<f64>>()
    };
    let point = slope(x, &means(&mut (0..n)));
    let mut rng = Rng::new(seed);
    let draws: Vec<f64> = (0..resamples).map(|_| slope(x, &means(&mut resample(&mut rng, n)))).collect();
    let (low, high) = interval_95(draws);
    (point, low, high)
}

/// Per-prompt differences of `model` against `against` on one measure (and
/// family, or every prompt), keyed by prompt.
fn differences(
    scores: &BTreeMap<&str, BTreeMap<&str, &PromptScore>>,
    model: &str,
    against: &str,
    measure: &str,
    family_of: Option<&str>,
    numeric: &BTreeSet<String>,
) -> Result<BTreeMap<String, f64>> {
    let get = |m: &str| scores.get(m).ok_or_else(|| anyhow!("model '{m}' has no scored sample; models: {:?}", scores.keys().collect::<Vec<_>>()));
    let (a, b) = (get(model)?, get(against)?);
    Ok(a.iter()
        .filter(|(id, _)| family_of.is_none_or(|f| family(id) == f))
        .filter_map(|(id, r)| Some((id.to_string(), measure_value(measure, r, numeric)? - measure_value(measure, b.get(id)?, numeric)?)))
        .collect())
}

/// The dose-response: every (level, arm) against `baseline` on each
/// measure, overall and per prompt family (reward); per arm and measure run
/// at two or more levels of different x, the slope with its joint interval.
/// `per_prompt` are `report`'s per-prompt rows (seed pools included).
pub fn dose(
    per_prompt: &[PromptScore],
    levels: &[Level],
    arms: &[Arm],
    baseline: &str,
    numeric_families: &BTreeSet<String>,
    seed: u64,
) -> Result<Dose> {
    let mut scores: BTreeMap<&str, BTreeMap<&str, &PromptScore>> = BTreeMap::new();
    for p in per_prompt {
        scores.entry(&p.model).or_default().insert(&p.prompt_id, p);
    }
    let level = |name: &str| levels.iter().find(|l| l.name == name).ok_or_else(|| anyhow!("--arm names level '{name}', which no --level defines"));
    // Families of at least two prompts: ids without a -NUMBER (content hashes) are no family.
    let mut sizes: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for p in per_prompt {
        sizes.entry(family(&p.prompt_id)).or_default().insert(&p.prompt_id);
    }
    let families: BTreeSet<&str> = sizes.into_iter().filter(|(_, ids)| ids.len() >= 2).map(|(f, _)| f).collect();
    let mut points = Vec::new();
    for a in arms {
        let l = level(&a.level)?;
        let scopes = std::iter::once(None).chain(families.iter().map(|f| Some(*f)));
        for family_of in scopes {
            for measure in MEASURES {
                // Per family, the reward only: numeric accuracy is already one family's measure.
                if family_of.is_some() && measure != "reward" {
                    continue;
                }
                let d: Vec<f64> = differences(&scores, &a.model, baseline, measure, family_of, numeric_families)?.into_values().collect();
                if d.is_empty() {
                    continue;
                }
                let (mean_diff, diff_low, diff_high) = bootstrap(&d, 2000, seed);
                points.push(DosePoint {
                    level: a.level.clone(),
                    arm: a.arm.clone(),
                    model: a.model.clone(),
                    against: baseline.into(),
                    family: family_of.unwrap_or("all").into(),
                    measure: measure.into(),
                    pairs: l.pairs as u32,
                    mean_gap: l.mean_gap,
                    pair_win_rate: l.win_rate,
                    prompts: d.len() as u32,
                    mean_diff,
                    diff_low,
                    diff_high,
                    p_value: sign_flip_p_value(&d, 20_000, seed),
                });
            }
        }
    }
    let mut slopes = Vec::new();
    let arm_names: BTreeSet<&str> = arms.iter().map(|a| a.arm.as_str()).collect();
    for name in arm_names {
        let at: Vec<&Arm> = arms.iter().filter(|a| a.arm == name).collect();
        let x: Vec<f64> = at.iter().map(|a| level(&a.level).map(|l| l.mean_gap)).collect::<Result<_>>()?;
        if at.len() < 2 || x.iter().all(|v| *v == x[0]) {
            continue;
        }
        for measure in MEASURES {
            let per_level: Vec<BTreeMap<String, f64>> =
                at.iter().map(|a| differences(&scores, &a.model, baseline, measure, None, numeric_families)).collect::<Result<_>>()?;
            // The prompts every level has a difference on: one draw must mean the same prompts for all.
            let common: Vec<&String> = per_level[0].keys().filter(|id| per_level.iter().all(|d| d.contains_key(*id))).collect();
            if common.len() < 2 {
                continue;
            }
            let diffs: Vec<Vec<f64>> = per_level.iter().map(|d| common.iter().map(|id| d[*id]).collect()).collect();
            let (slope, slope_low, slope_high) = slope_bootstrap(&x, &diffs, 2000, seed);
            slopes.push(DoseSlope {
                arm: name.into(),
                measure: measure.into(),
                levels: at.len() as u32,
                prompts: common.len() as u32,
                slope,
                slope_low,
                slope_high,
            });
        }
    }
    Ok(Dose { levels: levels.to_vec(), points, slopes })
}

/// The levels, the points (overall), the slopes and the per-family reward
/// differences as markdown.
pub fn markdown(d: &Dose) -> String {
    let mut out = String::from("Levels (x: the training pairs, y_ws against y_wt):\n\n| level | pairs | y_ws win rate (tie = 1/2) | ties | mean gap y_ws - y_wt |\n|---|---|---|---|---|\n");
    for l in &d.levels {
        out += &format!("| {} | {} | {:.1}% | {:.1}% | {:+.4} |\n", l.name, l.pairs, 100.0 * l.win_rate, 100.0 * l.ties, l.mean_gap);
    }
    out += "\nEvery level and arm against the baseline, paired per held-out prompt:\n\n| level | arm | model - against | measure | prompts | mean difference [95% CI] | p (sign-flip) |\n|---|---|---|---|---|---|---|\n";
    for p in d.points.iter().filter(|p| p.family == "all") {
        out += &format!(
            "| {} | {} | {} - {} | {} | {} | {:+.4} [{:+.4}, {:+.4}] | {} |\n",
            p.level,
            p.arm,
            p.model,
            p.against,
            p.measure,
            p.prompts,
            p.mean_diff,
            p.diff_low,
            p.diff_high,
            p_text(p.p_value)
        );
    }
    out += "\nSlopes against the mean training gap (per unit of reward gap; prompts resampled jointly across levels):\n\n| arm | measure | levels | prompts | slope [95% CI] |\n|---|---|---|---|---|\n";
    for s in &d.slopes {
        out +=
            &format!("| {} | {} | {} | {} | {:+.4} [{:+.4}, {:+.4}] |\n", s.arm, s.measure, s.levels, s.prompts, s.slope, s.slope_low, s.slope_high);
    }
    let columns: Vec<(&str, &str)> = {
        let mut seen = Vec::new();
        for p in d.points.iter().filter(|p| p.family == "all" && p.measure == "reward") {
            seen.push((p.level.as_str(), p.arm.as_str()));
        }
        seen
    };
    let families: BTreeSet<&str> = d.points.iter().filter(|p| p.family != "all").map(|p| p.family.as_str()).collect();
    if !families.is_empty() {
        out += "\nReward difference per prompt family (mean; prompts in brackets):\n\n| family |";
        for (l, a) in &columns {
            out += &format!(" {l} {a} |");
        }
        out += &format!("\n|---|{}\n", "---|".repeat(columns.len()));
        for f in families {
            out += &format!("| {f} |");
            for (l, a) in &columns {
                let cell = d.points.iter().find(|p| p.family == f && p.level == *l && p.arm == *a && p.measure == "reward");
                out += &cell.map_or(" |".to_string(), |p| format!(" {:+.4} ({}) |", p.mean_diff, p.prompts));
            }
            out += "\n";
        }
    }
    out
}

/// dose.png: per measure a panel, the difference against the baseline
/// (mean and 95% CI) by the level's mean training gap, one line per arm.
pub fn chart(d: &Dose, path: &Path) -> Result<()> {
    use plotters::prelude::*;
    let err = |e: &dyn std::fmt::Display| anyhow!("dose chart: {e}");
    let measures: Vec<&str> = MEASURES.into_iter().filter(|m| d.points.iter().any(|p| p.family == "all" && p.measure == *m)).collect();
    let arms: Vec<&str> = d.points.iter().map(|p| p.arm.as_str()).collect::<BTreeSet<_>>().into_iter().collect();
    write_png(path, (700 * measures.len().max(1) as u32, 600), |root| {
        let panels = root.split_evenly((1, measures.len().max(1)));
        for (area, measure) in panels.iter().zip(&measures) {
            let points: Vec<&DosePoint> = d.points.iter().filter(|p| p.family == "all" && p.measure == *measure).collect();
            let (x0, x1) = points.iter().fold((0.0f64, 0.0f64), |(a, b), p| (a.min(p.mean_gap), b.max(p.mean_gap)));
            let pad = ((x1 - x0) * 0.1).max(0.01);
            let (y0, y1) = points.iter().fold((0.0f64, 0.0f64), |(a, b), p| (a.min(p.diff_low), b.max(p.diff_high)));
            let ypad = ((y1 - y0) * 0.1).max(1e-3);
            let against = points.first().map_or("", |p| p.against.as_str());
            let mut chart = ChartBuilder::on(area)
                .caption(format!("{measure}: arm - {against} (mean, 95% CI)"), ("sans-serif", 20))
                .margin(15)
                .x_label_area_size(45)
                .y_label_area_size(70)
                .build_cartesian_2d((x0 - pad)..(x1 + pad), (y0 - ypad)..(y1 + ypad))
                .map_err(|e| err(&e))?;
            chart
                .configure_mesh()
                .x_desc("training pairs' mean gap y_ws - y_wt")
                .y_desc(format!("{measure} difference"))
                .label_style(("sans-serif", 15))
                .draw()
                .map_err(|e| err(&e))?;
            chart.draw_series([PathElement::new(vec![(x0 - pad, 0.0), (x1 + pad, 0.0)], BLACK.mix(0.5).stroke_width(1))]).map_err(|e| err(&e))?;
            for (i, arm) in arms.iter().enumerate() {
                let color = Palette99::pick(i).to_rgba();
                // Arms side by side at a level, so their intervals do not hide each other.
                let shift = (i as f64 - (arms.len() as f64 - 1.0) / 2.0) * pad * 0.15;
                let mut mine: Vec<&&DosePoint> = points.iter().filter(|p| p.arm == *arm).collect();
                mine.sort_by(|a, b| a.mean_gap.total_cmp(&b.mean_gap));
                chart
                    .draw_series(LineSeries::new(mine.iter().map(|p| (p.mean_gap + shift, p.mean_diff)), color.stroke_width(2)))
                    .map_err(|e| err(&e))?
                    .label(*arm)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3)));
                for p in mine {
                    let x = p.mean_gap + shift;
                    chart.draw_series([PathElement::new(vec![(x, p.diff_low), (x, p.diff_high)], color.stroke_width(2))]).map_err(|e| err(&e))?;
                    chart.draw_series([Circle::new((x, p.mean_diff), 5, color.filled())]).map_err(|e| err(&e))?;
                    chart.draw_series([Text::new(p.level.clone(), (x, p.diff_high), ("sans-serif", 13))]).map_err(|e| err(&e))?;
                }
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .label_font(("sans-serif", 15))
                .draw()
                .map_err(|e| err(&e))?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(model: &str, id: &str, reward: f64, numeric: Option<f64>) -> PromptScore {
        PromptScore { model: model.into(), prompt_id: id.into(), samples: 1, seeds: 1, reward_mean: reward, numeric_accuracy: numeric, rouge_l: None }
    }

    #[test]
    fn families_are_ids_without_their_number() {
        assert_eq!(family("arithmetic-012"), "arithmetic");
        assert_eq!(family("explain-science-7"), "explain-science");
        assert_eq!(family("a1b2c3"), "a1b2c3");
        assert_eq!(family("x-"), "x-");
        assert_eq!(family("-3"), "-3");
    }

    #[test]
    fn the_joint_bootstrap_cancels_what_prompts_share_across_levels() {
        // Level l's difference on prompt i: 0.5 x_l plus a prompt effect every
        // level shares. Any draw of prompts shifts every level's mean equally,
        // so each resample's slope is 0.5: the interval has no width.
        let x = [0.0, 0.1, 0.3];
        let effect: Vec<f64> = (0..40).map(|i| ((i * 37 % 11) as f64 - 5.0) * 0.02).collect();
        let diffs: Vec<Vec<f64>> = x.iter().map(|xl| effect.iter().map(|e| 0.5 * xl + e).collect()).collect();
        let (s, lo, hi) = slope_bootstrap(&x, &diffs, 500, 7);
        assert!((s - 0.5).abs() < 1e-12 && (lo - 0.5).abs() < 1e-12 && (hi - 0.5).abs() < 1e-12, "{s} [{lo}, {hi}]");
        // Noise of each level's own: the interval has width and holds the point.
        let noisy: Vec<Vec<f64>> = diffs
            .iter()
            .enumerate()
            .map(|(l, d)| d.iter().enumerate().map(|(i, v)| v + (((i * 13 + l * 7) % 5) as f64 - 2.0) * 0.01).collect())
            .collect();
        let (s, lo, hi) = slope_bootstrap(&x, &noisy, 500, 7);
        assert!(lo < s && s < hi && hi - lo > 1e-3, "{s} [{lo}, {hi}]");
        // Two levels: the slope is the difference of the means over the difference of x.
        let two = [vec![0.1, 0.3], vec![0.4, 0.2]];
        assert!((slope(&[0.0, 0.5], &[0.2, 0.3]) - 0.2).abs() < 1e-12);
        assert!((slope_bootstrap(&[0.0, 0.5], &two, 100, 1).0 - 0.2).abs() < 1e-12);
    }

    #[test]
    fn every_level_and_arm_is_compared_and_numeric_accuracy_only_on_numeric_families() {
        let levels = [
            Level { name: "L-".into(), pairs: 10, mean_gap: -0.1, win_rate: 0.4, ties: 0.0 },
            Level { name: "L+".into(), pairs: 10, mean_gap: 0.2, win_rate: 0.9, ties: 0.1 },
        ];
        let arms =
            [Arm { level: "L-".into(), arm: "wrpo".into(), model: "w-".into() }, Arm { level: "L+".into(), arm: "wrpo".into(), model: "w+".into() }];
        let mut rows = Vec::new();
        for (i, id) in ["arithmetic-0", "arithmetic-1", "capital-0", "capital-1"].iter().enumerate() {
            let numeric = Some(0.5);
            rows.push(row("dpo", id, 0.5, numeric));
            rows.push(row("w-", id, 0.5 - 0.01 * i as f64, numeric));
            rows.push(row("w+", id, 0.5 + 0.02, numeric.map(|v| v + 0.25)));
        }
        let numeric: BTreeSet<String> = ["arithmetic".to_string()].into();
        let d = dose(&rows, &levels, &arms, "dpo", &numeric, 3).unwrap();
        let get = |level: &str, family: &str, measure: &str| {
            d.points.iter().find(|p| p.level == level && p.family == family && p.measure == measure).unwrap()
        };
        assert!((get("L+", "all", "reward").mean_diff - 0.02).abs() < 1e-12);
        assert!((get("L-", "all", "reward").mean_diff + 0.015).abs() < 1e-12);
        assert!((get("L-", "capital", "reward").mean_diff + 0.025).abs() < 1e-12);
        // The capitals' references hold no computed number: numeric accuracy counts the arithmetic prompts only.
        assert_eq!(get("L+", "all", "numeric_accuracy").prompts, 2);
        assert!(!d.points.iter().any(|p| p.family != "all" && p.measure != "reward"));
        let reward_slope = d.slopes.iter().find(|s| s.measure == "reward").unwrap();
        assert!((reward_slope.slope - (0.02 + 0.015) / 0.3).abs() < 1e-12);
        assert_eq!((reward_slope.levels, reward_slope.prompts), (2, 4));
        // An arm at a level nobody defined, or a model never scored, is an error that names it.
        let stray = [Arm { level: "L9".into(), arm: "wrpo".into(), model: "w-".into() }];
        assert!(dose(&rows, &levels, &stray, "dpo", &numeric, 3).err().unwrap().to_string().contains("'L9'"));
        let unknown = [Arm { level: "L-".into(), arm: "wrpo".into(), model: "nosuch".into() }];
        assert!(dose(&rows, &levels, &unknown, "dpo", &numeric, 3).err().unwrap().to_string().contains("'nosuch'"));
        assert!(markdown(&d).contains("| L+ | wrpo | w+ - dpo | reward | 4 | +0.0200"));
    }
}
