//! `wrpo-score report`: what training bought, on held-out prompts. Per
//! model: the mean reward, the win rate against a baseline model (per
//! prompt, the model's mean reward against the baseline's: win 1, tie 1/2),
//! both with 95% bootstrap intervals over prompts; and two measures the
//! training did not optimise: numeric-verifier accuracy on the prompts
//! whose reference is a number, and ROUGE-L F1 against the reference.

use std::{
    cmp::Ordering,
    collections::{BTreeMap, BTreeSet, HashMap},
    path::Path,
};

use anyhow::{anyhow, bail, Result};
use wrpo_common::{
    prompts::Prompt,
    report::{ModelReport, PairedComparison, PromptScore},
    samples::FinishReason,
    scored::ScoredSample,
};
use wrpo_llm::Rng;

use crate::reward::last_number;

fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_lowercase).collect()
}

/// ROUGE-L F1 of `candidate` against `reference` over lower-cased words.
pub fn rouge_l(candidate: &str, reference: &str) -> f64 {
    let (c, r) = (words(candidate), words(reference));
    if c.is_empty() || r.is_empty() {
        return 0.0;
    }
    let mut prev = vec![0usize; r.len() + 1];
    for cw in &c {
        let mut row = vec![0usize; r.len() + 1];
        for (j, rw) in r.iter().enumerate() {
            row[j + 1] = if cw == rw { prev[j] + 1 } else { row[j].max(prev[j + 1]) };
        }
        prev = row;
    }
    let lcs = prev[r.len()] as f64;
    if lcs == 0.0 {
        return 0.0;
    }
    let (p, rec) = (lcs / c.len() as f64, lcs / r.len() as f64);
    2.0 * p * rec / (p + rec)
}

/// The mean of `values` and its 95% percentile-bootstrap interval.
pub fn bootstrap(values: &[f64], resamples: usize, seed: u64) -> (f64, f64, f64) {
    let n = values.len();
    let mean = values.iter().sum::<f64>() / n.max(1) as f64;
    if n < 2 {
        return (mean, mean, mean);
    }
    let mut rng = Rng::new(seed);
    let means: Vec<f64> = (0..resamples).map(|_| (0..n).map(|_| values[(rng.next_u64() % n as u64) as usize]).sum::<f64>() / n as f64).collect();
    let (low, high) = interval_95(means);
    (mean, low, high)
}

/// The 2.5% and 97.5% points of bootstrap `draws` (at least one): a 95% percentile interval.
pub(crate) fn interval_95(mut draws: Vec<f64>) -> (f64, f64) {
    draws.sort_by(f64::total_cmp);
    let last = draws.len() - 1;
    let at = |q: f64| draws[((q * last as f64).round() as usize).min(last)];
    (at(0.025), at(0.975))
}

/// Two-sided p-value of the paired sign-flip permutation test of "the mean
/// per-prompt difference is 0": the share of sign patterns (each prompt's
/// difference kept or negated) whose |sum| reaches the observed one. Every
/// pattern when there are at most 16 prompts; else `resamples` random ones,
/// counted with the observed pattern so that p is never 0.
pub fn sign_flip_p_value(d: &[f64], resamples: usize, seed: u64) -> f64 {
    let n = d.len();
    let observed = d.iter().sum::<f64>().abs();
    // Rounding must not make the observed pattern (or its mirror) less extreme than itself.
    let reaches = |sum: f64| sum.abs() >= observed - 1e-9 * observed.max(1.0);
    if n <= 16 {
        let patterns = 1u32 << n;
        let hits = (0..patterns).filter(|bits| reaches(d.iter().enumerate().map(|(i, x)| if bits >> i & 1 == 1 { -x } else { *x }).sum())).count();
        return hits as f64 / patterns as f64;
    }
    let mut rng = Rng::new(seed);
    let hits = (0..resamples).filter(|_| reaches(d.iter().map(|x| if rng.next_u64() & 1 == 1 { -x } else { *x }).sum())).count();
    (1 + hits) as f64 / (1 + resamples) as f64
}

