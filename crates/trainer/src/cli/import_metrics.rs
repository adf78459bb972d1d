use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use wrpo_common::{io::check_paths, write_dataset, Provenance};
use wrpo_trainer::{train::PRODUCER, trainer_state};

#[derive(Args)]
pub struct ImportArgs {
    /// trainer_state.json of the run (in its output folder or a checkpoint-N folder).
    state: PathBuf,
    /// Output `metrics` Parquet; the plot is written beside it (same name, .png).
    #[arg(long)]
    out: PathBuf,
    /// The rows' stage (wrpo, dpo, sft, ...) [default: wrpo if the log has
    /// preference rewards, else sft].
    #[arg(long)]
    stage: Option<String>,
}

impl ImportArgs {
    fn check(&self) -> Result<()> {
        // --out m.png would be written, then overwritten by its own plot.
        check_paths(&[("--out", &self.out), ("its plot (--out with .png)", &self.out.with_extension("png"))], &[("STATE", &self.state)])
    }

    pub fn run(self) -> Result<()> {
        self.check()?;
        let plot = self.out.with_extension("png");
        let text = std::fs::read_to_string(&self.state).with_context(|| format!("cannot read {}", self.state.display()))?;
        let state = trainer_state::parse_state(&text, &self.state)?;
        let log = trainer_state::log_history(&state, &self.state)?;
        let stage = self.stage.clone().unwrap_or_else(|| trainer_state::default_stage(&log).to_string());
        trainer_state::check_stage(&stage)?;
        let metrics = trainer_state::metrics_from_log(&log, &stage, &self.state)?;
        if let Some(first) = metrics.iter().find(|m| !m.loss.is_finite()) {
            let n = metrics.iter().filter(|m| !m.loss.is_finite()).count();
            eprintln!(
                "warning: {n} rows have a loss that is not a finite number, the first at {} step {}: the run diverged",
                first.stage, first.step
            );
        }
        let prov = Provenance::new(PRODUCER, &serde_json::json!({"stage": stage}))?.with_input(&self.state)?;
        write_dataset(&self.out, &metrics, &prov)?;
        wrpo_trainer::plot::plot(&metrics, &plot)?;
        eprintln!("{} rows ({stage}) -> {} and {}", metrics.len(), self.out.display(), plot.display());
        Ok(())
    }
}
