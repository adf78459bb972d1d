use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use wrpo_common::{
    hash::parse_shard,
    io::check_paths,
    prompts::{Prompt, Split},
    read_dataset, write_dataset, Provenance,
};
use wrpo_llm::SamplingParams;
use wrpo_sampler::{
    backend::{Quantize, Settings},
    generate::{generate, read_prompt_ids, select_prompts, RunOptions, Selection},
    import::{import_prompts, import_scored, write_rejected, ImportOptions, Rejected},
    spec::{check_alias, ModelSpec},
};

/// Sample responses from source and target models (WRPO pipeline, step 1 and 6).
#[derive(Parser)]
#[command(name = "wrpo-sample", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// On an error, also print any backtrace a library captured (RUST_BACKTRACE).
    #[arg(short, long, global = true)]
    verbose: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Import prompts from JSONL or Parquet into a `prompts` dataset.
    ///
    /// Accepts rows with a `prompt` string, a `messages` list (role/content) or
    /// a `conversations` list (from/value), optionally with their own
    /// `prompt_id` (UltraFeedback). Rows are deduplicated by prompt_id and split
    /// into train/eval by a hash of the id, so the split is stable; a row's own
    /// `split` (train, eval or test, validation) wins over the hash.
    Import {
        /// Input file: JSON lines or Parquet (told apart by content).
        #[arg(long)]
        input: PathBuf,
        /// Output `prompts` Parquet file.
        #[arg(long)]
        out: PathBuf,
        /// Fraction of prompts held out in the `eval` split.
        #[arg(long, default_value_t = 0.0)]
        eval_fraction: f64,
        /// Seed of the train/eval split.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Column with a reference answer (a string, or a conversation whose
        /// last assistant turn is the answer), e.g. `reference`, `answer`, `chosen`.
        #[arg(long)]
        reference_column: Option<String>,
        /// Drop a final assistant turn from conversations (keeping it as the
        /// reference when no reference column is named) instead of rejecting the row.
        #[arg(long)]
        strip_last_assistant: bool,
        /// Value of the `origin` column [default: the input file name].
        #[arg(long)]
        origin: Option<String>,
        /// Import the good rows and write the bad ones, with their reasons, to
        /// the --rejected file, instead of stopping at the first bad row.
        #[arg(long)]
        skip_bad: bool,
        /// Where --skip-bad writes rejected rows [default: OUT with .rejected.jsonl].
        #[arg(long)]
        rejected: Option<PathBuf>,
    },
    /// Import responses already sampled and scored, several per prompt with
    /// their rewards (`prompt_id`, `prompt`, `all_generated_responses`,
    /// `all_rm_scores`, as princeton-nlp/llama3-ultrafeedback-armorm), as
    /// `samples` under OUT_SAMPLES/MODEL/ and `scored` under OUT_SCORES/MODEL/,
    /// ready for `wrpo-score sft-set` and `pairs`. The prompts come from
    /// `wrpo-sample import` of the same file.
    ImportScored {
        /// Input file: JSON lines or Parquet (told apart by content).
        #[arg(long)]
        input: PathBuf,
        #[arg(long)]
        out_samples: PathBuf,
        #[arg(long)]
        out_scores: PathBuf,
        /// The name of the model that made the responses (an output folder name).
        #[arg(long)]
        model: String,
        /// The name of the reward model that scored them (the `reward_model` column).
        #[arg(long)]
        reward_model: String,
        /// Import the good rows and write the bad ones, with their reasons, to
        /// the --rejected file, instead of stopping at the first bad row.
        #[arg(long)]
        skip_bad: bool,
        /// Where --skip-bad writes rejected rows [default: OUT_SCORES/MODEL.rejected.jsonl].
        #[arg(long)]
        rejected: Option<PathBuf>,
    },
    /// Sample N responses per prompt from each model into `samples` shards
    /// under OUT/ALIAS/. Rerunning the same command continues an interrupted
    /// run: samples already on disk are kept, never made twice.
    Generate(Box<GenerateArgs>),
}