/// 1 where `a` is higher, 1/2 on a tie, 0 below.
fn win(a: f64, b: f64) -> f64 {
    match a.total_cmp(&b) {
        Ordering::Greater => 1.0,
        Ordering::Equal => 0.5,
        Ordering::Less => 0.0,
    }
}

/// Everything `wrpo-score report` computes.
pub struct Report {
    /// One row per model (pooled ones included).
    pub models: Vec<ModelReport>,
    /// One row per (model, prompt).
    pub prompts: Vec<PromptScore>,
    pub paired: Vec<PairedComparison>,
    /// Prompts a model has no reward on because the reward refused every one
    /// of its samples there (a skipped row each): left out of that model's
    /// comparisons, and said so.
    pub refused: Vec<String>,
}

/// A measure's per-prompt value, where the prompt has one.
type Measure = fn(&PromptScore) -> Option<f64>;

/// The measures compared between models.
const MEASURES: [(&str, Measure); 3] =
    [("reward", |p| Some(p.reward_mean)), ("numeric_accuracy", |p| p.numeric_accuracy), ("rouge_l", |p| p.rouge_l)];

/// Per model, the prompts whose every sample the reward refused.
type Refused = BTreeMap<String, BTreeSet<String>>;
/// Per model, its scores per prompt.
type Scores = BTreeMap<String, BTreeMap<String, PromptScore>>;

/// Per-prompt scores of every scored model, then of every pool of training
/// seeds (aliases NAME@SEED pool into NAME: per prompt, the mean over the
/// seeds with a reward there); and the prompts each model (or pool) has
/// only refused samples of.
fn prompt_scores(prompts: &[Prompt], scored: &[ScoredSample]) -> Result<(Scores, Refused)> {
    let by_id: HashMap<&str, &Prompt> = prompts.iter().map(|p| (p.prompt_id.as_str(), p)).collect();
    let mut groups: BTreeMap<&str, BTreeMap<&str, Vec<&ScoredSample>>> = BTreeMap::new();
    let mut refused = Refused::new();
    for s in scored {
        if !by_id.contains_key(s.prompt_id.as_str()) {
            bail!("scored sample (prompt_id {}, model {}) has no prompt in the prompts file", s.prompt_id, s.model);
        }
        // Skipped rows: the reward's server refused them, and they have no reward.
        match s.finish_reason {
            FinishReason::Skipped => _ = refused.entry(s.model.clone()).or_default().insert(s.prompt_id.clone()),
            _ => groups.entry(&s.model).or_default().entry(&s.prompt_id).or_default().push(s),
        }
    }
    for (model, ids) in refused.iter_mut() {
        ids.retain(|id| !groups.get(model.as_str()).is_some_and(|g| g.contains_key(id.as_str())));
    }
    let mut out = Scores::new();
    for (model, per_prompt) in &groups {
        for (id, v) in per_prompt {
            let n = v.len() as f64;
            let reference = by_id[id].reference.as_deref();
            let numeric_accuracy = reference
                .and_then(last_number)
                .map(|t| v.iter().filter(|s| last_number(&s.response).is_some_and(|x| (x - t).abs() <= 1e-6 * t.abs().max(1.0))).count() as f64 / n);
            let row = PromptScore {
                model: model.to_string(),
                prompt_id: id.to_string(),
                samples: v.len() as u32,
                seeds: 1,
                reward_mean: v.iter().map(|s| s.reward).sum::<f64>() / n,
                numeric_accuracy,
                rouge_l: reference.map(|r| v.iter().map(|s| rouge_l(&s.response, r)).sum::<f64>() / n),
            };
            out.entry(model.to_string()).or_default().insert(id.to_string(), row);
        }
    }
    for (name, seeds) in seed_pools(out.keys()) {
        if out.contains_key(&name) {
            bail!("model '{name}' is scored, and so are its seeds {seeds:?}: the pool of NAME@SEED aliases is named NAME, so rename one");
        }
        let others: Vec<(&str, &BTreeMap<String, PromptScore>)> = seeds[1..].iter().map(|m| (m.as_str(), &out[m])).collect();
        same_prompts((&seeds[0], &out[&seeds[0]]), &others, &refused)?;
        let ids: BTreeSet<&String> = seeds.iter().flat_map(|s| out[s].keys()).collect();
        let all_refused: BTreeSet<String> = seeds.iter().filter_map(|s| refused.get(s)).flatten().filter(|id| !ids.contains(id)).cloned().collect();
        let mut pooled = BTreeMap::new();
        for id in ids {
            let rows: Vec<&PromptScore> = seeds.iter().filter_map(|s| out[s].get(id)).collect();
            let k = rows.len() as f64;
            let mean = |f: Measure| rows.iter().map(|r| f(r)).sum::<Option<f64>>().map(|s| s / k);
            pooled.insert(
                id.clone(),
                PromptScore {
                    model: name.clone(),
                    prompt_id: id.clone(),
                    samples: rows.iter().map(|r| r.samples).sum(),
                    seeds: rows.len() as u32,
                    reward_mean: rows.iter().map(|r| r.reward_mean).sum::<f64>() / k,
                    numeric_accuracy: mean(|r| r.numeric_accuracy),
                    rouge_l: mean(|r| r.rouge_l),
                },
            );
        }
        if !all_refused.is_empty() {
            refused.insert(name.clone(), all_refused);
        }
        out.insert(name, pooled);
    }
    Ok((out, refused))
}

