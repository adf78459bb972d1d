//! `wrpo-score report --judge`: every model against the baseline by an LLM
//! judge, head to head as AlpacaEval 2 and Arena-Hard measure: per prompt the
//! judge sees the two answers in both orders, and the outcome is MT-Bench's
//! (a verdict that changes with the order is a tie), giving a win rate, a
//! length-adjusted win rate (see `lc_win_rate`: not AlpacaEval 2's GLM) and
//! paired judged comparisons of two models through the common baseline.
//! (Not the preference pairs of training, which `select.rs` builds; the
//! judge's table is drawn by `report/render.rs`.)

use std::collections::{BTreeMap, HashMap};

use anyhow::Result;
use wrpo_common::{
    eval::{JudgeComparison, Judgement, PairedComparison},
    prompts::Prompt,
    samples::FinishReason,
    scored::ScoredSample,
};
use wrpo_remote::Failure;

use crate::{
    judge::{failed, Judge, Preference},
    seed_pool::{pool_prompts, seed_pools},
    stats::{bootstrap, interval_95, paired_row, resample},
};

/// One verdict to ask: the answers of `model` and the baseline to a prompt.
struct Ask<'a> {
    prompt: &'a Prompt,
    model: &'a ScoredSample,
    baseline: &'a ScoredSample,
    model_first: bool,
}

/// What a verdict is about (its `answers_sha256`): the prompt, its reference
/// and the two answers.
fn answers_key(a: &Ask) -> String {
    let reference = a.prompt.reference.as_deref().unwrap_or("");
    wrpo_common::hash::sha256_of(&[a.prompt.prompt_id.as_bytes(), reference.as_bytes(), a.model.response.as_bytes(), a.baseline.response.as_bytes()])
}

/// The verdicts to ask, and those of `cached` to keep: for every model but
/// the baseline and every prompt both answered, the lowest sample index both
/// have (with common random numbers, the same sampling seed), in both orders.
/// A cached verdict is kept when it is about the same answers (by content,
/// not by the paths they were read from) and was readable; the others are
/// asked again. Verdicts against other baselines are kept as they are.
fn plan<'a>(prompts: &'a [Prompt], scored: &'a [ScoredSample], baseline: &str, cached: Vec<Judgement>) -> (Vec<Ask<'a>>, Vec<Judgement>) {
    let by_id: HashMap<&str, &Prompt> = prompts.iter().map(|p| (p.prompt_id.as_str(), p)).collect();
    let mut answers: BTreeMap<&str, BTreeMap<&str, BTreeMap<u32, &ScoredSample>>> = BTreeMap::new();
    for s in scored.iter().filter(|s| s.finish_reason != FinishReason::Skipped) {
        answers.entry(&s.model).or_default().entry(&s.prompt_id).or_default().insert(s.sample_index, s);
    }
    let mut candidates = Vec::new();
    if let Some(base) = answers.get(baseline) {
        for (_, per_prompt) in answers.iter().filter(|(m, _)| **m != baseline) {
            for (id, samples) in per_prompt {
                let Some(theirs) = base.get(id) else { continue };
                let Some((index, ours)) = samples.iter().find(|(i, _)| theirs.contains_key(i)) else { continue };
                for model_first in [true, false] {
                    candidates.push(Ask { prompt: by_id[id], model: ours, baseline: theirs[index], model_first });
                }
            }
        }
    }
    // The sample index too: the same text under another index is another sample (another seed), and the
    // verdict's row names its index.
    let key = |prompt_id: &str, model: &str, index: u32, model_first: bool, answers: &str| {
        format!("{prompt_id}\0{model}\0{index}\0{model_first}\0{answers}")
    };
    let current: std::collections::HashSet<String> =
        candidates.iter().map(|a| key(&a.prompt.prompt_id, &a.model.model, a.model.sample_index, a.model_first, &answers_key(a))).collect();
    let (kept, _stale): (Vec<Judgement>, Vec<Judgement>) = cached.into_iter().partition(|j| {
        j.baseline != baseline
            || (j.verdict != "unreadable"
                && j.answers_sha256
                    .as_deref()
                    .is_some_and(|h| current.contains(&key(&j.prompt_id, &j.model, j.sample_index, j.shown_first == "model", h))))
    });
    let done: std::collections::HashSet<(&str, &str, bool)> =
        kept.iter().filter(|j| j.baseline == baseline).map(|j| (j.prompt_id.as_str(), j.model.as_str(), j.shown_first == "model")).collect();
    let asks = candidates.into_iter().filter(|a| !done.contains(&(a.prompt.prompt_id.as_str(), a.model.model.as_str(), a.model_first))).collect();
    (asks, kept)
}

