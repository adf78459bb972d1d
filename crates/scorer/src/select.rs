//! Build the SFT set and the preference pairs from scored samples
//! (docs/method.md, data construction).

use std::{
    cmp::Ordering,
    collections::{BTreeMap, HashMap, HashSet},
    path::Path,
};

use serde::Serialize;
use wrpo_common::{
    hash::uniform_draw,
    pairs::Pair,
    prompts::{Prompt, Split},
    samples::FinishReason,
    scored::ScoredSample,
    sft::SftExample,
    Message,
};

/// Scored samples grouped by prompt, skipped samples and rewards that are
/// not numbers (which no ordering can rank) left out.
pub struct ByPrompt<'a>(HashMap<&'a str, Vec<&'a ScoredSample>>);

impl<'a> ByPrompt<'a> {
    pub fn new(scores: &'a [ScoredSample]) -> Self {
        let mut map: HashMap<&str, Vec<&ScoredSample>> = HashMap::new();
        for s in scores.iter().filter(|s| s.finish_reason != FinishReason::Skipped && !s.reward.is_nan()) {
            map.entry(&s.prompt_id).or_default().push(s);
        }
        ByPrompt(map)
    }

    pub fn get(&self, prompt_id: &str) -> &[&'a ScoredSample] {
        self.0.get(prompt_id).map_or(&[], Vec::as_slice)
    }
}

/// Refuse scores that cannot be compared: rows from more than one reward
/// model (their scales differ), or a (prompt_id, model, sample_index) twice.
pub fn check_scores(sets: &[(&Path, &[ScoredSample])]) -> anyhow::Result<()> {
    let mut first: Option<(&Path, &str)> = None;
    for (path, rows) in sets {
        let mut seen = HashSet::new();
        for r in rows.iter() {
            match first {
                None => first = Some((path, &r.reward_model)),
                Some((p, m)) if m != r.reward_model => anyhow::bail!(
                    "{} holds rewards of '{}' and {} of '{m}': rewards of different reward models cannot be compared; score both with one",
                    path.display(),
                    r.reward_model,
                    p.display()
                ),
                _ => {}
            }
            if !seen.insert((&r.prompt_id, &r.model, r.sample_index)) {
                anyhow::bail!(
                    "{}: sample (prompt_id {}, model {}, sample_index {}) is scored twice",
                    path.display(),
                    r.prompt_id,
                    r.model,
                    r.sample_index
                );
            }
        }
    }
    Ok(())
}

/// Order by reward; equal rewards by (model, sample_index), so that the best
/// and worst responses do not depend on the order of the input files.
fn by_reward(a: &&ScoredSample, b: &&ScoredSample) -> Ordering {
    a.reward.total_cmp(&b.reward).then_with(|| b.model.cmp(&a.model)).then_with(|| b.sample_index.cmp(&a.sample_index))
}

/// The samples that may be chosen or rejected. A response cut off by the
/// token limit is neither unless `allow_truncated`: were it only barred from
/// being chosen, cut-off answers would always lose and the pairs would teach
/// "shorter wins".
fn eligible<'a>(samples: &[&'a ScoredSample], allow_truncated: bool) -> Vec<&'a ScoredSample> {
    samples.iter().copied().filter(|s| allow_truncated || s.finish_reason != FinishReason::Length).collect()
}

/// Every response the same text: no preference can be learned from them.
fn all_identical(samples: &[&ScoredSample]) -> bool {
    samples.iter().all(|s| s.response == samples[0].response)
}

fn best<'a>(samples: &[&'a ScoredSample]) -> Option<&'a ScoredSample> {
    samples.iter().copied().max_by(by_reward)
}

fn worst<'a>(samples: &[&'a ScoredSample]) -> Option<&'a ScoredSample> {
    samples.iter().copied().min_by(by_reward)
}

/// Share of each model's scored samples that the token limit cut off, with
/// a warning on standard error for every model above `warn_above`: those
/// samples are set aside by selection, and many of them mean the sampler's
/// --max-new-tokens is too small for the answers.
pub fn truncated_shares(sets: &[&[ScoredSample]], warn_above: f64, allow_truncated: bool) -> BTreeMap<String, f64> {
    let mut counts: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for s in sets.iter().flat_map(|rows| rows.iter()).filter(|s| s.finish_reason != FinishReason::Skipped) {
        let c = counts.entry(s.model.clone()).or_default();
        c.0 += usize::from(s.finish_reason == FinishReason::Length);
        c.1 += 1;
    }
    let shares: BTreeMap<String, f64> = counts.into_iter().map(|(m, (cut, all))| (m, cut as f64 / all as f64)).collect();
    let fate = if allow_truncated {
        "--allow-truncated lets them be chosen and rejected"
    } else {
        "they are neither chosen nor rejected (or pass --allow-truncated)"
    };
    for (model, share) in shares.iter().filter(|(_, &share)| share > warn_above) {
        eprintln!(
            "warning: {:.0}% of {model}'s samples were cut off by the token limit (raise --max-new-tokens when sampling); {fate}",
            100.0 * share
        );
    }
    shares
}

