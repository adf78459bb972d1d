//! `wrpo-score report`: what training bought, on held-out prompts. Per
//! model: the mean reward, the win rate against a baseline model (per
//! prompt, the model's mean reward against the baseline's: win 1, tie 1/2),
//! both with 95% bootstrap intervals over prompts; and two measures the
//! training did not optimise: numeric-verifier accuracy on the prompts
//! whose reference is a number, and ROUGE-L F1 against the reference.

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
};

use anyhow::{anyhow, bail, Result};
use wrpo_common::{prompts::Prompt, report::ModelReport, scored::ScoredSample};
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
    let mut means: Vec<f64> = (0..resamples).map(|_| (0..n).map(|_| values[(rng.next_u64() % n as u64) as usize]).sum::<f64>() / n as f64).collect();
    means.sort_by(f64::total_cmp);
    let at = |q: f64| means[((q * (resamples - 1) as f64).round() as usize).min(resamples - 1)];
    (mean, at(0.025), at(0.975))
}

/// Build the report rows; `baseline` must be one of the scored models.
pub fn report(prompts: &[Prompt], scored: &[ScoredSample], baseline: &str, seed: u64) -> Result<Vec<ModelReport>> {
    let by_id: HashMap<&str, &Prompt> = prompts.iter().map(|p| (p.prompt_id.as_str(), p)).collect();
    // model -> prompt -> samples
    let mut groups: BTreeMap<&str, BTreeMap<&str, Vec<&ScoredSample>>> = BTreeMap::new();
    for s in scored {
        if !by_id.contains_key(s.prompt_id.as_str()) {
            bail!("scored sample (prompt_id {}, model {}) has no prompt in the prompts file", s.prompt_id, s.model);
        }
        groups.entry(&s.model).or_default().entry(&s.prompt_id).or_default().push(s);
    }
    let base = groups
        .get(baseline)
        .ok_or_else(|| anyhow!("the baseline model '{baseline}' has no scored sample; models: {:?}", groups.keys().collect::<Vec<_>>()))?;
    let mean_reward = |v: &[&ScoredSample]| v.iter().map(|s| s.reward).sum::<f64>() / v.len() as f64;
    let mut rows = Vec::new();
    for (model, per_prompt) in &groups {
        let means: Vec<f64> = per_prompt.values().map(|v| mean_reward(v)).collect();
        let (reward_mean, reward_low, reward_high) = bootstrap(&means, 2000, seed);
        let wins: Vec<f64> = per_prompt
            .iter()
            .filter_map(|(id, v)| base.get(id).map(|b| (mean_reward(v), mean_reward(b))))
            .map(|(m, b)| {
                if m > b {
                    1.0
                } else if m == b {
                    0.5
                } else {
                    0.0
                }
            })
            .collect();
        let win = (*model != baseline && !wins.is_empty()).then(|| bootstrap(&wins, 2000, seed));
        let (mut correct, mut checkable, mut rouge, mut samples) = (0.0, 0u32, 0.0, 0u32);
        for (id, v) in per_prompt {
            let reference = by_id[id].reference.as_deref();
            let target = reference.and_then(last_number);
            if let Some(t) = target {
                checkable += 1;
                correct += v.iter().filter(|s| last_number(&s.response).is_some_and(|x| (x - t).abs() <= 1e-6 * t.abs().max(1.0))).count() as f64
                    / v.len() as f64;
            }
            for s in v {
                rouge += reference.map_or(0.0, |r| rouge_l(&s.response, r));
                samples += 1;
            }
        }
        rows.push(ModelReport {
            model: model.to_string(),
            prompts: per_prompt.len() as u32,
            samples,
            reward_mean,
            reward_low,
            reward_high,
            win_rate: win.map(|w| w.0),
            win_low: win.map(|w| w.1),
            win_high: win.map(|w| w.2),
            verifier_accuracy: (checkable > 0).then(|| correct / checkable as f64),
            verifier_prompts: checkable,
            rouge_l: rouge / samples.max(1) as f64,
        });
    }
    Ok(rows)
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

/// A bar chart of mean reward and win rate with their intervals.
pub fn chart(rows: &[ModelReport], path: &Path) -> Result<()> {
    use plotters::prelude::*;
    let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    let tmp = path.with_file_name(format!(".{}.tmp.png", path.file_stem().unwrap_or_default().to_string_lossy()));
    {
        let root = BitMapBackend::new(&tmp, (1200, 500)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("chart: {e}"))?;
        let (left, right) = root.split_horizontally(600);
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
                .build_cartesian_2d((0..n).into_segmented(), low..top)
                .map_err(|e| anyhow!("chart: {e}"))?;
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_label_formatter(&|x| match x {
                    SegmentValue::CenterOf(i) => names.get(*i).cloned().unwrap_or_default(),
                    _ => String::new(),
                })
                .label_style(("sans-serif", 15))
                .draw()
                .map_err(|e| anyhow!("chart: {e}"))?;
            for (i, v) in values.iter().enumerate() {
                let Some((mean, lo, hi)) = *v else { continue };
                let color = Palette99::pick(i).to_rgba();
                chart
                    .draw_series([Rectangle::new([(SegmentValue::Exact(i), 0.0), (SegmentValue::Exact(i + 1), mean)], color.filled())])
                    .map_err(|e| anyhow!("chart: {e}"))?;
                chart
                    .draw_series([PathElement::new(vec![(SegmentValue::CenterOf(i), lo), (SegmentValue::CenterOf(i), hi)], BLACK.stroke_width(2))])
                    .map_err(|e| anyhow!("chart: {e}"))?;
            }
        }
        root.present().map_err(|e| anyhow!("cannot write {}: {e}", tmp.display()))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| anyhow!("cannot move the chart to {}: {e}", path.display()))
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
        use wrpo_common::{prompts::Split, samples::FinishReason, Message, Role};
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
        let rows = report(&prompts, &scored, "base", 1).unwrap();
        let new = rows.iter().find(|r| r.model == "new").unwrap();
        assert_eq!(new.win_rate, Some(3.5 / 4.0));
        assert_eq!((new.verifier_accuracy, new.verifier_prompts), (Some(0.5), 2));
        assert!((new.rouge_l - 0.75).abs() < 1e-12, "{}", new.rouge_l);
        let base = rows.iter().find(|r| r.model == "base").unwrap();
        assert_eq!(base.win_rate, None);
        assert!(markdown(&rows, "base", "r").contains("| new | 0.800"));
        assert!(report(&prompts, &scored, "nobody", 1).unwrap_err().to_string().contains("'nobody'"));
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