fn ask(judge: &Judge, a: &Ask) -> Result<Judgement> {
    let (first, second) = if a.model_first { (a.model, a.baseline) } else { (a.baseline, a.model) };
    let judged = judge.compare(&a.prompt.messages, &first.response, &second.response, a.prompt.reference.as_deref());
    let (verdict, judgement) = match judged {
        Ok(j) => {
            let verdict = match (j.verdict, a.model_first) {
                (Preference::Tie, _) => "tie",
                (Preference::A, true) | (Preference::B, false) => "model",
                _ => "baseline",
            };
            (verdict, j.judgement)
        }
        Err(Failure::Refused(why)) => ("unreadable", why),
        Err(f) => return Err(failed(&format!("{}/chat/completions", judge.settings.url), f)),
    };
    Ok(Judgement {
        prompt_id: a.prompt.prompt_id.clone(),
        model: a.model.model.clone(),
        baseline: a.baseline.model.clone(),
        sample_index: a.model.sample_index,
        shown_first: if a.model_first { "model" } else { "baseline" }.into(),
        verdict: verdict.into(),
        judgement,
        length_diff: a.model.response.chars().count() as i64 - a.baseline.response.chars().count() as i64,
        answers_sha256: Some(answers_key(a)),
    })
}

/// Verdicts per model: those of `cached`, then the missing ones asked,
/// `save`d after every few so that an interrupted report resumes.
pub fn judge_all(
    judge: &Judge,
    prompts: &[Prompt],
    scored: &[ScoredSample],
    baseline: &str,
    cached: Vec<Judgement>,
    interrupted: &std::sync::atomic::AtomicBool,
    mut save: impl FnMut(&[Judgement]) -> Result<()>,
) -> Result<Vec<Judgement>> {
    if !scored.iter().any(|s| s.model == baseline) {
        let mut models: Vec<&str> = scored.iter().map(|s| s.model.as_str()).collect();
        models.dedup();
        anyhow::bail!("--judge: the baseline '{baseline}' has no scored answer to compare with (models: {models:?}; pooled NAME@SEED models are judged per seed)");
    }
    let before = cached.len();
    let (asks, mut cached) = plan(prompts, scored, baseline, cached);
    if !asks.is_empty() {
        let dropped = before - cached.len();
        let again = if dropped > 0 { format!("; {dropped} asked again: their answers changed, or they could not be read") } else { String::new() };
        eprintln!("judge: {} verdicts to ask ({} kept from an earlier run{again})", asks.len(), cached.len());
    }
    for chunk in asks.chunks(32) {
        let mut failure = None;
        for j in judge.client().in_flight(chunk, |a| ask(judge, a), Result::is_err, |why| Err(anyhow::anyhow!(why))).into_iter().flatten() {
            match j {
                Ok(j) => cached.push(j),
                Err(e) => _ = failure.get_or_insert(e),
            }
        }
        // The verdicts paid for are kept, whatever stopped the run.
        save(&cached)?;
        if let Some(e) = failure {
            return Err(e);
        }
        if interrupted.load(std::sync::atomic::Ordering::SeqCst) {
            anyhow::bail!("interrupted: {} verdicts are kept in judgements.parquet; the same command asks the rest", cached.len());
        }
    }
    Ok(cached)
}

