use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};
use serde::Serialize;
use wrpo_common::{prompts::Prompt, read_dataset, scored::ScoredSample, write_dataset, Provenance};
use wrpo_scorer::select::{make_pairs, sft_split, ByPrompt, PairOptions, Strategy};

const PRODUCER: &str = concat!("wrpo-score ", env!("CARGO_PKG_VERSION"));

/// Score samples with a reward model and build the SFT set and WRPO pairs.
#[derive(Parser)]
#[command(name = "wrpo-score", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Split the train prompts into an SFT part and a preference part, and
    /// write the SFT set (x, y_ws) and the preference prompts.
    SftSet(SftSetArgs),
    /// Build preference pairs (x, y_ws, y_wt, y_l) for the preference prompts.
    Pairs(PairsArgs),
}

#[derive(clap::Args, Serialize)]
struct SftSetArgs {
    /// `prompts` dataset (only its train split is used).
    #[arg(long)]
    prompts: PathBuf,
    /// Scored source samples (a file or a folder of shards).
    #[arg(long)]
    source_scores: PathBuf,
    /// Fraction of the train prompts used for SFT (paper: one third; FuseChat-3.0: 0.4).
    #[arg(long, default_value_t = 1.0 / 3.0)]
    sft_fraction: f64,
    /// Seed of the SFT/preference split.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Output `sft` dataset.
    #[arg(long)]
    out: PathBuf,
    /// Output `prompts` dataset of the preference part.
    #[arg(long)]
    out_preference: PathBuf,
}

#[derive(clap::Args, Serialize)]
struct PairsArgs {
    /// `prompts` dataset of the preference part (from `sft-set --out-preference`).
    #[arg(long)]
    prompts: PathBuf,
    /// Scored source samples.
    #[arg(long)]
    source_scores: PathBuf,
    /// Scored samples of the target (Target-SFT); required by --strategy wrpo.
    #[arg(long)]
    target_scores: Option<PathBuf>,
    /// How chosen and rejected responses are picked.
    #[arg(long, value_enum, default_value_t = Strategy::Wrpo)]
    strategy: Strategy,
    /// fusechat: smallest reward gap kept.
    #[arg(long, default_value_t = 0.01)]
    min_gap: f64,
    /// fusechat: largest reward gap kept.
    #[arg(long, default_value_t = 0.1)]
    max_gap: f64,
    /// Output `pairs` dataset.
    #[arg(long)]
    out: PathBuf,
}

fn main() {
    wrpo_common::exit_on_error("wrpo-score", run(Cli::parse()));
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::SftSet(args) => {
            if !(0.0..=1.0).contains(&args.sft_fraction) {
                bail!("--sft-fraction must lie in [0, 1], got {}", args.sft_fraction);
            }
            let prompts = read_dataset::<Prompt>(&args.prompts)?;
            let scores = read_dataset::<ScoredSample>(&args.source_scores)?;
            let split = sft_split(&prompts, &ByPrompt::new(&scores), args.sft_fraction, args.seed);
            let prov = Provenance::new(PRODUCER, &args)?.with_input(&args.prompts)?.with_input(&args.source_scores)?;
            write_dataset(&args.out, &split.sft, &prov)?;
            write_dataset(&args.out_preference, &split.preference, &prov)?;
            eprintln!(
                "{} SFT examples -> {}; {} preference prompts -> {}; {} train prompts had no scored source sample",
                split.sft.len(),
                args.out.display(),
                split.preference.len(),
                args.out_preference.display(),
                split.unscored
            );
        }
        Command::Pairs(args) => {
            let prompts = read_dataset::<Prompt>(&args.prompts)?;
            let source = read_dataset::<ScoredSample>(&args.source_scores)?;
            let mut prov = Provenance::new(PRODUCER, &args)?.with_input(&args.prompts)?.with_input(&args.source_scores)?;
            let target = match (&args.target_scores, args.strategy) {
                (Some(path), _) => {
                    prov = prov.with_input(path)?;
                    read_dataset::<ScoredSample>(path)?
                }
                (None, Strategy::Wrpo) => bail!("--strategy wrpo needs --target-scores"),
                (None, Strategy::Fusechat) => Vec::new(),
            };
            let opts = PairOptions { strategy: args.strategy, min_gap: args.min_gap, max_gap: args.max_gap };
            let (pairs, dropped) = make_pairs(&prompts, &ByPrompt::new(&source), &ByPrompt::new(&target), &opts);
            if pairs.is_empty() {
                bail!("no pair could be built from {} prompts: {}", prompts.len(), serde_json::to_string(&dropped)?);
            }
            write_dataset(&args.out, &pairs, &prov)?;
            eprintln!(
                "{} pairs from {} prompts -> {}; dropped: {}",
                pairs.len(),
                prompts.len(),
                args.out.display(),
                serde_json::to_string(&dropped)?
            );
        }
    }
    Ok(())
}
