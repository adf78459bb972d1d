//! `wrpo-score score`: every sample's reward, written as `scored` shards under
//! `OUT/<model>/`. Work is sorted by length and cut into batches once, from
//! the whole run. A batch is committed whole, or, when a fatal error stops a
//! served reward's batch, with the outcomes it finished; a rerun sends only
//! the samples not on disk and ends with the rows of an uninterrupted run.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use wrpo_common::{
    hash::shard_of,
    io::{check_keys, dataset_files, read_file, resume_files, write_text},
    progress::Progress,
    prompts::Prompt,
    samples::{FinishReason, Sample},
    scored::ScoredSample,
    Provenance, ShardWriter,
};

use crate::{
    reward::{Item, Reward},
    spec::{RewardDtype, RewardSpec},
};
use wrpo_remote::RemoteOptions;

pub const PRODUCER: &str = concat!("wrpo-score ", env!("CARGO_PKG_VERSION"));

/// What fixes a reward: a resumed run must use the same.
#[derive(Clone, Debug, Serialize)]
pub struct ScoreSettings {
    pub reward: RewardSpec,
    /// The weight type of a reward's model.
    pub dtype: RewardDtype,
    /// A reward model's matmul precision; left out when f32, so that scores
    /// from before it resume.
    #[serde(skip_serializing_if = "wrpo_llm::bf16::Precision::is_f32")]
    pub precision: wrpo_llm::bf16::Precision,
    /// Leave out samples whose prompt has no reference (instead of failing).
    pub skip_unreferenced: bool,
    pub shard: Option<(usize, usize)>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ScoreOptions {
    /// Padded tokens per batch (batch size x longest item).
    pub batch_tokens: usize,
    /// Items per batch of a reward that runs no model here (verifiers, servers).
    pub batch_items: usize,
    /// Rows per committed shard (also committed every minute).
    pub shard_rows: usize,
    /// Requests to a reward's server.
    pub remote: RemoteOptions,
    /// A local checkpoint a served reward model must score alike.
    pub check_against: Option<PathBuf>,
    /// Tests: abort the process, as a crash would, after this many shards.
    #[serde(skip)]
    pub abort_after_shards: Option<usize>,
}

/// What a run did, printed and written to `OUT/summary.json`.
#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub reward_model: String,
    pub models: BTreeMap<String, ModelSummary>,
}

#[derive(Debug, Default, Serialize)]
pub struct ModelSummary {
    /// Rows in OUT/<model>/, from this run and earlier ones.
    pub scored: usize,
    /// Samples with finish_reason 'skipped' (nothing to score).
    pub skipped: usize,
    /// Samples left out because their prompt has no reference the reward can check (--skip-unreferenced).
    pub unreferenced: usize,
    /// Rows the reward's server refused (finish_reason 'skipped', reward NaN), from this run and earlier ones.
    pub refused: usize,
    /// Why, for every refused row on disk: this run's, and the earlier runs'
    /// kept from the summary.json they wrote.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub refusals: Vec<String>,
    pub reward_mean: Option<f64>,
    pub reward_min: Option<f64>,
    pub reward_max: Option<f64>,
}

/// A sample to score, with the file it came from for error messages.
struct Work {
    sample: Sample,
    file: PathBuf,
    cost: usize,
}

/// Read every samples file under `samples`, refusing duplicate keys.
fn read_samples(samples: &Path) -> Result<Vec<(Sample, PathBuf)>> {
    let files = dataset_files(samples)?.iter().map(|p| read_file::<Sample>(p)).collect::<Result<Vec<_>>>()?;
    check_keys(&files)?;
    Ok(files.into_iter().flat_map(|f| f.rows.into_iter().map(move |r| (r, f.path.clone()))).collect())
}

/// The inputs of a run after its prompts and samples: the reward's own files (a model, a template folder).
const REWARD_INPUTS: usize = 2;

/// The settings as a resume compares them: the reward's files by their content
/// (`reward_files`), not by how their paths were spelled.
fn by_content(settings: &serde_json::Value, reward_files: &[wrpo_common::io::InputHash]) -> serde_json::Value {
    let mut v = settings.clone();
    if let Some(reward) = v["reward"].as_object_mut() {
        reward.remove("path");
        reward.remove("render_with");
    }
    v["reward_files"] = reward_files.iter().map(|f| f.sha256.clone()).collect();
    v
}