/// One model's per-prompt (outcome, length difference, whether the order changed the verdict).
type Outcomes = BTreeMap<String, (f64, f64, bool)>;

/// Per prompt whose verdicts in both orders could be read, MT-Bench's rule:
/// the model wins (1) or loses (0) when both orders say so, and anything
/// else, a tie in either order or a verdict that changes with the order, is
/// a tie (1/2). A prompt with only one readable order has no outcome (its
/// unreadable verdict is counted), so no verdict stands uncancelled by its
/// mirror.
fn outcomes(judgements: &[&Judgement]) -> Outcomes {
    let mut by_prompt: BTreeMap<&str, Vec<&Judgement>> = BTreeMap::new();
    for j in judgements {
        by_prompt.entry(&j.prompt_id).or_default().push(j);
    }
    by_prompt
        .into_iter()
        .filter_map(|(id, js)| {
            let first = js.iter().find(|j| j.shown_first == "model")?;
            let second = js.iter().find(|j| j.shown_first == "baseline")?;
            let outcome = match (first.verdict.as_str(), second.verdict.as_str()) {
                ("unreadable", _) | (_, "unreadable") => return None,
                ("model", "model") => 1.0,
                ("baseline", "baseline") => 0.0,
                _ => 0.5,
            };
            Some((id.to_string(), (outcome, first.length_diff as f64, first.verdict != second.verdict)))
        })
        .collect()
}

/// P(model wins) at zero length difference: a two-parameter logistic
/// regression of the per-prompt outcome (1/2 for ties) on the length
/// difference in standard deviations, fitted by Newton's method with a weak
/// ridge on the slope (so that lengths that separate wins from losses do not
/// diverge). This is closest to AlpacaEval's `length_controlled_minimal`
/// without its tanh, not AlpacaEval 2's `length_controlled_v1`, which also
/// fits each instruction's difficulty (across its leaderboard's models) and
/// a gamed-baseline term: where length tracks a prompt's difficulty, this
/// fit takes difficulty for a length effect and is off (see the test
/// `length_that_tracks_difficulty_biases_the_two_parameter_fit`).
pub fn lc_win_rate(outcomes: &[f64], length_diffs: &[f64]) -> f64 {
    let n = outcomes.len() as f64;
    let mean = length_diffs.iter().sum::<f64>() / n;
    let sd = (length_diffs.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / n).sqrt();
    let x: Vec<f64> = length_diffs.iter().map(|d| if sd > 0.0 { d / sd } else { 0.0 }).collect();
    let (mut b0, mut b1) = (0.0f64, 0.0f64);
    const RIDGE: f64 = 1.0;
    for _ in 0..50 {
        let (mut g0, mut g1, mut h00, mut h01, mut h11) = (0.0, -RIDGE * b1, 0.0, 0.0, RIDGE);
        for (&y, &xi) in outcomes.iter().zip(&x) {
            let p = 1.0 / (1.0 + (-(b0 + b1 * xi)).exp());
            let w = p * (1.0 - p);
            g0 += y - p;
            g1 += (y - p) * xi;
            h00 += w;
            h01 += w * xi;
            h11 += w * xi * xi;
        }
        let det = h00 * h11 - h01 * h01;
        if det.abs() < 1e-12 {
            break;
        }
        let (d0, d1) = ((h11 * g0 - h01 * g1) / det, (h00 * g1 - h01 * g0) / det);
        b0 += d0.clamp(-5.0, 5.0);
        b1 += d1.clamp(-5.0, 5.0);
        if d0.abs() + d1.abs() < 1e-10 {
            break;
        }
    }
    1.0 / (1.0 + (-b0).exp())
}

