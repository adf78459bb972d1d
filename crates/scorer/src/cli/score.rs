use std::path::PathBuf;

use anyhow::{bail, Result};
use wrpo_common::{hash::parse_shard, io::check_paths, prompts::Prompt, read_dataset};
use wrpo_llm::bf16::Precision;
use wrpo_scorer::{
    score::{score, ScoreOptions, ScoreSettings},
    spec::{RewardDtype, RewardSpec},
};

#[derive(clap::Args)]
pub struct ScoreArgs {
    /// `prompts` dataset the samples answer (messages and reference answers).
    #[arg(long)]
    prompts: PathBuf,
    /// `samples` dataset: a file or a folder of shards (e.g. OUT/*/ of `wrpo-sample generate`).
    #[arg(long)]
    samples: PathBuf,
    /// `rm:PATH` (an HF reward model: *ForSequenceClassification or ArmoRM),
    /// `classify:URL#MODEL` (one served by vLLM at http://HOST:PORT/classify
    /// or SGLang at …/v1/classify), `similarity:PATH` (a sentence-transformers
    /// folder; cosine to the reference), `similarity:openai:URL#MODEL` (the
    /// same through a server's /v1/embeddings), `judge:openai:URL#MODEL` (an LLM
    /// judge's 1-10 grade), `exact` or `numeric[:TOLERANCE]` (verifiers).
    #[arg(long, value_parser = RewardSpec::parse)]
    reward: RewardSpec,
    /// classify: render conversations here with this reward-model folder's
    /// tokenizer and chat template and send them as text (SGLang needs it).
    #[arg(long)]
    render_with: Option<PathBuf>,
    /// classify: before scoring, check that the server scores a known
    /// conversation as this local checkpoint of the reward model does.
    #[arg(long)]
    check_against: Option<PathBuf>,
    #[command(flatten)]
    remote: wrpo_remote::RemoteArgs,
    /// Output folder: OUT/<model>/part-*.parquet and OUT/summary.json.
    #[arg(long)]
    out: PathBuf,
    /// Weight type of a reward model.
    #[arg(long, value_enum, default_value_t = RewardDtype::F32)]
    dtype: RewardDtype,
    /// The matmuls' precision for an `rm:` reward model on f32 weights: f32;
    /// bf16 (operands rounded to bf16, sums in f32, on the CPU's AMX or
    /// AVX512-BF16 units, as `wrpo-train --precision`); auto (bf16 where the
    /// CPU has those units). Other rewards run no model of ours.
    #[arg(long, default_value = "f32", value_parser = Precision::parse)]
    precision: Precision,
    /// Leave out (and count) samples whose prompt has no reference, instead of failing.
    #[arg(long)]
    skip_unreferenced: bool,
    /// `i/n`: this machine's part of the prompts, by a hash of prompt_id (as `wrpo-sample --shard`).
    #[arg(long, value_parser = parse_shard)]
    shard: Option<(usize, usize)>,
    /// Tokens per batch: padded (batch size x longest) for similarity models; for reward
    /// models, which run each sequence unpadded and each prompt once, the sum of lengths.
    #[arg(long, default_value_t = 4096)]
    batch_tokens: usize,
    /// Samples per batch for rewards that run no model here (verifiers and
    /// served rewards, whose requests a batch's items are spread over).
    #[arg(long, default_value_t = 256)]
    batch_items: usize,
    /// CPU threads [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
    /// Rows per committed shard; a shard is also committed every minute.
    #[arg(long, default_value_t = 2000)]
    shard_rows: usize,
    /// Tests only: abort after this many committed shards, as a crash would.
    #[arg(long, hide = true)]
    abort_after_shards: Option<usize>,
}

impl ScoreArgs {
    fn check(&self) -> Result<()> {
        for (flag, value) in [
            ("--batch-tokens", self.batch_tokens),
            ("--batch-items", self.batch_items),
            ("--shard-rows", self.shard_rows),
            ("--threads", self.threads.unwrap_or(1)),
            ("--concurrency", self.remote.concurrency.unwrap_or(1)),
        ] {
            if value == 0 {
                bail!("{flag} must be at least 1, got 0");
            }
        }
        check_paths(&[("--out", &self.out)], &[("--prompts", &self.prompts), ("--samples", &self.samples)])
    }

    pub fn run(self) -> Result<()> {
        self.check()?;
        wrpo_llm::set_threads(self.threads);
        let reward = self.reward.with_options(self.render_with, self.dtype, self.precision, self.check_against.as_deref())?;
        let served = reward.served();
        self.remote.warn_if_unused(served, "this --reward is not served");
        let settings =
            ScoreSettings { reward, precision: self.precision, dtype: self.dtype, skip_unreferenced: self.skip_unreferenced, shard: self.shard };
        let options = ScoreOptions {
            batch_tokens: self.batch_tokens,
            batch_items: self.batch_items,
            shard_rows: self.shard_rows,
            remote: self.remote.into(),
            check_against: self.check_against,
            abort_after_shards: self.abort_after_shards,
        };
        let prompts: Vec<Prompt> = read_dataset(&self.prompts)?;
        let interrupted = wrpo_common::interrupt_flag("committing finished batches", served)?;
        let summary = score(&self.prompts, &prompts, &self.samples, &settings, &options, &self.out, interrupted)?;
        eprintln!("{}", serde_json::to_string_pretty(&summary)?);
        Ok(())
    }
}
