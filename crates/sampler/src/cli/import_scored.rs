use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use wrpo_common::{io::check_paths, write_dataset, Provenance};
use wrpo_sampler::{generate::PRODUCER, import::import_scored, spec::check_alias};

use super::{check_rejected, save_rejected};

#[derive(clap::Args)]
pub struct ImportScoredArgs {
    /// Input file: JSON lines or Parquet (told apart by content).
    #[arg(long)]
    input: PathBuf,
    /// Output folder of the `samples` dataset: OUT_SAMPLES/MODEL/part-00000.parquet.
    #[arg(long)]
    out_samples: PathBuf,
    /// Output folder of the `scored` dataset: OUT_SCORES/MODEL/part-00000.parquet.
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
}

impl ImportScoredArgs {
    /// The samples file and the scores file this import writes.
    fn files(&self) -> [PathBuf; 2] {
        [self.out_samples.join(&self.model).join("part-00000.parquet"), self.out_scores.join(&self.model).join("part-00000.parquet")]
    }

    /// Where --skip-bad writes the bad rows.
    fn rejected(&self) -> PathBuf {
        self.rejected.clone().unwrap_or_else(|| self.out_scores.join(format!("{}.rejected.jsonl", self.model)))
    }

    fn check(&self) -> Result<()> {
        check_alias(&self.model).context("--model")?;
        let files = self.files();
        check_paths(&[("--out-samples", &files[0]), ("--out-scores", &files[1]), ("--rejected", &self.rejected())], &[("--input", &self.input)])?;
        for f in &files {
            if f.exists() {
                bail!("{} already exists; delete it to import again, or give other output folders", f.display());
            }
        }
        Ok(())
    }

    pub fn run(self) -> Result<()> {
        self.check()?;
        let (files, rejected) = (self.files(), self.rejected());
        let imported = import_scored(&self.input, &self.model, &self.reward_model)?;
        check_rejected(&self.input, &imported.rejected, self.skip_bad)?;
        if imported.samples.is_empty() {
            bail!("{} holds no importable row", self.input.display());
        }
        for f in &files {
            std::fs::create_dir_all(f.parent().unwrap()).with_context(|| format!("cannot create {}", f.parent().unwrap().display()))?;
        }
        let config = serde_json::json!({"model": self.model, "reward_model": self.reward_model, "skip_bad": self.skip_bad});
        let prov = Provenance::new(PRODUCER, &config)?.with_input(&self.input)?;
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
}