/// NAME -> the models NAME@SEED that the reward and judge tables pool as NAME.
pub(crate) fn seed_pools<'a>(models: impl IntoIterator<Item = &'a String>) -> BTreeMap<String, Vec<String>> {
    let mut pools: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for model in models {
        if let Some((name, _seed)) = model.rsplit_once('@') {
            pools.entry(name.to_string()).or_default().push(model.clone());
        }
    }
    pools
}

/// Refuse to compare models that answered different prompt sets: a paired
/// difference is only one on the same prompts. A prompt a model lacks
/// because the reward refused all its samples there is no such difference.
fn same_prompts(
    (first, a): (&str, &BTreeMap<String, PromptScore>),
    others: &[(&str, &BTreeMap<String, PromptScore>)],
    refused: &Refused,
) -> Result<()> {
    for &(other, b) in others {
        let missing = |x: &BTreeMap<String, PromptScore>, y: &BTreeMap<String, PromptScore>, lacks: &str| {
            x.keys().find(|k| !y.contains_key(*k) && !refused.get(lacks).is_some_and(|r| r.contains(*k))).cloned()
        };
        if let Some((id, lacks)) = missing(a, b, other).map(|id| (id, other)).or_else(|| missing(b, a, first).map(|id| (id, first))) {
            bail!(
                "'{first}' answered {} prompts and '{other}' {}: '{lacks}' has no sample of prompt {id}; compare models on the same prompts",
                a.len(),
                b.len()
            );
        }
    }
    Ok(())
}

