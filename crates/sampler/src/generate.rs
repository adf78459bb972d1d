//! `wrpo-sample generate`: N responses per prompt from every model, written
//! as `samples` shards under `OUT/ALIAS/`. Finished rows are committed as
//! the run goes; the same command run again skips every (prompt_id, model,
//! sample_index) already on disk, so a crash or Ctrl-C loses at most the
//! rows not yet committed and never duplicates one.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Instant,
};

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use wrpo_common::{
    hash::shard_of,
    io::{check_unlocked, resume_files},
    progress::Progress,
    prompts::{Prompt, Split},
    samples::{FinishReason, Sample},
    write_dataset, Provenance, ShardWriter,
};

use crate::{
    backend::{Backend, Finish, Job, Outcome, Settings, Sink},
    local::LocalModel,
    served::{RemoteModel, RemoteOptions},
    spec::{ModelSpec, Source},
};

pub const PRODUCER: &str = concat!("wrpo-sample ", env!("CARGO_PKG_VERSION"));

/// Which prompts a run covers.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Selection {
    pub split: Option<Split>,
    /// Only these prompt ids.
    pub prompt_ids: Option<Vec<String>>,
    /// (i, n): the i-th of n disjoint parts, chosen by a hash of prompt_id.
    pub shard: Option<(usize, usize)>,
    /// The first `limit` prompts left after the other filters, in file order.
    pub limit: Option<usize>,
}

/// The prompts `sel` picks, in file order. Ids asked for by --prompt-ids
/// that the prompts file lacks are an error: a typo must not shrink a run.
pub fn select_prompts(prompts: Vec<Prompt>, sel: &Selection) -> Result<Vec<Prompt>> {
    let wanted: Option<HashSet<&str>> = sel.prompt_ids.as_ref().map(|ids| ids.iter().map(String::as_str).collect());
    if let Some(wanted) = &wanted {
        let known: HashSet<&str> = prompts.iter().map(|p| p.prompt_id.as_str()).collect();
        let missing: Vec<&&str> = wanted.iter().filter(|id| !known.contains(**id)).collect();
        if !missing.is_empty() {
            bail!(
                "{} prompt id(s) asked for are not in the prompts file, e.g. {}",
                missing.len(),
                missing.iter().take(5).map(|s| format!("'{s}'")).collect::<Vec<_>>().join(", ")
            );
        }
    }
    let keep = |p: &Prompt| {
        sel.split.is_none_or(|s| p.split == s)
            && wanted.as_ref().is_none_or(|w| w.contains(p.prompt_id.as_str()))
            && sel.shard.is_none_or(|(i, n)| shard_of(&p.prompt_id, n) == i)
    };
    let mut picked: Vec<Prompt> = prompts.into_iter().filter(keep).collect();
    if let Some(limit) = sel.limit {
        picked.truncate(limit);
    }
    Ok(picked)
}

/// Read `--prompt-ids FILE`: one id per line; blank lines and `#` comments skipped.
pub fn read_prompt_ids(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read --prompt-ids file {}", path.display()))?;
    let ids: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_string).collect();
    if ids.is_empty() {
        bail!("{} lists no prompt id (one per line expected)", path.display());
    }
    Ok(ids)
}

/// Options of the generation run that do not change the text.
#[derive(Clone, Debug, Serialize)]
pub struct RunOptions {
    /// Sequences decoded together by a local model.
    pub batch_size: usize,
    /// Rows per committed shard (a shard is also committed every minute).
    pub shard_rows: usize,
    pub remote: RemoteOptions,
    /// Count skipped samples (a prompt too long, a server's refusal) as done
    /// when resuming; by default a rerun tries them again.
    pub keep_skipped: bool,
    /// Tests: abort the process, as a crash would, after this many shards.
    #[serde(skip)]
    pub abort_after_shards: Option<usize>,
}

#[derive(Serialize)]
struct ModelConfig<'a> {
    model: &'a ModelSpec,
    settings: &'a Settings,
    selection: &'a Selection,
    run: &'a RunOptions,
}