/// How much the source brings over some pairs: the shares where y_ws
/// outscores y_wt, ties with it and falls below it, the win rate with a tie
/// as half a win (as `report` counts one), and the mean reward gap
/// y_ws - y_wt. WRPO's source term can only teach where this gap is positive.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SourceGain {
    pub pairs: usize,
    pub y_ws_beats_y_wt: f64,
    pub ties: f64,
    pub y_wt_beats_y_ws: f64,
    pub win_rate: f64,
    pub mean_gap: f64,
}

impl SourceGain {
    pub fn of<'a>(pairs: impl IntoIterator<Item = &'a Pair>) -> SourceGain {
        let (mut n, mut wins, mut ties, mut gap) = (0usize, 0usize, 0usize, 0.0);
        for p in pairs {
            n += 1;
            wins += usize::from(p.y_ws_reward > p.y_wt_reward);
            ties += usize::from(p.y_ws_reward == p.y_wt_reward);
            gap += p.y_ws_reward - p.y_wt_reward;
        }
        let share = |k: usize| k as f64 / n as f64;
        SourceGain {
            pairs: n,
            y_ws_beats_y_wt: share(wins),
            ties: share(ties),
            y_wt_beats_y_ws: share(n - wins - ties),
            win_rate: (wins as f64 + 0.5 * ties as f64) / n as f64,
            mean_gap: gap / n as f64,
        }
    }
}

/// [`SourceGain`] per source model of y_ws, and over all pairs as `all`.
pub fn source_gain(pairs: &[Pair]) -> serde_json::Value {
    let mut by: BTreeMap<&str, Vec<&Pair>> = BTreeMap::new();
    for p in pairs {
        by.entry(&p.y_ws_model).or_default().push(p);
    }
    let mut gains: BTreeMap<&str, SourceGain> = by.into_iter().map(|(m, ps)| (m, SourceGain::of(ps))).collect();
    if !pairs.is_empty() {
        gains.insert("all", SourceGain::of(pairs));
    }
    serde_json::to_value(gains).expect("numbers and names serialise")
}

/// How many of `models` name each model: which sources gave y_ws.
fn counts<'a>(models: impl Iterator<Item = &'a str>) -> BTreeMap<&'a str, usize> {
    let mut by = BTreeMap::new();
    for m in models {
        *by.entry(m).or_default() += 1;
    }
    by
}

/// `sft-set`'s summary (OUT.summary.json): the split's sizes, the prompts
/// left out and why, which sources gave y_ws, and the truncated shares.
pub fn sft_summary(split: &SftSplit, truncated: &BTreeMap<String, f64>) -> serde_json::Value {
    serde_json::json!({
        "sft_examples": split.sft.len(), "preference_prompts": split.preference.len(),
        "dropped": {"no_scored_source_sample": split.unscored, "only_truncated": split.only_truncated},
        "y_ws_sources": counts(split.sft.iter().map(|e| e.source_model.as_str())),
        "truncated_share": truncated,
    })
}

/// `pairs`' summary (OUT.summary.json): pairs and prompts, the prompts
/// dropped and why, which sources gave y_ws, the truncated shares and
/// [`source_gain`].
pub fn pairs_summary(prompts: usize, pairs: &[Pair], dropped: &Dropped, truncated: &BTreeMap<String, f64>) -> serde_json::Value {
    serde_json::json!({
        "pairs": pairs.len(), "prompts": prompts, "dropped": dropped,
        "y_ws_sources": counts(pairs.iter().map(|p| p.y_ws_model.as_str())),
        "truncated_share": truncated, "source_gain": source_gain(pairs),
    })
}

/// The train prompts divided between the SFT stage and preference training.
#[derive(Debug, Default)]
pub struct SftSplit {
    /// (x, y_ws) for the SFT part.
    pub sft: Vec<SftExample>,
    /// The preference part: the prompts the SFT model is sampled on.
    pub preference: Vec<Prompt>,
    /// Train prompts without any scored source sample, left out of both.
    pub unscored: usize,
    /// Train prompts whose source samples were all cut off by the token
    /// limit (not eligible as y_ws unless allowed), left out of both.
    pub only_truncated: usize,
}