/// The report: per-model rows (win rate against `baseline`), per-prompt
/// rows, and the paired comparisons `compare` names as (model, against),
/// by default every model against `baseline`.
pub fn report(prompts: &[Prompt], scored: &[ScoredSample], baseline: &str, compare: &[(String, String)], seed: u64) -> Result<Report> {
    let (scores, refused) = prompt_scores(prompts, scored)?;
    // A seed of a pool as the baseline: the reward table's pool NAME would hold
    // the baseline and the judge's could not (no verdict of a model against
    // itself), one name for two models.
    if let Some((name, _)) = baseline.rsplit_once('@') {
        if let Some(seeds) = seed_pools(scores.keys()).get(name).filter(|seeds| seeds.len() > 1) {
            bail!(
                "--baseline {baseline}: it is one of the seeds {seeds:?} that pool as '{name}', which would then hold its own baseline; \
                 compare against a model outside that pool, or the pool itself (--baseline {name}, rewards only)"
            );
        }
    }
    let base = scores
        .get(baseline)
        .ok_or_else(|| anyhow!("the baseline model '{baseline}' has no scored sample; models: {:?}", scores.keys().collect::<Vec<_>>()))?;
    let mut models = Vec::new();
    for (model, per_prompt) in &scores {
        let rows: Vec<&PromptScore> = per_prompt.values().collect();
        let (reward_mean, reward_low, reward_high) = bootstrap(&rows.iter().map(|r| r.reward_mean).collect::<Vec<_>>(), 2000, seed);
        let wins: Vec<f64> = rows.iter().filter_map(|r| base.get(&r.prompt_id).map(|b| win(r.reward_mean, b.reward_mean))).collect();
        let win_ci = (model != baseline && !wins.is_empty()).then(|| bootstrap(&wins, 2000, seed));
        let checkable: Vec<f64> = rows.iter().filter_map(|r| r.numeric_accuracy).collect();
        let samples: u32 = rows.iter().map(|r| r.samples).sum();
        models.push(ModelReport {
            model: model.clone(),
            prompts: rows.len() as u32,
            samples,
            reward_mean,
            reward_low,
            reward_high,
            win_rate: win_ci.map(|w| w.0),
            win_low: win_ci.map(|w| w.1),
            win_high: win_ci.map(|w| w.2),
            verifier_accuracy: (!checkable.is_empty()).then(|| checkable.iter().sum::<f64>() / checkable.len() as f64),
            verifier_prompts: checkable.len() as u32,
            // Per sample, as before pooling existed: prompts without a reference count 0.
            rouge_l: rows.iter().map(|r| r.samples as f64 * r.rouge_l.unwrap_or(0.0)).sum::<f64>() / samples.max(1) as f64,
        });
    }
    let default: Vec<(String, String)> = scores.keys().filter(|m| *m != baseline).map(|m| (m.clone(), baseline.to_string())).collect();
    let mut paired = Vec::new();
    for (model, against) in if compare.is_empty() { &default } else { compare } {
        let get = |m: &str| {
            scores.get(m).ok_or_else(|| anyhow!("--compare names '{m}', which has no scored sample; models: {:?}", scores.keys().collect::<Vec<_>>()))
        };
        let (a, b) = (get(model)?, get(against)?);
        same_prompts((model, a), &[(against, b)], &refused)?;
        for (measure, value) in MEASURES {
            let pairs: Vec<(f64, f64)> = a.iter().filter_map(|(id, r)| value(r).zip(b.get(id).and_then(value))).collect();
            if pairs.is_empty() {
                continue;
            }
            paired.push(paired_row(model, against, measure, &pairs, seed));
        }
    }
    let refused = refused
        .iter()
        .filter(|(_, ids)| !ids.is_empty())
        .map(|(model, ids)| {
            let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
            format!("{model}: the reward refused every sample of {} prompt(s) ({}); its comparisons leave them out", ids.len(), ids.join(", "))
        })
        .collect();
    Ok(Report { models, prompts: scores.into_values().flat_map(|m| m.into_values()).collect(), paired, refused })
}

/// `model` against `against` on one measure, from each prompt's (model's, against's) values.
pub fn paired_row(model: &str, against: &str, measure: &str, pairs: &[(f64, f64)], seed: u64) -> PairedComparison {
    let diffs: Vec<f64> = pairs.iter().map(|(x, y)| x - y).collect();
    let wins: Vec<f64> = pairs.iter().map(|&(x, y)| win(x, y)).collect();
    let ((mean_diff, diff_low, diff_high), (win_rate, win_low, win_high)) = (bootstrap(&diffs, 2000, seed), bootstrap(&wins, 2000, seed));
    PairedComparison {
        model: model.into(),
        against: against.into(),
        measure: measure.into(),
        prompts: pairs.len() as u32,
        mean_diff,
        diff_low,
        diff_high,
        win_rate,
        win_low,
        win_high,
        p_value: sign_flip_p_value(&diffs, 20_000, seed),
    }
}