/// The models (against `baseline`) none of whose verdicts could be read,
/// with how many there were: `compare` has no row for them, and a report
/// must still say why.
pub fn all_unreadable(judgements: &[Judgement], baseline: &str) -> BTreeMap<String, u32> {
    let mut per_model: BTreeMap<String, (u32, bool)> = BTreeMap::new();
    for j in judgements.iter().filter(|j| j.baseline == baseline) {
        let e = per_model.entry(j.model.clone()).or_insert((0, true));
        e.0 += 1;
        e.1 &= j.verdict == "unreadable";
    }
    per_model.into_iter().filter(|(_, (_, all))| *all).map(|(m, (n, _))| (m, n)).collect()
}

/// Resamples of the length-adjusted win rate's interval (each a fit).
const LC_RESAMPLES: usize = 400;

/// Each model's outcomes against `baseline` with its count of unreadable
/// verdicts, and each pool of training seeds' (NAME for NAME@SEED: on the
/// prompts every seed has an outcome, the mean over seeds of the outcome and
/// the length difference).
fn outcomes_by_model(judgements: &[Judgement], baseline: &str) -> Result<BTreeMap<String, (Outcomes, u32)>> {
    let mut per_model: BTreeMap<&str, Vec<&Judgement>> = BTreeMap::new();
    for j in judgements.iter().filter(|j| j.baseline == baseline) {
        per_model.entry(&j.model).or_default().push(j);
    }
    let mut results: BTreeMap<String, (Outcomes, u32)> =
        per_model.iter().map(|(m, js)| (m.to_string(), (outcomes(js), js.iter().filter(|j| j.verdict == "unreadable").count() as u32))).collect();
    for (name, seeds) in seed_pools(results.keys())? {
        let per_seed: Vec<&Outcomes> = seeds.iter().map(|s| &results[s].0).collect();
        let pooled = pool_prompts(&per_seed, |_, rows| {
            let k = rows.len() as f64;
            (rows.len() == seeds.len())
                .then(|| (rows.iter().map(|r| r.0).sum::<f64>() / k, rows.iter().map(|r| r.1).sum::<f64>() / k, rows.iter().any(|r| r.2)))
        });
        let unreadable = seeds.iter().map(|s| results[s].1).sum();
        results.insert(name, (pooled, unreadable));
    }
    Ok(results)
}

/// Each model's (and each pool of training seeds') comparison with the
/// baseline; a model named NAME beside seeds NAME@SEED is refused, as in the
/// reward table (`seed_pool::seed_pools`).
pub fn compare(judgements: &[Judgement], baseline: &str, judge: &str, seed: u64) -> Result<Vec<JudgeComparison>> {
    Ok(outcomes_by_model(judgements, baseline)?
        .into_iter()
        .filter(|(_, (o, _))| !o.is_empty())
        .map(|(model, (o, unreadable))| {
            let y: Vec<f64> = o.values().map(|r| r.0).collect();
            let x: Vec<f64> = o.values().map(|r| r.1).collect();
            let (win_rate, win_low, win_high) = bootstrap(&y, 2000, seed);
            let mut rng = wrpo_llm::Rng::new(seed);
            let n = y.len();
            let lcs: Vec<f64> = (0..LC_RESAMPLES)
                .map(|_| {
                    let picks: Vec<usize> = resample(&mut rng, n).collect();
                    lc_win_rate(&picks.iter().map(|&i| y[i]).collect::<Vec<_>>(), &picks.iter().map(|&i| x[i]).collect::<Vec<_>>())
                })
                .collect();
            let (lc_low, lc_high) = interval_95(lcs);
            JudgeComparison {
                model,
                baseline: baseline.to_string(),
                judge: judge.to_string(),
                prompts: n as u32,
                wins: y.iter().filter(|&&v| v > 0.5).count() as u32,
                ties: y.iter().filter(|&&v| v == 0.5).count() as u32,
                losses: y.iter().filter(|&&v| v < 0.5).count() as u32,
                unreadable,
                position_splits: o.values().filter(|r| r.2).count() as u32,
                win_rate,
                win_low,
                win_high,
                lc_win_rate: lc_win_rate(&y, &x),
                lc_low,
                lc_high,
            }
        })
        .collect())
}