/// Split the train prompts at random (fixed by `seed` and each prompt_id) into
/// an SFT part of about `sft_fraction` and a preference part, and pick y_ws,
/// the best source response over all models and samples, for the SFT part.
pub fn sft_split(prompts: &[Prompt], source: &ByPrompt, sft_fraction: f64, seed: u64, allow_truncated: bool) -> SftSplit {
    let mut out = SftSplit::default();
    for p in prompts.iter().filter(|p| p.split == Split::Train) {
        let samples = source.get(&p.prompt_id);
        let Some(y_ws) = best(&eligible(samples, allow_truncated)) else {
            *(if samples.is_empty() { &mut out.unscored } else { &mut out.only_truncated }) += 1;
            continue;
        };
        if uniform_draw(seed, "sft", &p.prompt_id) < sft_fraction {
            out.sft.push(SftExample {
                prompt_id: p.prompt_id.clone(),
                messages: p.messages.clone(),
                response: y_ws.response.clone(),
                source_model: y_ws.model.clone(),
                source_sample_index: y_ws.sample_index,
                reward: Some(y_ws.reward),
            });
        } else {
            out.preference.push(p.clone());
        }
    }
    out
}

/// The training set of a stronger source: the SFT part's prompts (from
/// `sft-set`) with their reference answers as responses. The source learns
/// only from prompts that neither preference training nor any held-out
/// split sees: a prompt that is not a train prompt, that is also a
/// preference prompt, or whose conversation equals one of those (under
/// another id) is refused, and so is one without a reference.
pub fn reference_sft(prompts: &[Prompt], sft: &[SftExample], preference: &[Prompt]) -> anyhow::Result<Vec<SftExample>> {
    let by_id: HashMap<&str, &Prompt> = prompts.iter().map(|p| (p.prompt_id.as_str(), p)).collect();
    // Every conversation the source must not learn from, with where it is.
    let mut seen: HashMap<&[Message], String> = HashMap::new();
    for p in preference {
        seen.insert(&p.messages, format!("preference prompt {}", p.prompt_id));
    }
    for p in prompts.iter().filter(|p| p.split != Split::Train) {
        seen.insert(&p.messages, format!("{:?} prompt {}", p.split, p.prompt_id).to_lowercase());
    }
    let mut out = Vec::with_capacity(sft.len());
    for ex in sft {
        let Some(p) = by_id.get(ex.prompt_id.as_str()) else {
            anyhow::bail!("SFT example {} has no prompt in the prompts file", ex.prompt_id);
        };
        if p.split != Split::Train {
            anyhow::bail!("SFT example {} is a {:?} prompt: a source may learn only from train prompts", ex.prompt_id, p.split);
        }
        if let Some(other) = seen.get(p.messages.as_slice()) {
            anyhow::bail!(
                "SFT example {} is the same conversation as {other}: the source's training prompts must be disjoint from them",
                ex.prompt_id
            );
        }
        let Some(reference) = &p.reference else {
            anyhow::bail!("prompt {} has no reference answer to train the source on", ex.prompt_id);
        };
        out.push(SftExample {
            prompt_id: ex.prompt_id.clone(),
            messages: p.messages.clone(),
            response: reference.clone(),
            source_model: "reference".into(),
            source_sample_index: 0,
            // No reward model judged the reference.
            reward: None,
        });
    }
    Ok(out)
}

/// How the preferred and rejected responses are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// WRPO: y_ws = best source response; y_wt / y_l = best / worst response
    /// of the target (Target-SFT) samples.
    Wrpo,
    /// FuseChat-3.0: best and worst response of the same source model, kept
    /// when their reward gap lies in [min_gap, max_gap]; of several sources the
    /// one with the best chosen response. y_wt is set to y_ws, so the WRPO loss
    /// is plain DPO on (y_ws, y_l) for any alpha.
    Fusechat,
}

#[derive(Clone, Debug, Serialize)]
pub struct PairOptions {
    pub strategy: Strategy,
    /// Let a response cut off by the token limit be y_ws, y_wt or y_l (by
    /// default it is none of them).
    pub allow_truncated: bool,
    pub min_gap: f64,
    pub max_gap: f64,
    /// wrpo: y_ws is the best of only the first K eligible source samples of
    /// a prompt (by sample_index, then model): a weaker source from the same
    /// samples, K = 1 being a single draw. None: the best of all.
    pub source_best_of: Option<usize>,
}

/// Why prompts produced no pair.
#[derive(Debug, Default, PartialEq, Serialize)]
pub struct Dropped {
    pub no_source_sample: usize,
    pub fewer_than_two_samples: usize,
    pub all_identical: usize,
    pub best_worst_tie: usize,
    pub gap_out_of_band: usize,
    /// Too few samples were left once those cut off by the token limit were
    /// set aside: no source sample, or fewer than two target samples (or
    /// two of one source model, for FuseChat).
    pub only_truncated: usize,
}