/// Generate every missing sample for `prompts` with each model in turn.
pub fn generate(
    prompts_path: &Path,
    prompts: &[Prompt],
    models: &[ModelSpec],
    settings: &Settings,
    selection: &Selection,
    run: &RunOptions,
    out: &Path,
    interrupted: Arc<AtomicBool>,
) -> Result<()> {
    settings.sampling.check().map_err(|e| anyhow!(e))?;
    if settings.n == 0 {
        bail!("--n must be at least 1");
    }
    let aliases: HashSet<&str> = models.iter().map(|m| m.alias.as_str()).collect();
    if aliases.len() != models.len() {
        bail!("two --model options have the same alias; write alias=PATH to tell them apart");
    }
    for spec in models {
        check_unlocked(&out.join(&spec.alias))?;
    }
    // Check every model before writing anything.
    let mut engines = Vec::new();
    for spec in models {
        let engine = match &spec.source {
            Source::Local { path } if !path.exists() => bail!("model '{}': {} does not exist", spec.alias, path.display()),
            Source::Local { path } => LocalModel::check(path).map(|()| Engine::Local(path.clone())),
            Source::Openai { base_url, served_name } => RemoteModel::connect(base_url, served_name, &run.remote).map(|m| Engine::Ready(Box::new(m))),
        };
        engines.push(engine.with_context(|| format!("model '{}'", spec.alias))?);
    }

    // What each model's shards record as their inputs: the prompts and the model file's content.
    let provs: Vec<Provenance> = models
        .iter()
        .map(|spec| {
            let config = ModelConfig { model: spec, settings, selection, run };
            let prov = Provenance::new(PRODUCER, &config)?.with_input(prompts_path)?;
            match &spec.source {
                Source::Local { path } => prov.with_input(path),
                Source::Openai { .. } => Ok(prov),
            }
        })
        .collect::<Result<_>>()?;
    let plans: Vec<(Vec<Job>, usize)> = models
        .iter()
        .zip(&provs)
        .map(|(spec, prov)| plan(prompts, &out.join(&spec.alias), spec, settings, prov, run.keep_skipped))
        .collect::<Result<_>>()?;
    let total: usize = plans.iter().map(|(jobs, _)| jobs.iter().map(|j| j.sample_indices.len()).sum::<usize>()).sum();
    let mut progress = Progress::new(total as u64, "samples");
    for (((spec, engine), (jobs, already)), prov) in models.iter().zip(engines).zip(plans).zip(provs) {
        let dir = out.join(&spec.alias);
        let todo: usize = jobs.iter().map(|j| j.sample_indices.len()).sum();
        progress.log(&format!("{}: {todo} samples to make, {already} already in {}", spec.alias, dir.display()));
        if todo == 0 {
            continue;
        }
        // The model first: one that fails to load leaves no output folder behind.
        let backend = engine.open(settings, run).with_context(|| format!("model '{}'", spec.alias))?;
        let mut sink = ShardSink {
            alias: &spec.alias,
            settings,
            writer: ShardWriter::new(&dir, prov, run.shard_rows)?.abort_after_shards(run.abort_after_shards),
            made: (0, 0),
            interrupted: interrupted.clone(),
            progress: &mut progress,
            earlier: already,
        };
        sink.progress.set_model(&spec.alias);
        let started = Instant::now();
        sink.progress.log(&format!("{}: {}", spec.alias, backend.describe()));
        let result = backend.generate(&jobs, settings, &spec.alias, &mut sink);
        let secs = started.elapsed().as_secs_f64();
        let (samples, tokens) = sink.made;
        sink.progress.log(&format!(
            "{}: made {samples} samples, {tokens} new tokens in {secs:.1} s of generation ({:.1} tokens/s)",
            spec.alias,
            tokens as f64 / secs.max(1e-9)
        ));
        // Keep what was finished, whatever happened.
        let committed = sink.writer.finish();
        result.with_context(|| format!("model '{}': generation failed; finished samples are kept, rerun to continue", spec.alias))?;
        committed?;
        if interrupted.load(Ordering::SeqCst) {
            bail!("interrupted; the finished samples are committed: run the same command again to continue");
        }
    }
    progress.finish();
    Ok(())
}

/// A model that passed the checks: a local one loads when its turn comes, so
/// that only one model's weights are in memory at a time.
enum Engine {
    Local(PathBuf),
    Ready(Box<dyn Backend>),
}

impl Engine {
    fn open(self, settings: &Settings, run: &RunOptions) -> Result<Box<dyn Backend>> {
        Ok(match self {
            Engine::Local(path) => Box::new(LocalModel::load(&path, settings.quantize, run.batch_size)?),
            Engine::Ready(backend) => backend,
        })
    }
}

/// The jobs still to do for `spec`: every (prompt, sample_index) not yet in
/// `dir`, and how many are. Existing shards must come from the same settings.
fn plan<'a>(
    prompts: &'a [Prompt],
    dir: &Path,
    spec: &ModelSpec,
    settings: &Settings,
    prov: &Provenance,
    keep_skipped: bool,
) -> Result<(Vec<Job<'a>>, usize)> {
    let done = existing_samples(dir, spec, settings, prov, keep_skipped)?;
    let jobs = prompts
        .iter()
        .map(|p| Job { prompt: p, sample_indices: (0..settings.n).filter(|&i| !done.contains(&(p.prompt_id.clone(), i))).collect() })
        .filter(|j| !j.sample_indices.is_empty())
        .collect();
    Ok((jobs, done.len()))
}