/// The paired comparisons as a markdown table.
pub fn paired_markdown(paired: &[PairedComparison]) -> String {
    let mut out = String::from(
        "| model - against | measure | prompts | mean difference [95% CI] | paired win rate [95% CI] | p (sign-flip) |\n|---|---|---|---|---|---|\n",
    );
    for c in paired {
        out += &format!(
            "| {} - {} | {} | {} | {:+.4} [{:+.4}, {:+.4}] | {:.1}% [{:.1}, {:.1}] | {} |\n",
            c.model,
            c.against,
            c.measure,
            c.prompts,
            c.mean_diff,
            c.diff_low,
            c.diff_high,
            100.0 * c.win_rate,
            100.0 * c.win_low,
            100.0 * c.win_high,
            p_text(c.p_value)
        );
    }
    out
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
            (Some(w), Some(l), Some(h)) => format!("{:.1}% [{:.1}, {:.1}]", 100.0 * w, 100.0 * l, 100.0 * h),
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
                .x_label_formatter(&|x| match x {
                    SegmentValue::CenterOf(i) => names.get(*i).cloned().unwrap_or_default(),
                    _ => String::new(),
                })
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
                .y_label_formatter(&|y| match y {
                    SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
                    _ => String::new(),
                })
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

/// The paired reward comparison of each model of a sweep (`(value, model)`,
/// e.g. alpha_max = 0.1 for `alpha0.1`): its first `--compare` row, in the
/// order of the values. A model without one is named.
pub fn sweep_points<'a>(sweep: &[(String, f64)], paired: &'a [PairedComparison]) -> Result<Vec<(f64, &'a PairedComparison)>> {
    let mut points = sweep
        .iter()
        .map(|(model, x)| {
            let row = paired.iter().find(|c| &c.model == model && c.measure == "reward");
            row.map(|c| (*x, c)).ok_or_else(|| anyhow!("--sweep {model}={x}: no paired comparison of {model}; add --compare {model}:AGAINST"))
        })
        .collect::<Result<Vec<_>>>()?;
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(points)
}