/// (prompt_id, sample_index) already scored in `dir`, from the same settings
/// and reward files.
fn existing(dir: &Path, settings: &serde_json::Value, prov: &Provenance) -> Result<Vec<ScoredSample>> {
    let now = by_content(settings, prov.inputs.get(REWARD_INPUTS..).unwrap_or_default());
    let files = resume_files::<ScoredSample>(dir, |then| {
        let made = by_content(&then.config["settings"], then.inputs.get(REWARD_INPUTS..).unwrap_or_default());
        wrpo_common::io::settings_differ(&made, &now).map(|d| format!("with other settings ({d})"))
    })?;
    Ok(files.into_iter().flat_map(|f| f.rows).collect())
}

#[derive(Serialize)]
struct RunConfig<'a> {
    settings: &'a ScoreSettings,
    options: &'a ScoreOptions,
}

/// What every step of a run reads.
struct Run<'a> {
    by_id: HashMap<&'a str, &'a Prompt>,
    reward: Box<dyn Reward>,
    settings: &'a ScoreSettings,
    /// The settings as a resume compares them.
    settings_json: serde_json::Value,
    options: &'a ScoreOptions,
    prov: Provenance,
    out: &'a Path,
    interrupted: Arc<AtomicBool>,
}

/// One model's samples to score, with its folder's writer (which holds the
/// folder's lock) and the rows the folder already holds.
struct Pending {
    writer: ShardWriter<ScoredSample>,
    done: Vec<ScoredSample>,
    work: Vec<Work>,
}

/// One model's part of the run.
struct ModelPlan {
    model: String,
    /// Its batches, fixed by the whole run, less the samples on disk.
    batches: Vec<Vec<Work>>,
    /// A sample on disk with a reward: if this run's first batch is refused
    /// whole, it is asked again, to tell the server's fault from the samples'.
    probe: Option<ScoredSample>,
    writer: ShardWriter<ScoredSample>,
}

/// A batch's rows as far as the reward got, their cost, and the fatal error
/// that left the rest unscored, if one did.
type BatchOutcome = (Vec<ScoredSample>, u64, Option<anyhow::Error>);

/// What the reward scores: a response to a prompt.
fn item<'a>(prompt: &'a Prompt, response: &'a str) -> Item<'a> {
    Item { messages: &prompt.messages, response, reference: prompt.reference.as_deref() }
}

/// Score every sample under `samples_path` into `OUT/<model>/` and write
/// `OUT/summary.json`: what is pending per model (what its folder holds is
/// resumed), each model's batches, the batches scored and committed in turn,
/// then the summary of what is on disk.
pub fn score(
    prompts_path: &Path,
    prompts: &[Prompt],
    samples_path: &Path,
    settings: &ScoreSettings,
    options: &ScoreOptions,
    out: &Path,
    interrupted: Arc<AtomicBool>,
) -> Result<Summary> {
    let by_id: HashMap<&str, &Prompt> = prompts.iter().map(|p| (p.prompt_id.as_str(), p)).collect();
    settings.precision.apply().map_err(anyhow::Error::msg)?;
    let reward = settings.reward.load(settings.dtype, &options.remote, options.check_against.as_deref())?;
    eprintln!("reward {} on {}; matmuls in {}", reward.name(), wrpo_llm::cpu_summary(), settings.precision.describe());
    let mut summary = Summary { reward_model: reward.name(), ..Default::default() };
    let settings_json = serde_json::to_value(settings)?;
    let mut prov = Provenance::new(PRODUCER, &RunConfig { settings, options })?.with_input(prompts_path)?.with_input(samples_path)?;
    for path in settings.reward.paths() {
        prov = prov.with_input(path)?;
    }
    let run = Run { by_id, reward, settings, settings_json, options, prov, out, interrupted };

    let pending = run.pending(prompts_path, samples_path, &mut summary)?;
    let plans = pending.into_iter().map(|(model, p)| run.plan(model, p)).collect::<Result<Vec<_>>>()?;
    let total: usize = plans.iter().map(|p| p.batches.iter().map(Vec::len).sum::<usize>()).sum();
    let mut progress = Progress::new(total as u64, "samples");
    for plan in plans {
        let refusals = &mut summary.models.get_mut(&plan.model).expect("counted with its samples").refusals;
        run.score_model(plan, &mut progress, refusals)?;
    }
    progress.finish();
    run.summarise(&mut summary)?;
    write_summary(&out.join("summary.json"), &summary)?;
    Ok(summary)
}

