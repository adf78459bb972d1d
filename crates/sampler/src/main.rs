//! `wrpo-sample`: its subcommands, each in its own module under `cli/`.

mod cli;

use clap::{Parser, Subcommand};

/// Sample responses from source and target models (WRPO pipeline, step 1 and 6).
#[derive(Parser)]
#[command(name = "wrpo-sample", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// On an error, also print any backtrace a library captured (RUST_BACKTRACE).
    // Last in every subcommand's list, not wherever the count of its own flags puts it.
    #[arg(short, long, global = true, display_order = 1000)]
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
    /// `split` column (train; eval or test; validation) wins over the hash.
    Import(cli::import::ImportArgs),
    /// Import responses already sampled and scored, several per prompt with
    /// their rewards (`prompt_id`, `prompt`, `all_generated_responses`,
    /// `all_rm_scores`, as princeton-nlp/llama3-ultrafeedback-armorm), as
    /// `samples` under OUT_SAMPLES/MODEL/ and `scored` under OUT_SCORES/MODEL/,
    /// ready for `wrpo-score sft-set` and `pairs`. The prompts come from
    /// `wrpo-sample import` of the same file.
    ImportScored(cli::import_scored::ImportScoredArgs),
    /// Sample N responses per prompt from each model into `samples` shards
    /// under OUT/ALIAS/. Rerunning the same command continues an interrupted
    /// run: samples already on disk are kept, never made twice.
    Generate(Box<cli::generate::GenerateArgs>),
}

fn main() {
    wrpo_llm::setup_process();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Import(args) => args.run(),
        Command::ImportScored(args) => args.run(),
        Command::Generate(args) => args.run(),
    };
    wrpo_common::exit_on_error("wrpo-sample", cli.verbose, result);
}
