use std::path::PathBuf;

use anyhow::Result;
use serde::Serialize;
use wrpo_common::{io::check_paths, prompts::Prompt, read_dataset, sft::SftExample, write_dataset, Provenance};
use wrpo_scorer::{score::PRODUCER, select::reference_sft};

#[derive(clap::Args, Serialize)]
pub struct ReferenceSetArgs {
    /// `prompts` dataset of every split (the references, and the held-out prompts to keep out).
    #[arg(long)]
    prompts: PathBuf,
    /// `sft` dataset whose prompts the source is trained on (from `sft-set`).
    #[arg(long)]
    sft: PathBuf,
    /// `prompts` dataset of the preference part (from `sft-set --out-preference`), kept out.
    #[arg(long)]
    preference: PathBuf,
    /// Output `sft` dataset (x, reference answer).
    #[arg(long)]
    out: PathBuf,
}

impl ReferenceSetArgs {
    fn check(&self) -> Result<()> {
        check_paths(&[("--out", &self.out)], &[("--prompts", &self.prompts), ("--sft", &self.sft), ("--preference", &self.preference)])
    }

    pub fn run(self) -> Result<()> {
        self.check()?;
        let prompts = read_dataset::<Prompt>(&self.prompts)?;
        let sft = read_dataset::<SftExample>(&self.sft)?;
        let preference = read_dataset::<Prompt>(&self.preference)?;
        let examples = reference_sft(&prompts, &sft, &preference).map_err(|e| anyhow::anyhow!("{}: {e}", self.sft.display()))?;
        let prov = Provenance::new(PRODUCER, &self)?.with_input(&self.prompts)?.with_input(&self.sft)?.with_input(&self.preference)?;
        write_dataset(&self.out, &examples, &prov)?;
        eprintln!("{} (prompt, reference) examples -> {}; none is a preference, validation or test prompt", examples.len(), self.out.display());
        Ok(())
    }
}