/// (prompt_id, sample_index) of the samples already committed in `dir`.
/// They must come from the same model, settings (but for `--n`: raising it
/// makes only the new samples) and content of the model and prompts files,
/// however their paths are spelled.
/// Skipped rows are taken out of their shards to be made again, unless
/// `keep_skipped`.
fn existing_samples(dir: &Path, spec: &ModelSpec, settings: &Settings, prov: &Provenance, keep_skipped: bool) -> Result<HashSet<(String, u32)>> {
    let mut done = HashSet::new();
    let without_n = |v: &serde_json::Value| {
        let mut v = v.clone();
        v.as_object_mut().map(|o| o.remove("n"));
        v
    };
    // A local model is compared by its content (the inputs' hashes below), not by how its path was spelled.
    let by_content = |model: &serde_json::Value| {
        let mut model = model.clone();
        if model["source"]["kind"] == "local" {
            model["source"].as_object_mut().map(|o| o.remove("path"));
        }
        model
    };
    let want = serde_json::json!({"model": by_content(&serde_json::to_value(spec)?), "settings": without_n(&serde_json::to_value(settings)?)});
    let files = resume_files::<Sample>(dir, |then| {
        if let Some(now) = then.inputs.iter().zip(&prov.inputs).find_map(|(then, now)| (then.sha256 != now.sha256).then_some(now)) {
            return Some(format!("from another {} (its content changed since)", now.path));
        }
        let made = serde_json::json!({"model": by_content(&then.config["model"]), "settings": without_n(&then.config["settings"])});
        wrpo_common::io::settings_differ(&made, &want).map(|d| format!("with other settings ({d})"))
    })?;
    for file in files {
        let path = file.path.clone();
        let rows = if keep_skipped || file.rows.iter().all(|r| r.finish_reason != FinishReason::Skipped) {
            file.rows
        } else {
            // The shard rewritten atomically without them (or removed if nothing else is left).
            let kept: Vec<Sample> = file.rows.into_iter().filter(|r| r.finish_reason != FinishReason::Skipped).collect();
            if kept.is_empty() {
                std::fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
            } else {
                write_dataset(&path, &kept, &file.provenance)?;
            }
            kept
        };
        for row in rows {
            if !done.insert((row.prompt_id.clone(), row.sample_index)) {
                bail!("{}: sample ({}, {}) is already in another shard of {}", path.display(), row.prompt_id, row.sample_index, dir.display());
            }
        }
    }
    Ok(done)
}

/// Turns outcomes into `samples` rows and commits them in shards.
struct ShardSink<'a> {
    alias: &'a str,
    settings: &'a Settings,
    writer: ShardWriter<Sample>,
    /// Samples and new tokens made by this run.
    made: (usize, u64),
    interrupted: Arc<AtomicBool>,
    progress: &'a mut Progress,
    /// Samples of this model the output held before this run.
    earlier: usize,
}

impl Sink for ShardSink<'_> {
    fn push(&mut self, prompt_id: &str, sample_index: u32, o: Outcome) -> Result<()> {
        self.progress.add(1, o.response_tokens as u64);
        self.made = (self.made.0 + 1, self.made.1 + o.response_tokens as u64);
        let (finish_reason, skip_reason) = match o.finish {
            Finish::Stop => (FinishReason::Stop, None),
            Finish::Length => (FinishReason::Length, None),
            Finish::Skipped(why) => (FinishReason::Skipped, Some(why)),
        };
        let s = self.settings;
        self.writer.push(Sample {
            prompt_id: prompt_id.to_string(),
            model: self.alias.to_string(),
            sample_index,
            prompt_text: o.prompt_text,
            response: o.response,
            prompt_tokens: o.prompt_tokens,
            response_tokens: o.response_tokens,
            finish_reason,
            skip_reason,
            temperature: s.sampling.temperature,
            top_p: s.sampling.top_p,
            top_k: s.sampling.top_k as u32,
            seed: s.seed,
            generation_seconds: o.seconds,
        })
    }

    fn interrupted(&self) -> bool {
        self.interrupted.load(Ordering::SeqCst)
    }

    fn has_earlier_samples(&self) -> bool {
        self.earlier > 0
    }
}
