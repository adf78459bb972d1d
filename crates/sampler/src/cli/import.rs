use std::path::PathBuf;

use anyhow::{bail, Result};
use wrpo_common::{io::check_paths, prompts::Split, write_dataset, Provenance};
use wrpo_sampler::{
    generate::PRODUCER,
    import::{import_prompts, ImportOptions},
};

use super::{check_rejected, save_rejected};

#[derive(clap::Args)]
pub struct ImportArgs {
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
}

impl ImportArgs {
    /// Where --skip-bad writes the bad rows.
    fn rejected(&self) -> PathBuf {
        self.rejected.clone().unwrap_or_else(|| self.out.with_extension("rejected.jsonl"))
    }

    fn check(&self) -> Result<()> {
        check_paths(&[("--out", &self.out), ("--rejected", &self.rejected())], &[("--input", &self.input)])
    }

    pub fn run(self) -> Result<()> {
        self.check()?;
        let rejected = self.rejected();
        let Self { input, out, eval_fraction, seed, reference_column, strip_last_assistant, origin, skip_bad, .. } = self;
        let opts = ImportOptions { eval_fraction, seed, reference_column, strip_last_assistant, origin };
        let imported = import_prompts(&input, &opts)?;
        let bad = &imported.rejected;
        check_rejected(&input, bad, skip_bad)?;
        if imported.prompts.is_empty() {
            bail!("{} holds no importable prompt", input.display());
        }
        save_rejected(bad, rejected)?;
        let prov = Provenance::new(PRODUCER, &opts)?.with_input(&input)?;
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