#[derive(clap::Args)]
struct GenerateArgs {
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
    /// (q8_0: near-exact and several times faster than none, f32; sampling is
    /// random anyway, and training's log-probs are computed in f32).
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

fn main() {
    wrpo_llm::setup_process();
    let cli = Cli::parse();
    wrpo_common::exit_on_error("wrpo-sample", cli.verbose, run(cli));
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Generate(args) => run_generate(*args),
        Command::ImportScored { input, out_samples, out_scores, model, reward_model, skip_bad, rejected } => {
            run_import_scored(input, out_samples, out_scores, model, reward_model, skip_bad, rejected)
        }
        Command::Import { input, out, eval_fraction, seed, reference_column, strip_last_assistant, origin, skip_bad, rejected } => {
            let rejected = rejected.unwrap_or_else(|| out.with_extension("rejected.jsonl"));
            check_paths(&[("--out", &out), ("--rejected", &rejected)], &[("--input", &input)])?;
            let opts = ImportOptions { eval_fraction, seed, reference_column, strip_last_assistant, origin };
            let imported = import_prompts(&input, &opts)?;
            let bad = &imported.rejected;
            check_rejected(&input, bad, skip_bad)?;
            if imported.prompts.is_empty() {
                bail!("{} holds no importable prompt", input.display());
            }
            save_rejected(bad, rejected)?;
            let prov = Provenance::new(concat!("wrpo-sample ", env!("CARGO_PKG_VERSION")), &opts)?.with_input(&input)?;
            write_dataset(&out, &imported.prompts, &prov)?;
            let count = |split: Split| imported.prompts.iter().filter(|p| p.split == split).count();
            let validation = match count(Split::Validation) {
                0 => String::new(),
                n => format!(", {n} validation"),
            };
            eprintln!(
                "imported {} prompts ({} train, {} eval{validation}) into {}; {} duplicate(s) dropped, {} bad row(s) skipped",
                imported.prompts.len(),
                count(Split::Train),
                count(Split::Eval),
                out.display(),
                imported.duplicates,
                bad.len()
            );
            Ok(())
        }
    }
}

/// Bad rows stop an import (naming the first ten) unless `skip_bad`.
fn check_rejected(input: &Path, bad: &[Rejected], skip_bad: bool) -> Result<()> {
    if !bad.is_empty() && !skip_bad {
        let shown: Vec<String> = bad.iter().take(10).map(|r| format!("  {}:{}: {}", input.display(), r.location, r.reason)).collect();
        bail!(
            "{} bad row(s) in {}; nothing was written. Fix them, or pass --skip-bad to import the rest:\n{}{}",
            bad.len(),
            input.display(),
            shown.join("\n"),
            if bad.len() > 10 { "\n  ..." } else { "" }
        );
    }
    Ok(())
}

/// With --skip-bad, the bad rows and their reasons go to `path`.
fn save_rejected(bad: &[Rejected], path: PathBuf) -> Result<()> {
    if !bad.is_empty() {
        write_rejected(&path, bad)?;
        eprintln!("wrote {} rejected row(s) with their reasons to {}", bad.len(), path.display());
    }
    Ok(())
}