pub fn make_pairs(prompts: &[Prompt], source: &ByPrompt, target: &ByPrompt, opts: &PairOptions) -> (Vec<Pair>, Dropped) {
    let mut pairs = Vec::new();
    let mut dropped = Dropped::default();
    for p in prompts {
        let chosen = match opts.strategy {
            Strategy::Wrpo => wrpo_triple(source.get(&p.prompt_id), target.get(&p.prompt_id), opts, &mut dropped),
            Strategy::Fusechat => fusechat_pair(source.get(&p.prompt_id), opts, &mut dropped),
        };
        if let Some((y_ws, y_wt, y_l)) = chosen {
            pairs.push(Pair {
                prompt_id: p.prompt_id.clone(),
                messages: p.messages.clone(),
                y_ws: y_ws.response.clone(),
                y_ws_model: y_ws.model.clone(),
                y_ws_sample_index: y_ws.sample_index,
                y_ws_reward: y_ws.reward,
                y_wt: y_wt.response.clone(),
                y_wt_model: y_wt.model.clone(),
                y_wt_sample_index: y_wt.sample_index,
                y_wt_reward: y_wt.reward,
                y_l: y_l.response.clone(),
                y_l_model: y_l.model.clone(),
                y_l_sample_index: y_l.sample_index,
                y_l_reward: y_l.reward,
                ref_logp_y_ws: None,
                ref_logp_y_wt: None,
                ref_logp_y_l: None,
                ref_tokens_y_ws: None,
                ref_tokens_y_wt: None,
                ref_tokens_y_l: None,
            });
        }
    }
    (pairs, dropped)
}

type Triple<'a> = (&'a ScoredSample, &'a ScoredSample, &'a ScoredSample);

fn wrpo_triple<'a>(source: &[&'a ScoredSample], target: &[&'a ScoredSample], opts: &PairOptions, dropped: &mut Dropped) -> Option<Triple<'a>> {
    let allow_truncated = opts.allow_truncated;
    if source.is_empty() {
        dropped.no_source_sample += 1;
        return None;
    }
    if target.len() < 2 {
        dropped.fewer_than_two_samples += 1;
        return None;
    }
    if all_identical(target) {
        dropped.all_identical += 1;
        return None;
    }
    let (mut source, target) = (eligible(source, allow_truncated), eligible(target, allow_truncated));
    if let Some(k) = opts.source_best_of {
        source.sort_by(|a, b| a.sample_index.cmp(&b.sample_index).then_with(|| a.model.cmp(&b.model)));
        source.truncate(k);
    }
    if source.is_empty() || target.len() < 2 {
        dropped.only_truncated += 1;
        return None;
    }
    if all_identical(&target) {
        dropped.all_identical += 1;
        return None;
    }
    let (y_ws, y_wt, y_l) = (best(&source)?, best(&target)?, worst(&target)?);
    if y_wt.reward == y_l.reward {
        dropped.best_worst_tie += 1;
        return None;
    }
    Some((y_ws, y_wt, y_l))
}

fn fusechat_pair<'a>(source: &[&'a ScoredSample], opts: &PairOptions, dropped: &mut Dropped) -> Option<Triple<'a>> {
    if source.is_empty() {
        dropped.no_source_sample += 1;
        return None;
    }
    let mut by_model: HashMap<&str, Vec<&ScoredSample>> = HashMap::new();
    for s in source {
        by_model.entry(&s.model).or_default().push(s);
    }
    let mut candidates = Vec::new();
    let (mut few, mut identical, mut truncated, mut tie) = (true, true, true, true);
    for samples in by_model.values().filter(|s| s.len() >= 2) {
        few = false;
        if all_identical(samples) {
            continue;
        }
        identical = false;
        let samples = eligible(samples, opts.allow_truncated);
        if samples.len() < 2 || all_identical(&samples) {
            continue;
        }
        truncated = false;
        let (Some(w), Some(l)) = (best(&samples), worst(&samples)) else { continue };
        if w.reward == l.reward {
            continue;
        }
        tie = false;
        let gap = w.reward - l.reward;
        if (opts.min_gap..=opts.max_gap).contains(&gap) {
            candidates.push((w, l));
        }
    }
    let chosen = candidates.into_iter().max_by(|a, b| by_reward(&a.0, &b.0));
    if chosen.is_none() {
        let counter = if few {
            &mut dropped.fewer_than_two_samples
        } else if identical {
            &mut dropped.all_identical
        } else if truncated {
            &mut dropped.only_truncated
        } else if tie {
            &mut dropped.best_worst_tie
        } else {
            &mut dropped.gap_out_of_band
        };
        *counter += 1;
    }
    chosen.map(|(w, l)| (w, w, l))
}
