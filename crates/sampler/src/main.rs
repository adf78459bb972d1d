use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};
use wrpo_common::{prompts::Split, write_dataset, Provenance};
use wrpo_sampler::import::{import_prompts, write_rejected, ImportOptions};

/// Sample responses from source and target models (WRPO pipeline, step 1 and 6).
#[derive(Parser)]
#[command(name = "wrpo-sample", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Import prompts from JSONL or Parquet into a `prompts` dataset.
    ///
    /// Accepts rows with a `prompt` string, a `messages` list (role/content) or
    /// a `conversations` list (from/value), optionally with their own
    /// `prompt_id` (UltraFeedback). Rows are deduplicated by prompt_id and split
    /// into train/eval by a hash of the id, so the split is stable.
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
}

fn main() {
    wrpo_common::exit_on_error("wrpo-sample", run(Cli::parse()));
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Import {
            input,
            out,
            eval_fraction,
            seed,
            reference_column,
            strip_last_assistant,
            origin,
            skip_bad,
            rejected,
        } => {
            let opts = ImportOptions { eval_fraction, seed, reference_column, strip_last_assistant, origin };
            let imported = import_prompts(&input, &opts)?;
            let bad = &imported.rejected;
            if !bad.is_empty() && !skip_bad {
                let shown: Vec<String> =
                    bad.iter().take(10).map(|r| format!("  {}:{}: {}", input.display(), r.location, r.reason)).collect();
                bail!(
                    "{} bad row(s) in {}; nothing was written. Fix them, or pass --skip-bad to import the rest:\n{}{}",
                    bad.len(),
                    input.display(),
                    shown.join("\n"),
                    if bad.len() > 10 { "\n  ..." } else { "" }
                );
            }
            if imported.prompts.is_empty() {
                bail!("{} holds no importable prompt", input.display());
            }
            if !bad.is_empty() {
                let path = rejected.unwrap_or_else(|| out.with_extension("rejected.jsonl"));
                write_rejected(&path, bad)?;
                eprintln!("wrote {} rejected row(s) with their reasons to {}", bad.len(), path.display());
            }
            let prov = Provenance::new(concat!("wrpo-sample ", env!("CARGO_PKG_VERSION")), &opts)?.with_input(&input)?;
            write_dataset(&out, &imported.prompts, &prov)?;
            let eval = imported.prompts.iter().filter(|p| p.split == Split::Eval).count();
            eprintln!(
                "imported {} prompts ({} train, {eval} eval) into {}; {} duplicate(s) dropped, {} bad row(s) skipped",
                imported.prompts.len(),
                imported.prompts.len() - eval,
                out.display(),
                imported.duplicates,
                bad.len()
            );
            Ok(())
        }
    }
}