fn run_import_scored(
    input: PathBuf,
    out_samples: PathBuf,
    out_scores: PathBuf,
    model: String,
    reward_model: String,
    skip_bad: bool,
    rejected: Option<PathBuf>,
) -> Result<()> {
    check_alias(&model).context("--model")?;
    let files = [out_samples.join(&model).join("part-00000.parquet"), out_scores.join(&model).join("part-00000.parquet")];
    let rejected = rejected.unwrap_or_else(|| out_scores.join(format!("{model}.rejected.jsonl")));
    check_paths(&[("--out-samples", &files[0]), ("--out-scores", &files[1]), ("--rejected", &rejected)], &[("--input", &input)])?;
    let imported = import_scored(&input, &model, &reward_model)?;
    check_rejected(&input, &imported.rejected, skip_bad)?;
    if imported.samples.is_empty() {
        bail!("{} holds no importable row", input.display());
    }
    for f in &files {
        if f.exists() {
            bail!("{} already exists; delete it to import again, or give other output folders", f.display());
        }
        std::fs::create_dir_all(f.parent().unwrap()).with_context(|| format!("cannot create {}", f.parent().unwrap().display()))?;
    }
    let config = serde_json::json!({"model": model, "reward_model": reward_model, "skip_bad": skip_bad});
    let prov = Provenance::new(concat!("wrpo-sample ", env!("CARGO_PKG_VERSION")), &config)?.with_input(&input)?;
    write_dataset(&files[0], &imported.samples, &prov)?;
    write_dataset(&files[1], &imported.scored, &prov)?;
    save_rejected(&imported.rejected, rejected)?;
    eprintln!(
        "imported {} scored samples of {} prompts into {} and {}; {} duplicate row(s) dropped, {} bad row(s) skipped",
        imported.samples.len(),
        imported.samples.iter().filter(|s| s.sample_index == 0).count(),
        files[0].display(),
        files[1].display(),
        imported.duplicates,
        imported.rejected.len()
    );
    Ok(())
}

fn run_generate(a: GenerateArgs) -> Result<()> {
    if a.max_new_tokens == 0 {
        bail!("--max-new-tokens must be at least 1");
    }
    wrpo_llm::set_threads(a.threads);
    for (flag, value) in [
        ("--batch-size", a.batch_size),
        ("--shard-rows", a.shard_rows),
        ("--concurrency", a.remote.concurrency.unwrap_or(1)),
        ("--threads", a.threads.unwrap_or(1)),
    ] {
        if value == 0 {
            bail!("{flag} must be at least 1, got 0");
        }
    }
    check_paths(&[("--out", &a.out)], &[("--prompts", &a.prompts)])?;
    let models = a.models.iter().map(|m| ModelSpec::parse(m)).collect::<Result<Vec<_>>>()?;
    let served = models.iter().any(|m| matches!(m.source, wrpo_sampler::spec::Source::Openai { .. }));
    a.remote.warn_if_unused(served, "no --model is openai:URL#MODEL");
    let settings = Settings {
        n: a.n,
        sampling: SamplingParams { temperature: a.temperature, top_p: a.top_p, top_k: a.top_k, min_p: a.min_p },
        max_new_tokens: a.max_new_tokens,
        seed: a.seed,
        stop: a.stop,
        quantize: a.quantize,
        common_seeds: a.common_random_numbers,
    };
    let selection = Selection {
        split: match a.split {
            SplitArg::Train => Some(Split::Train),
            SplitArg::Eval => Some(Split::Eval),
            SplitArg::Validation => Some(Split::Validation),
            SplitArg::All => None,
        },
        prompt_ids: a.prompt_ids.as_deref().map(read_prompt_ids).transpose()?,
        shard: a.shard,
        limit: a.limit,
    };
    let run = RunOptions {
        batch_size: a.batch_size,
        shard_rows: a.shard_rows,
        remote: a.remote.into(),
        keep_skipped: a.keep_skipped,
        abort_after_shards: a.abort_after_shards,
    };
    let all: Vec<Prompt> = read_dataset(&a.prompts)?;
    let prompts = select_prompts(all, &selection).with_context(|| format!("selecting prompts of {}", a.prompts.display()))?;
    if prompts.is_empty() {
        bail!("no prompt of {} is left after --split, --prompt-ids, --shard and --limit", a.prompts.display());
    }
    let interrupted = wrpo_common::interrupt_flag("committing finished samples", false)?;
    generate(&a.prompts, &prompts, &models, &settings, &selection, &run, &a.out, interrupted)
}