/// The sweep as a table: value, comparison, mean difference with its interval, p.
pub fn sweep_markdown(label: &str, points: &[(f64, &PairedComparison)]) -> String {
    let mut out = format!("| {label} | model - against | prompts | mean reward difference [95% CI] | p (sign-flip) |\n|---|---|---|---|---|\n");
    for (x, c) in points {
        out += &format!(
            "| {x} | {} - {} | {} | {:+.4} [{:+.4}, {:+.4}] | {} |\n",
            c.model,
            c.against,
            c.prompts,
            c.mean_diff,
            c.diff_low,
            c.diff_high,
            p_text(c.p_value)
        );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rouge_l_is_the_lcs_f1_over_words() {
        assert_eq!(rouge_l("The capital is Paris", "Paris is the capital"), 0.5);
        assert!((rouge_l("the cat sat on the mat", "the cat is on the mat") - 5.0 / 6.0).abs() < 1e-12);
        assert_eq!(rouge_l("", "x"), 0.0);
    }

    #[test]
    fn win_rates_compare_per_prompt_means_with_the_baseline() {
        use wrpo_common::{prompts::Split, Message, Role};
        let prompts: Vec<Prompt> = (0..4)
            .map(|i| Prompt {
                prompt_id: format!("p{i}"),
                messages: vec![Message::new(Role::User, "q")],
                reference: Some(if i < 2 { format!("{}", i + 1) } else { "the answer".into() }),
                split: Split::Eval,
                origin: "t".into(),
            })
            .collect();
        let row = |p: usize, model: &str, k: u32, reward: f64, response: &str| ScoredSample {
            prompt_id: format!("p{p}"),
            model: model.into(),
            sample_index: k,
            response: response.into(),
            response_tokens: 1,
            finish_reason: FinishReason::Stop,
            reward,
            reward_model: "r".into(),
        };
        let mut scored = vec![];
        for p in 0..4 {
            scored.push(row(p, "base", 0, 0.5, "no"));
            // Better on p0, p1 and p2, equal on p3.
            scored.push(row(p, "new", 0, if p < 3 { 0.9 } else { 0.5 }, if p == 0 { "1" } else { "the answer" }));
        }
        let rows = report(&prompts, &scored, "base", &[], 1).unwrap().models;
        let new = rows.iter().find(|r| r.model == "new").unwrap();
        assert_eq!(new.win_rate, Some(3.5 / 4.0));
        assert_eq!((new.verifier_accuracy, new.verifier_prompts), (Some(0.5), 2));
        assert!((new.rouge_l - 0.75).abs() < 1e-12, "{}", new.rouge_l);
        let base = rows.iter().find(|r| r.model == "base").unwrap();
        assert_eq!(base.win_rate, None);
        assert!(markdown(&rows, "base", "r").contains("| new | 0.800"));
        assert!(report(&prompts, &scored, "nobody", &[], 1).err().unwrap().to_string().contains("'nobody'"));
    }

    fn prompts(n: usize) -> Vec<Prompt> {
        use wrpo_common::{prompts::Split, Message, Role};
        (0..n)
            .map(|i| Prompt {
                prompt_id: format!("p{i}"),
                messages: vec![Message::new(Role::User, "q")],
                reference: None,
                split: Split::Eval,
                origin: "t".into(),
            })
            .collect()
    }

    fn sample(p: usize, model: &str, k: u32, reward: f64) -> ScoredSample {
        ScoredSample {
            prompt_id: format!("p{p}"),
            model: model.into(),
            sample_index: k,
            response: "r".into(),
            response_tokens: 1,
            finish_reason: wrpo_common::samples::FinishReason::Stop,
            reward,
            reward_model: "r".into(),
        }
    }

    /// Per-prompt means first (two samples each), then their differences:
    /// hand-computed mean difference and win rate, and a bootstrap interval
    /// that collapses when every difference is the same.
    #[test]
    fn paired_differences_and_win_rates_are_per_prompt() {
        // a - b per prompt: +0.1, +0.2, -0.1, 0.
        let (a, b) = ([0.6, 0.7, 0.4, 0.5], [0.5, 0.5, 0.5, 0.5]);
        let mut scored = vec![];
        for p in 0..4 {
            scored.extend([sample(p, "a", 0, a[p] - 0.1), sample(p, "a", 1, a[p] + 0.1), sample(p, "b", 0, b[p]), sample(p, "b", 1, b[p])]);
        }
        let r = report(&prompts(4), &scored, "b", &[("a".into(), "b".into())], 1).unwrap();
        let c = &r.paired[0];
        assert_eq!((c.model.as_str(), c.against.as_str(), c.measure.as_str(), c.prompts), ("a", "b", "reward", 4));
        assert!((c.mean_diff - 0.05).abs() < 1e-12 && c.diff_low < c.mean_diff && c.mean_diff < c.diff_high);
        assert_eq!(c.win_rate, (1.0 + 1.0 + 0.0 + 0.5) / 4.0);
        // Hand-enumerated: of the 16 sign patterns of (0.1, 0.2, -0.1, 0), 12 reach |sum| >= 0.2.
        assert_eq!(c.p_value, 12.0 / 16.0);
        assert_eq!(r.prompts.iter().filter(|p| p.model == "a").map(|p| p.samples).sum::<u32>(), 8);
        // Every prompt 0.2 better: the interval is the point, and the win rate 1.
        let shifted: Vec<ScoredSample> = (0..4).flat_map(|p| [sample(p, "a", 0, 0.7), sample(p, "b", 0, 0.5)]).collect();
        let c = &report(&prompts(4), &shifted, "b", &[], 1).unwrap().paired[0];
        assert!((c.diff_low - 0.2).abs() < 1e-12 && (c.diff_high - 0.2).abs() < 1e-12 && c.win_rate == 1.0 && c.win_low == 1.0);
    }

    /// Exact enumeration on a small case, and the Monte Carlo estimate
    /// against a brute-force enumeration of all 2^18 patterns on a larger one.
    #[test]
    fn sign_flip_p_values_match_exact_enumeration() {
        // (1, 2, 3, -1): |sum| 5 is reached by +-(1+2+3+1) and the two patterns flipping a single 1.
        assert_eq!(sign_flip_p_value(&[1.0, 2.0, 3.0, -1.0], 0, 1), 6.0 / 16.0);
        assert_eq!(sign_flip_p_value(&[1.0; 10], 0, 1), 2.0 / 1024.0);
        let d: Vec<f64> = (0..18).map(|i| ((i * 7 % 11) as f64 - 4.0) / 10.0).collect();
        let observed = d.iter().sum::<f64>().abs();
        let exact = (0..1u32 << 18)
            .filter(|bits| d.iter().enumerate().map(|(i, x)| if bits >> i & 1 == 1 { -x } else { *x }).sum::<f64>().abs() >= observed - 1e-9)
            .count() as f64
            / (1u32 << 18) as f64;
        let estimate = sign_flip_p_value(&d, 20_000, 3);
        assert!((estimate - exact).abs() < 0.01, "Monte Carlo {estimate} vs exact {exact}");
        assert!(exact > 0.01 && exact < 0.99, "a case that tests something: {exact}");
    }

    /// Aliases NAME@SEED pool into NAME (per prompt, the mean over seeds),
    /// and models that answered different prompts are not compared.
    #[test]
    fn seeds_pool_per_prompt_and_different_prompt_sets_are_refused() {
        let mut scored = vec![];
        for p in 0..3 {
            scored.extend([sample(p, "base", 0, 0.5), sample(p, "wrpo@1", 0, 0.6), sample(p, "wrpo@2", 0, 0.8 + p as f64 / 10.0)]);
        }
        let r = report(&prompts(3), &scored, "base", &[("wrpo".into(), "base".into())], 1).unwrap();
        let pooled: Vec<&PromptScore> = r.prompts.iter().filter(|p| p.model == "wrpo").collect();
        assert_eq!(pooled.len(), 3);
        assert!(pooled.iter().all(|p| p.seeds == 2 && p.samples == 2));
        assert!((pooled[1].reward_mean - (0.6 + 0.9) / 2.0).abs() < 1e-12);
        assert!((r.paired[0].mean_diff - ((0.2 + 0.25 + 0.3) / 3.0)).abs() < 1e-12);
        assert!(r.models.iter().any(|m| m.model == "wrpo@1") && r.models.iter().any(|m| m.model == "wrpo"));
        // "new" did not answer p2.
        let mut partial = scored.clone();
        partial.extend([sample(0, "new", 0, 0.9), sample(1, "new", 0, 0.9)]);
        let err = report(&prompts(3), &partial, "base", &[("new".into(), "base".into())], 1).err().unwrap().to_string();
        assert!(err.contains("'new' answered 2 prompts and 'base' 3") && err.contains("prompt p2"), "{err}");
        // Nor do seeds of one pool on different prompts.
        let mut uneven = scored.clone();
        uneven.retain(|s| !(s.model == "wrpo@2" && s.prompt_id == "p0"));
        let err = report(&prompts(3), &uneven, "base", &[], 1).err().unwrap().to_string();
        assert!(err.contains("'wrpo@1' answered 3 prompts and 'wrpo@2' 2"), "{err}");
        // A seed of a pool is no baseline: the pool would hold it.
        let err = report(&prompts(3), &scored, "wrpo@1", &[], 1).err().unwrap().to_string();
        assert!(err.contains("--baseline wrpo@1") && err.contains("pool as 'wrpo'"), "{err}");
        report(&prompts(3), &scored, "wrpo", &[], 1).unwrap();
    }

    /// A prompt whose every sample of a model the reward refused is left out
    /// of that model's comparisons (and of its seed's share of a pool), and
    /// said so; a prompt a model never answered still stops the report.
    #[test]
    fn prompts_refused_whole_are_left_out_of_comparisons_not_fatal() {
        let refused = |p: usize, model: &str| ScoredSample {
            finish_reason: wrpo_common::samples::FinishReason::Skipped,
            reward: f64::NAN,
            ..sample(p, model, 1, 0.0)
        };
        let mut scored = vec![];
        for p in 0..3 {
            scored.extend([sample(p, "base", 0, 0.5), sample(p, "wrpo@1", 0, 0.6), sample(p, "wrpo@2", 0, 0.7)]);
        }
        // base: p1 refused whole; wrpo@2: p2 refused whole; wrpo@1: one of two samples of p0 refused.
        let refused_whole = |s: &ScoredSample| (s.model == "base" && s.prompt_id == "p1") || (s.model == "wrpo@2" && s.prompt_id == "p2");
        scored.retain(|s| !refused_whole(s));
        scored.extend([refused(1, "base"), refused(2, "wrpo@2"), refused(0, "wrpo@1")]);
        let r = report(&prompts(3), &scored, "base", &[("wrpo".into(), "base".into())], 1).unwrap();
        let c = &r.paired[0];
        // p0 and p2 only; the pool has wrpo@1 alone on p2.
        assert_eq!(c.prompts, 2);
        assert!((c.mean_diff - ((0.65 - 0.5) + (0.6 - 0.5)) / 2.0).abs() < 1e-12, "{}", c.mean_diff);
        let p2 = r.prompts.iter().find(|p| p.model == "wrpo" && p.prompt_id == "p2").unwrap();
        assert_eq!((p2.seeds, p2.samples), (1, 1));
        assert_eq!(r.refused.len(), 2, "{:?}", r.refused);
        assert!(r.refused[0].starts_with("base: the reward refused every sample of 1 prompt(s) (p1)"), "{:?}", r.refused);
        assert!(r.refused[1].starts_with("wrpo@2:") && r.refused[1].contains("(p2)"), "{:?}", r.refused);
        // A prompt never answered is another prompt set.
        scored.retain(|s| !(s.model == "wrpo@1" && s.prompt_id == "p1"));
        let err = report(&prompts(3), &scored, "base", &[], 1).err().unwrap().to_string();
        assert!(err.contains("'wrpo@1' answered 2 prompts") && err.contains("prompt p1"), "{err}");
    }

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

    #[test]
    fn bootstrap_intervals_bracket_the_mean_and_shrink_with_data() {
        let few: Vec<f64> = (0..10).map(|i| (i % 2) as f64).collect();
        let many: Vec<f64> = (0..1000).map(|i| (i % 2) as f64).collect();
        let (m1, l1, h1) = bootstrap(&few, 2000, 1);
        let (m2, l2, h2) = bootstrap(&many, 2000, 1);
        assert!(l1 < m1 && m1 < h1 && (m1 - 0.5).abs() < 1e-12);
        assert!(h2 - l2 < (h1 - l1) / 3.0, "{l2}..{h2} vs {l1}..{h1}");
        assert_eq!(bootstrap(&few, 2000, 1), (m1, l1, h1), "seeded");
        assert!((m2 - 0.5).abs() < 1e-12);
    }
}