impl Run<'_> {
    /// What is there to score, per model, and what its folder already holds
    /// (read under the folder's lock); skipped samples, and with
    /// --skip-unreferenced those the reward cannot check, are counted in
    /// `summary`.
    fn pending(&self, prompts_path: &Path, samples_path: &Path, summary: &mut Summary) -> Result<BTreeMap<String, Pending>> {
        let mut pending: BTreeMap<String, Pending> = BTreeMap::new();
        for (sample, file) in read_samples(samples_path)? {
            if self.settings.shard.is_some_and(|(i, n)| shard_of(&sample.prompt_id, n) != i) {
                continue;
            }
            let prompt = self.by_id.get(sample.prompt_id.as_str()).ok_or_else(|| {
                anyhow!(
                    "{}: sample (prompt_id {}, model {}, sample_index {}) has no prompt in {}",
                    file.display(),
                    sample.prompt_id,
                    sample.model,
                    sample.sample_index,
                    prompts_path.display()
                )
            })?;
            let model_summary = summary.models.entry(sample.model.clone()).or_default();
            if sample.finish_reason == FinishReason::Skipped {
                model_summary.skipped += 1;
                continue;
            }
            if !self.reward.checkable(prompt.reference.as_deref()) {
                if !self.settings.skip_unreferenced {
                    bail!(
                        "{}: prompt {} has no reference answer {} can check ({:?}); pass --skip-unreferenced to leave such prompts out",
                        prompts_path.display(),
                        prompt.prompt_id,
                        self.reward.name(),
                        prompt.reference.as_deref().unwrap_or("none")
                    );
                }
                model_summary.unreferenced += 1;
                continue;
            }
            if !pending.contains_key(&sample.model) {
                // The folder's lock before its resume plan: a second scorer on it is
                // refused here, not after both have read what is on disk and each
                // scores the rest (duplicate keys).
                let dir = self.out.join(&sample.model);
                let writer = ShardWriter::new(&dir, self.prov.clone(), self.options.shard_rows)?.abort_after_shards(self.options.abort_after_shards);
                let done = existing(&dir, &self.settings_json, &self.prov)?;
                pending.insert(sample.model.clone(), Pending { writer, done, work: vec![] });
            }
            let cost = self
                .reward
                .cost(&item(prompt, &sample.response))
                .with_context(|| format!("{}: sample ({}, {})", file.display(), sample.prompt_id, sample.sample_index))?;
            pending.get_mut(&sample.model).expect("inserted above").work.push(Work { sample, file, cost });
        }
        Ok(pending)
    }

    /// A model's batches, fixed by the whole run; those with every row on
    /// disk are done. Samples made again under keys on disk are refused.
    fn plan(&self, model: String, pending: Pending) -> Result<ModelPlan> {
        let Pending { writer, done, mut work } = pending;
        // What is on disk, and for which response: a resume is keyed by what was scored.
        let scored: HashMap<(&str, u32), &str> = done.iter().map(|r| ((r.prompt_id.as_str(), r.sample_index), r.response.as_str())).collect();
        if let Some(w) =
            work.iter().find(|w| scored.get(&(w.sample.prompt_id.as_str(), w.sample.sample_index)).is_some_and(|r| *r != w.sample.response))
        {
            bail!(
                "{}: sample (prompt_id {}, sample_index {}) is not the response {} holds a reward for: the samples were made again; give another --out, or delete that folder to score them anew",
                w.file.display(),
                w.sample.prompt_id,
                w.sample.sample_index,
                self.out.join(&model).display()
            );
        }
        let by_key = |a: &Work, b: &Work| a.sample.prompt_id.cmp(&b.sample.prompt_id).then(a.sample.sample_index.cmp(&b.sample.sample_index));
        match self.reward.shares_prompts() {
            true => work.sort_by(by_key),
            false => work.sort_by(|a, b| a.cost.cmp(&b.cost).then_with(|| by_key(a, b))),
        }
        // Only the items not on disk are sent: a batch an earlier run left
        // partly committed (a fatal error, or another --batch-tokens) is not
        // asked again whole.
        let batches: Vec<Vec<Work>> = batches(work, self.options, self.reward.shares_prompts())
            .into_iter()
            .map(|b| b.into_iter().filter(|w| !scored.contains_key(&(w.sample.prompt_id.as_str(), w.sample.sample_index))).collect::<Vec<_>>())
            .filter(|b| !b.is_empty())
            .collect();
        let probe = done.iter().find(|r| r.finish_reason != FinishReason::Skipped && self.by_id.contains_key(r.prompt_id.as_str())).cloned();
        Ok(ModelPlan { model, batches, probe, writer })
    }

    /// Score a model's batches in order, each committed as it finishes;
    /// whatever stops them, what they finished is committed.
    fn score_model(&self, plan: ModelPlan, progress: &mut Progress, refusals: &mut Vec<String>) -> Result<()> {
        let ModelPlan { model, batches, probe, mut writer } = plan;
        progress.set_model(&model);
        let result = self.score_batches(&model, batches, probe.as_ref(), &mut writer, progress, refusals);
        let committed = writer.finish();
        result?;
        committed?;
        if self.interrupted.load(Ordering::SeqCst) {
            bail!("interrupted; the finished batches are committed: run the same command again to continue");
        }
        Ok(())
    }

    fn score_batches(
        &self,
        model: &str,
        batches: Vec<Vec<Work>>,
        probe: Option<&ScoredSample>,
        writer: &mut ShardWriter<ScoredSample>,
        progress: &mut Progress,
        refusals: &mut Vec<String>,
    ) -> Result<()> {
        // Whether this run has had a reward from the server yet.
        let mut has_rewards = false;
        for batch in batches {
            if self.interrupted.load(Ordering::SeqCst) {
                break;
            }
            let (rows, finished_cost, fatal) = self.score_batch(model, &batch, refusals)?;
            if !has_rewards && !rows.is_empty() && rows.iter().all(|r| r.finish_reason == FinishReason::Skipped) {
                self.check_refused_first_batch(model, rows.len(), &refusals.last().cloned().unwrap_or_default(), probe)?;
            }
            has_rewards |= rows.iter().any(|r| r.finish_reason != FinishReason::Skipped);
            let finished = rows.len();
            writer.push_unit(rows)?;
            // What is written, not what was sent: after a fatal error the line must not say 24/24.
            progress.add(finished as u64, finished_cost);
            if let Some(e) = fatal {
                return Err(e.context(format!(
                    "scoring samples of {}; the {finished} of this batch's {} samples finished before it are committed: run the same command again to score the rest",
                    batch[0].file.display(),
                    batch.len()
                )));
            }
        }
        Ok(())
    }

    /// One batch's rows as far as the reward got: a sample the reward's
    /// server refused is a skipped row, its reason added to `refusals`; a
    /// reward that is not a number stops the run with nothing of the batch
    /// written.
    fn score_batch(&self, model: &str, batch: &[Work], refusals: &mut Vec<String>) -> Result<BatchOutcome> {
        let items: Vec<Item> = batch.iter().map(|w| item(self.by_id[w.sample.prompt_id.as_str()], &w.sample.response)).collect();
        let (outcomes, fatal) = self.reward.score_partial(&items);
        let mut rows = Vec::with_capacity(batch.len());
        let mut finished_cost = 0u64;
        for (w, r) in batch.iter().zip(outcomes) {
            // None: the fatal error left it unscored.
            let Some(r) = r else { continue };
            finished_cost += w.cost as u64;
            let s = &w.sample;
            let (value, finish_reason) = match r {
                Ok(r) if r.is_finite() => (r, s.finish_reason),
                Ok(r) => bail!(
                    "{}: sample (prompt_id {}, sample_index {}) got reward {r}; nothing of this batch was written",
                    w.file.display(),
                    s.prompt_id,
                    s.sample_index
                ),
                Err(why) => {
                    let why = format!("prompt_id {} sample_index {}: {why}", s.prompt_id, s.sample_index);
                    eprintln!("skipped ({model}) {why}");
                    refusals.push(why);
                    (f64::NAN, FinishReason::Skipped)
                }
            };
            rows.push(ScoredSample {
                prompt_id: s.prompt_id.clone(),
                model: s.model.clone(),
                sample_index: s.sample_index,
                response: s.response.clone(),
                response_tokens: s.response_tokens,
                finish_reason,
                reward: value,
                reward_model: self.reward.name(),
            });
        }
        Ok((rows, finished_cost, fatal))
    }

    /// A whole first batch refused (`refused` samples, the last for `why`):
    /// the settings or the server are at fault, not the samples, and no
    /// skipped row is committed; unless `probe`, a sample scored in an
    /// earlier run, is scored again now.
    fn check_refused_first_batch(&self, model: &str, refused: usize, why: &str, probe: Option<&ScoredSample>) -> Result<()> {
        let scores_again = probe.is_some_and(|s| {
            let item = item(self.by_id[s.prompt_id.as_str()], &s.response);
            matches!(self.reward.score_partial(&[item]).0.first(), Some(Some(Ok(r))) if r.is_finite())
        });
        if scores_again {
            return Ok(());
        }
        let before = match probe {
            Some(s) => format!(", and now refuses too prompt_id {} sample_index {}, which it scored in an earlier run", s.prompt_id, s.sample_index),
            None => String::new(),
        };
        // A judge that answered every request refused nothing: it cannot grade in this format.
        if why.contains(crate::judge::UNREADABLE) {
            bail!(
                "{model}: the judge answered every request of this run's first batch, but not one of its grades ({refused} samples) could be read (the last: {why}){before}; \
                 nothing was written: this judge model does not follow the grading format (a larger or instruction-tuned judge, or its chat template, is needed)"
            );
        }
        bail!(
            "{model}: the reward's server refused all {refused} samples of this run's first batch (the last: {why}){before}; nothing was written: check --reward and what the server accepts"
        );
    }

    /// Each model's counts from the rows on disk now (this run's and earlier
    /// runs'), with the reasons an earlier run wrote for rows still refused.
    fn summarise(&self, summary: &mut Summary) -> Result<()> {
        let earlier: serde_json::Value =
            std::fs::read_to_string(self.out.join("summary.json")).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default();
        for (model, s) in summary.models.iter_mut() {
            let rows = existing(&self.out.join(model), &self.settings_json, &self.prov)?;
            s.scored = rows.len();
            s.refused = rows.iter().filter(|r| r.finish_reason == FinishReason::Skipped).count();
            let refused: std::collections::HashSet<String> = rows
                .iter()
                .filter(|r| r.finish_reason == FinishReason::Skipped)
                .map(|r| format!("prompt_id {} sample_index {}:", r.prompt_id, r.sample_index))
                .collect();
            let mut reasons: Vec<String> = earlier["models"][model]["refusals"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str())
                .filter(|why| !s.refusals.contains(&why.to_string()) && refused.iter().any(|key| why.starts_with(key.as_str())))
                .map(str::to_string)
                .collect();
            reasons.append(&mut s.refusals);
            s.refusals = reasons;
            let rewards: Vec<f64> = rows.iter().filter(|r| r.finish_reason != FinishReason::Skipped).map(|r| r.reward).collect();
            if !rewards.is_empty() {
                s.reward_mean = Some(rewards.iter().sum::<f64>() / rewards.len() as f64);
                s.reward_min = rewards.iter().copied().reduce(f64::min);
                s.reward_max = rewards.iter().copied().reduce(f64::max);
            }
        }
        Ok(())
    }
}

/// Consecutive items while the batch's tokens stay within `budget`: batch
/// size x largest cost when batches are padded, the sum of costs when not
/// (`unpadded`); items of rewards without a model here (cost 0) go in
/// batches of `batch_items`.
fn batches(work: Vec<Work>, options: &ScoreOptions, unpadded: bool) -> Vec<Vec<Work>> {
    let budget = options.batch_tokens;
    let mut out: Vec<Vec<Work>> = vec![];
    let mut current: Vec<Work> = vec![];
    for w in work {
        let widest = current.iter().map(|c| c.cost).max().unwrap_or(0).max(w.cost);
        let tokens = if unpadded { current.iter().map(|c| c.cost).sum::<usize>() + w.cost } else { (current.len() + 1) * widest };
        let full = if widest == 0 { current.len() >= options.batch_items } else { tokens > budget };
        if full && !current.is_empty() {
            out.push(std::mem::take(&mut current));
        }
        current.push(w);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// Write a summary as pretty JSON, atomically.
pub fn write_summary(path: &Path, summary: &impl Serialize) -> Result<()> {
    write_text(path, &(serde_json::to_string_pretty(summary)? + "\n"))
}
