use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use wrpo_common::{
    hash::parse_shard,
    io::check_paths,
    prompts::{Prompt, Split},
    read_dataset,
};
use wrpo_llm::SamplingParams;
use wrpo_sampler::{
    backend::{Quantize, Settings},
    generate::{generate, read_prompt_ids, select_prompts, RunOptions, Selection},
    spec::ModelSpec,
};

#[derive(clap::Args)]
pub struct GenerateArgs {
    /// `prompts` dataset (from `wrpo-sample import`).
    #[arg(long)]
    prompts: PathBuf,
    /// A model: `[alias=]PATH` (HF folder or GGUF file) or
    /// `alias=openai:http://HOST:PORT/v1#served-name` (an OpenAI-compatible
    /// server). Repeat for several models; they run one after another.
    #[arg(long = "model", required = true)]
    models: Vec<String>,
    /// Output folder; each model's samples go to OUT/ALIAS/part-*.parquet.
    #[arg(long)]
    out: PathBuf,
    /// Samples per prompt and model.
    #[arg(long, default_value_t = 5)]
    n: u32,
    /// Sampling temperature; 0 decodes greedily.
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    /// Nucleus sampling: keep the most likely tokens whose probabilities sum
    /// to P (1 = off).
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// 0 = no top-k cut.
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// 0 = no min-p cut.
    #[arg(long, default_value_t = 0.0)]
    min_p: f32,
    /// A response stops at its end-of-turn token or after this many tokens
    /// ("length"; selection sets such cut-off responses aside). The default
    /// fits chat answers and the recipe's 2048-token training length.
    #[arg(long, default_value_t = 2048)]
    max_new_tokens: usize,
    /// HF folders: quantize the projections and LM head at load for speed
    /// (q8_0: near-exact, and several times faster than `none`, which samples
    /// on the f32 weights; sampling is random anyway, and training's
    /// log-probs are computed in f32).
    #[arg(long, value_enum, default_value = "q8_0")]
    quantize: Quantize,
    /// With the prompt id, model alias and sample index, fixes each sample's random stream.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Common random numbers: leave the model alias out of each sample's
    /// seed, so every model's sample k of a prompt starts from the same one
    /// (for comparing models on held-out prompts).
    #[arg(long)]
    common_random_numbers: bool,
    /// Also stop at this string (repeatable); EOS and end-of-turn tokens always stop.
    #[arg(long = "stop")]
    stop: Vec<String>,
    /// Which prompts: the train, eval or validation split, or all.
    #[arg(long, value_enum, default_value_t = SplitArg::All)]
    split: SplitArg,
    /// Only the prompt ids listed in this file (one per line).
    #[arg(long)]
    prompt_ids: Option<PathBuf>,
    /// Only the first N prompts (after --split, --prompt-ids and --shard).
    #[arg(long)]
    limit: Option<usize>,
    /// `i/n`: this machine's part of the prompts, by a hash of prompt_id; the n parts are disjoint and cover all.
    #[arg(long, value_parser = parse_shard)]
    shard: Option<(usize, usize)>,
    /// Sequences a local model decodes together (KV-cache slots).
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// CPU threads for a local model [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
    /// Rows per committed shard; a shard is also committed every minute.
    #[arg(long, default_value_t = 1000)]
    shard_rows: usize,
    /// On a rerun, keep skipped samples (a prompt too long, a server's
    /// refusal) as done instead of trying them again.
    #[arg(long)]
    keep_skipped: bool,
    #[command(flatten)]
    remote: wrpo_remote::RemoteArgs,
    /// For tests: abort, as a crash would, after committing this many shards.
    #[arg(long, hide = true)]
    abort_after_shards: Option<usize>,
}

#[derive(Clone, Copy, ValueEnum)]
enum SplitArg {
    Train,
    Eval,
    Validation,
    All,
}

impl GenerateArgs {
    fn check(&self) -> Result<()> {
        if self.max_new_tokens == 0 {
            bail!("--max-new-tokens must be at least 1");
        }
        for (flag, value) in [
            ("--batch-size", self.batch_size),
            ("--shard-rows", self.shard_rows),
            ("--concurrency", self.remote.concurrency.unwrap_or(1)),
            ("--threads", self.threads.unwrap_or(1)),
        ] {
            if value == 0 {
                bail!("{flag} must be at least 1, got 0");
            }
        }
        check_paths(&[("--out", &self.out)], &[("--prompts", &self.prompts)])
    }

    pub fn run(self) -> Result<()> {
        self.check()?;
        wrpo_llm::set_threads(self.threads);
        let models = self.models.iter().map(|m| ModelSpec::parse(m)).collect::<Result<Vec<_>>>()?;
        let served = models.iter().any(|m| matches!(m.source, wrpo_sampler::spec::Source::Openai { .. }));
        self.remote.warn_if_unused(served, "no --model is openai:URL#MODEL");
        let settings = Settings {
            n: self.n,
            sampling: SamplingParams { temperature: self.temperature, top_p: self.top_p, top_k: self.top_k, min_p: self.min_p },
            max_new_tokens: self.max_new_tokens,
            seed: self.seed,
            stop: self.stop,
            quantize: self.quantize,
            common_seeds: self.common_random_numbers,
        };
        let selection = Selection {
            split: match self.split {
                SplitArg::Train => Some(Split::Train),
                SplitArg::Eval => Some(Split::Eval),
                SplitArg::Validation => Some(Split::Validation),
                SplitArg::All => None,
            },
            prompt_ids: self.prompt_ids.as_deref().map(read_prompt_ids).transpose()?,
            shard: self.shard,
            limit: self.limit,
        };
        let run = RunOptions {
            batch_size: self.batch_size,
            shard_rows: self.shard_rows,
            remote: self.remote.into(),
            keep_skipped: self.keep_skipped,
            abort_after_shards: self.abort_after_shards,
        };
        let all: Vec<Prompt> = read_dataset(&self.prompts)?;
        let prompts = select_prompts(all, &selection).with_context(|| format!("selecting prompts of {}", self.prompts.display()))?;
        if prompts.is_empty() {
            bail!("no prompt of {} is left after --split, --prompt-ids, --shard and --limit", self.prompts.display());
        }
        let interrupted = wrpo_common::interrupt_flag("committing finished samples", false)?;
        generate(&self.prompts, &prompts, &models, &settings, &selection, &run, &self.out, interrupted)
    }
}
