use std::path::PathBuf;

use anyhow::Result;
use clap::ValueEnum;
use serde::Serialize;
use wrpo_common::{
    export::{TrlExample, WrpoExample},
    io::{check_paths, write_rows},
    pairs::Pair,
    read_dataset, Provenance,
};
use wrpo_scorer::score::PRODUCER;

#[derive(Clone, Copy, PartialEq, Serialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
enum ExportFormat {
    Wrpo,
    Trl,
}

#[derive(Clone, Copy, PartialEq, Serialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
enum ChosenArg {
    /// y_ws, the best source response.
    Source,
    /// y_wt, the best target response (as the DPO baseline).
    Target,
}

#[derive(clap::Args, Serialize)]
pub struct ExportArgs {
    /// `pairs` dataset (from `wrpo-score pairs`).
    #[arg(long)]
    pairs: PathBuf,
    /// wrpo: the official recipe's rows (chosen = [y_ws, y_wt], rejected =
    /// [y_l]); trl: TRL's conversational preference rows (one chosen).
    #[arg(long, value_enum)]
    format: ExportFormat,
    /// `--format trl`: which response is `chosen`.
    #[arg(long, value_enum, default_value = "target")]
    chosen: ChosenArg,
    /// Output file: .parquet or .jsonl.
    #[arg(long)]
    out: PathBuf,
}

impl ExportArgs {
    fn check(&self) -> Result<()> {
        check_paths(&[("--out", &self.out)], &[("--pairs", &self.pairs)])
    }

    pub fn run(self) -> Result<()> {
        self.check()?;
        let pairs = read_dataset::<Pair>(&self.pairs)?;
        let prov = Provenance::new(PRODUCER, &self)?.with_input(&self.pairs)?;
        match self.format {
            ExportFormat::Wrpo => write_rows(&self.out, &pairs.iter().map(WrpoExample::from_pair).collect::<Vec<_>>(), &prov)?,
            ExportFormat::Trl => {
                let rows: Vec<_> = pairs.iter().map(|p| TrlExample::from_pair(p, self.chosen == ChosenArg::Source)).collect();
                write_rows(&self.out, &rows, &prov)?
            }
        }
        eprintln!("{} pairs -> {}", pairs.len(), self.out.display());
        Ok(())
    }
}