/// Paired judged comparisons, one per `compare` pair MODEL:AGAINST where
/// neither is the baseline (those are `compare`'s rows): on the prompts both
/// have an outcome, the difference of their outcomes against the common
/// baseline, as a `paired` row of measure `judge` (WRPO against DPO, say,
/// without asking the judge anything more).
pub fn paired(judgements: &[Judgement], baseline: &str, pairs: &[(String, String)], seed: u64) -> Result<Vec<PairedComparison>> {
    let results = outcomes_by_model(judgements, baseline)?;
    let mut out = Vec::new();
    for (model, against) in pairs.iter().filter(|(m, a)| m != baseline && a != baseline) {
        let get = |m: &str| {
            results.get(m).map(|r| &r.0).ok_or_else(|| {
                anyhow::anyhow!(
                    "--compare names '{m}', which has no judged outcome against '{baseline}'; judged: {:?}",
                    results.keys().collect::<Vec<_>>()
                )
            })
        };
        let (a, b) = (get(model)?, get(against)?);
        let both: Vec<(f64, f64)> = a.iter().filter_map(|(id, x)| b.get(id).map(|y| (x.0, y.0))).collect();
        if !both.is_empty() {
            out.push(paired_row(model, against, "judge", &both, seed));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(prompt: usize, model: &str, first: &str, verdict: &str, length_diff: i64) -> Judgement {
        Judgement {
            prompt_id: format!("p{prompt}"),
            model: model.into(),
            baseline: "base".into(),
            sample_index: 0,
            shown_first: first.into(),
            verdict: verdict.into(),
            judgement: String::new(),
            length_diff,
            answers_sha256: None,
        }
    }

    /// A cached verdict is kept only while it is readable and about the same
    /// answers; others (changed answers, unreadable, from a version-1 file) are
    /// asked again and dropped from the cache.
    #[test]
    fn cached_verdicts_are_kept_by_content_and_unreadable_ones_asked_again() {
        let prompts: Vec<Prompt> = (0..2)
            .map(|i| Prompt {
                prompt_id: format!("p{i}"),
                messages: vec![],
                reference: None,
                split: wrpo_common::prompts::Split::Eval,
                origin: String::new(),
            })
            .collect();
        let answer = |p: usize, model: &str, text: &str| ScoredSample {
            prompt_id: format!("p{p}"),
            model: model.into(),
            sample_index: 0,
            response: text.into(),
            response_tokens: 1,
            finish_reason: FinishReason::Stop,
            reward: 0.0,
            reward_model: "exact".into(),
        };
        let scored = vec![answer(0, "base", "a"), answer(0, "m", "b"), answer(1, "base", "c"), answer(1, "m", "d")];
        let (asks, kept) = plan(&prompts, &scored, "base", vec![]);
        assert_eq!((asks.len(), kept.len()), (4, 0));
        let mut cached: Vec<Judgement> = asks
            .iter()
            .map(|a| Judgement {
                answers_sha256: Some(answers_key(a)),
                ..verdict(a.prompt.prompt_id[1..].parse().unwrap(), "m", if a.model_first { "model" } else { "baseline" }, "model", 0)
            })
            .collect();
        cached[1].verdict = "unreadable".into();
        cached[2].answers_sha256 = Some("another answer".into());
        cached[3].answers_sha256 = None;
        let mut other_index = cached[0].clone();
        other_index.sample_index = 1;
        let (asks, kept) = plan(&prompts, &scored, "base", cached.clone());
        assert_eq!(kept.len(), 1);
        assert_eq!(asks.len(), 3);
        assert!(!asks.iter().any(|a| a.prompt.prompt_id == kept[0].prompt_id && a.model_first == (kept[0].shown_first == "model")));
        // The same answers under another sample index are another sample's verdict.
        let (asks, kept) = plan(&prompts, &scored, "base", [vec![other_index], cached[1..].to_vec()].concat());
        assert_eq!((asks.len(), kept.len()), (4, 0));
    }

    #[test]
    fn both_orders_make_one_outcome_by_mt_benchs_rule() {
        let js = vec![
            verdict(0, "m", "model", "model", 5),
            verdict(0, "m", "baseline", "model", 5), // a win both ways: a win
            verdict(1, "m", "model", "model", 0),
            verdict(1, "m", "baseline", "baseline", 0), // split by position: a tie
            verdict(2, "m", "model", "tie", 0),
            verdict(2, "m", "baseline", "baseline", 0), // a tie one way: a tie, as tallied (not 1/4)
            verdict(3, "m", "model", "unreadable", 0),
            verdict(3, "m", "baseline", "unreadable", 0), // no outcome
            verdict(4, "m", "model", "model", 0),
            verdict(4, "m", "baseline", "unreadable", 0), // one order only: no outcome, not an uncancelled win
            verdict(5, "m", "model", "tie", 0),
            verdict(5, "m", "baseline", "tie", 0), // a tie both ways: a tie, not split
        ];
        let [row] = compare(&js, "base", "j", 1).unwrap().try_into().unwrap();
        assert_eq!((row.prompts, row.wins, row.ties, row.losses, row.unreadable, row.position_splits), (4, 1, 3, 0, 3, 2));
        // The rate is the tally's: (wins + ties / 2) / prompts.
        assert!((row.win_rate - (1.0 + 1.5) / 4.0).abs() < 1e-12);
        assert!(all_unreadable(&js, "base").is_empty());
        // A model none of whose verdicts could be read has no row, and is named with its count.
        let dark = [verdict(0, "d", "model", "unreadable", 0), verdict(0, "d", "baseline", "unreadable", 0)];
        assert!(compare(&dark, "base", "j", 1).unwrap().is_empty());
        assert_eq!(all_unreadable(&[js, dark.to_vec()].concat(), "base").into_iter().collect::<Vec<_>>(), [("d".to_string(), 2)]);
    }

    #[test]
    fn two_models_compare_paired_through_the_baseline() {
        let both = |p: usize, m: &str, v: &str| [verdict(p, m, "model", v, 0), verdict(p, m, "baseline", v, 0)];
        // w: win, win, tie, loss; d: tie, loss, tie, loss; x has prompt 0 only.
        let js: Vec<Judgement> = [
            both(0, "w", "model"),
            both(1, "w", "model"),
            both(2, "w", "tie"),
            both(3, "w", "baseline"),
            both(0, "d", "tie"),
            both(1, "d", "baseline"),
            both(2, "d", "tie"),
            both(3, "d", "baseline"),
            both(0, "x", "model"),
        ]
        .concat();
        let pairs = [("w".to_string(), "d".to_string()), ("w".to_string(), "base".to_string()), ("x".to_string(), "d".to_string())];
        let rows = paired(&js, "base", &pairs, 1).unwrap();
        // Against the baseline is `compare`'s row, not a paired one.
        assert_eq!(rows.iter().map(|r| (r.model.as_str(), r.against.as_str(), r.prompts)).collect::<Vec<_>>(), [("w", "d", 4), ("x", "d", 1)]);
        assert_eq!(rows[0].measure, "judge");
        assert!((rows[0].mean_diff - (0.5 + 1.0 + 0.0 + 0.0) / 4.0).abs() < 1e-12);
        assert!((rows[0].win_rate - (1.0 + 1.0 + 0.5 + 0.5) / 4.0).abs() < 1e-12);
        let err = paired(&js, "base", &[("w".into(), "nosuch".into())], 1).unwrap_err().to_string();
        assert!(err.contains("'nosuch'"), "{err}");
    }

    /// The documented limit of the two-parameter fit: no length bias at all,
    /// but the model writes longer answers on hard prompts, where it loses
    /// more often. The fit reads difficulty as a length effect and moves the
    /// rate, where a model of difficulty (AlpacaEval 2's GLM) would not.
    #[test]
    fn length_that_tracks_difficulty_biases_the_two_parameter_fit() {
        let mut rng = wrpo_llm::Rng::new(7);
        let (mut y, mut x) = (vec![], vec![]);
        for _ in 0..4000 {
            let difficulty = 2.0 * rng.next_f64() - 1.0;
            let p_win = 1.0 / (1.0 + (-(0.4 - 2.0 * difficulty)).exp());
            y.push(if rng.next_f64() < p_win { 1.0 } else { 0.0 });
            // Longer on hard prompts, and longer than the baseline on average.
            x.push(150.0 + 300.0 * difficulty + 50.0 * (rng.next_f64() - 0.5));
        }
        let raw = y.iter().sum::<f64>() / y.len() as f64;
        let lc = lc_win_rate(&y, &x);
        // The judge never looked at length, so the right answer is the raw rate; the fit is points off.
        eprintln!("raw {raw:.3}, two-parameter fit {lc:.3}");
        assert!((lc - raw).abs() > 0.1, "raw {raw}, fit {lc}");
    }

    #[test]
    fn the_length_adjusted_rate_removes_a_win_bought_by_length() {
        // Longer answers win 90%, shorter ones 10%, equal ones half the time;
        // the model is longer on 60 of 100 prompts, so it wins 66%. At zero
        // length difference it is even.
        let mut y = vec![];
        let mut x = vec![];
        for (count, diff, wins) in [(60, 100.0, 54), (20, -100.0, 2), (20, 0.0, 10)] {
            for i in 0..count {
                y.push(if i < wins { 1.0 } else { 0.0 });
                x.push(diff);
            }
        }
        let raw = y.iter().sum::<f64>() / y.len() as f64;
        let lc = lc_win_rate(&y, &x);
        assert!((raw - 0.66).abs() < 1e-12);
        assert!((lc - 0.5).abs() < 0.06, "length-adjusted {lc}");
        // No length difference at all: the raw rate.
        assert!((lc_win_rate(&[1.0, 1.0, 0.0, 0.5], &[0.0; 4]) - 0.625).abs() < 1e-9);
    }

    #[test]
    fn seeds_pool_per_prompt() {
        let js = vec![
            verdict(0, "w@1", "model", "model", 10),
            verdict(0, "w@1", "baseline", "model", 10),
            verdict(0, "w@2", "model", "baseline", 0),
            verdict(0, "w@2", "baseline", "baseline", 0),
            verdict(1, "w@1", "model", "tie", 0),
            verdict(1, "w@1", "baseline", "tie", 0),
            verdict(1, "w@2", "model", "model", 0),
            verdict(1, "w@2", "baseline", "model", 0),
            verdict(0, "d@1", "model", "model", 0),
            verdict(0, "d@1", "baseline", "tie", 0),
        ];
        let rows = compare(&js, "base", "j", 1).unwrap();
        let pooled = rows.iter().find(|r| r.model == "w").unwrap();
        assert_eq!(pooled.prompts, 2);
        assert!((pooled.win_rate - (0.5 + 0.75) / 2.0).abs() < 1e-12);
        // A single seed is its own pool, as in the reward table.
        let (one, pool) = (rows.iter().find(|r| r.model == "d@1").unwrap(), rows.iter().find(|r| r.model == "d").unwrap());
        assert_eq!((pool.prompts, pool.win_rate), (one.prompts, one.win_rate));
        assert!((pool.win_rate - 0.5).abs() < 1e-12);
        // A model judged as "w" beside the seeds w@1, w@2 is refused, as in the reward table, not left unpooled.
        let clash = [js.clone(), vec![verdict(0, "w", "model", "model", 0), verdict(0, "w", "baseline", "model", 0)]].concat();
        let err = compare(&clash, "base", "j", 1).unwrap_err().to_string();
        assert!(err.contains("model 'w' is scored, and so are its seeds [\"w@1\", \"w@2\"]"), "{err}");
        assert!(paired(&clash, "base", &[("w".into(), "d".into())], 1).is_err());
    }
}
