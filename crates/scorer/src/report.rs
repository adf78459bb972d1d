//! `wrpo-score report`: what training bought, on held-out prompts. Per
//! model: the mean reward, the win rate against a baseline model (per
//! prompt, the model's mean reward against the baseline's: win 1, tie 1/2),
//! both with 95% bootstrap intervals over prompts; and two measures the
//! training did not optimise: numeric-verifier accuracy on the prompts
//! whose reference is a number, and ROUGE-L F1 against the reference.
//! The statistics are `stats.rs`'s, the pooling of training seeds
//! `seed_pool.rs`'s; report.md's tables and the charts are drawn in
//! `report/render.rs`.

pub mod render;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use anyhow::{anyhow, bail, Result};
use wrpo_common::{
    eval::{ModelReport, PairedComparison, PromptScore},
    prompts::Prompt,
    samples::FinishReason,
    scored::ScoredSample,
};

use crate::{
    reward::last_number,
    seed_pool::{pool_prompts, seed_groups, seed_pools},
    stats::{bootstrap, paired_row, win},
};

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
    for (name, seeds) in seed_pools(out.keys())? {
        let others: Vec<(&str, &BTreeMap<String, PromptScore>)> = seeds[1..].iter().map(|m| (m.as_str(), &out[m])).collect();
        same_prompts((&seeds[0], &out[&seeds[0]]), &others, &refused)?;
        let per_seed: Vec<&BTreeMap<String, PromptScore>> = seeds.iter().map(|s| &out[s]).collect();
        let pooled = pool_prompts(&per_seed, |id, rows| {
            let k = rows.len() as f64;
            let mean = |f: Measure| rows.iter().map(|r| f(r)).sum::<Option<f64>>().map(|s| s / k);
            Some(PromptScore {
                model: name.clone(),
                prompt_id: id.clone(),
                samples: rows.iter().map(|r| r.samples).sum(),
                seeds: rows.len() as u32,
                reward_mean: rows.iter().map(|r| r.reward_mean).sum::<f64>() / k,
                numeric_accuracy: mean(|r| r.numeric_accuracy),
                rouge_l: mean(|r| r.rouge_l),
            })
        });
        let all_refused: BTreeSet<String> =
            seeds.iter().filter_map(|s| refused.get(s)).flatten().filter(|id| !pooled.contains_key(*id)).cloned().collect();
        if !all_refused.is_empty() {
            refused.insert(name.clone(), all_refused);
        }
        out.insert(name, pooled);
    }
    Ok((out, refused))
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
        if let Some(seeds) = seed_groups(scores.keys()).get(name).filter(|seeds| seeds.len() > 1) {
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

#[cfg(test)]
mod tests {
    use super::{render::markdown, *};

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
}
