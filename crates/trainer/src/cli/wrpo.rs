use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::Args;
use wrpo_common::{
    io::{check_keys, dataset_files, read_file},
    pairs::Pair,
};
use wrpo_trainer::{
    data::{encode_pairs, subsample, Examples},
    loss::{Chosen, LossKind, Objective, SIMPO_GAMMA_BETA_RATIO},
    reference::ReferenceRecord,
    train::Stage,
};

use super::training::{in_range, report_truncated, Common};

#[derive(Args)]
pub struct WrpoArgs {
    #[command(flatten)]
    common: Common,
    /// `pairs` dataset with reference log-probs (from `wrpo-train ref-logps`).
    #[arg(long)]
    pairs: PathBuf,
    /// Held-out pairs (with reference log-probs) whose metrics are logged as eval rows.
    #[arg(long)]
    eval_pairs: Option<PathBuf>,
    /// Train on N of the pairs, the same N for every run and seed (picked by a
    /// hash of the prompt id): an ablation on a subsample.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    subsample: Option<u64>,
    /// Peak learning rate (recipe: 3e-7 for an 8B target).
    #[arg(long, default_value = "3e-7")]
    lr: f64,
    /// The objective (docs/method.md): WRPO, or a baseline on the same pairs.
    #[arg(long, value_enum, default_value_t = LossKind::Wrpo)]
    loss: LossKind,
    /// The chosen response of the pairwise losses (dpo, simpo, ipo).
    #[arg(long, value_enum, default_value_t = Chosen::Target)]
    dpo_chosen: Chosen,
    /// [default: per loss, from its source: 0.01 for wrpo, dpo and
    /// sigmoid-mix (the WRPO recipe), 2.0 for the SimPO forms, 0.1 (tau) for
    /// the IPO forms]
    #[arg(long)]
    beta: Option<f64>,
    /// Fusion coefficient alpha_max; alpha = alpha_max * t / T at optimizer step t of T, as the official trainer.
    #[arg(long, default_value_t = 0.1)]
    alpha_max: f64,
    /// alpha = alpha_max at every step instead.
    #[arg(long)]
    static_alpha: bool,
    /// Label smoothing eps of the sigmoid losses: -log sig(z) becomes
    /// -(1 - eps) log sig(z) - eps log sig(-z) (conservative DPO).
    #[arg(long, default_value_t = 0.0)]
    label_smoothing: f64,
    /// SimPO's target reward margin gamma [default: 0.5 * beta, SimPO's gamma/beta ratio].
    #[arg(long)]
    simpo_gamma: Option<f64>,
}

impl WrpoArgs {
    /// The loss with its defaults filled in.
    fn objective(&self) -> Objective {
        let beta = self.beta.unwrap_or(self.loss.default_beta());
        let gamma = self.simpo_gamma.unwrap_or(SIMPO_GAMMA_BETA_RATIO * beta);
        Objective { loss: self.loss, chosen: self.dpo_chosen, beta, label_smoothing: self.label_smoothing, gamma }
    }

    fn check(&self) -> Result<()> {
        check_objective(&self.objective(), self.alpha_max)?;
        self.common.check(self.lr, ("--pairs", &self.pairs), self.eval_pairs.as_deref().map(|p| ("--eval-pairs", p)))
    }

    pub fn run(self) -> Result<()> {
        self.check()?;
        wrpo_llm::set_threads(self.common.threads);
        let c = &self.common;
        let objective = self.objective();
        let (model, enc) = self.common.load()?;
        // The pairs' reference log-probs must be this run's model's, tokenized as this run does.
        let reference = objective.needs_reference().then(|| ReferenceRecord::of(&c.model, &enc, c.precision.precision)).transpose()?;
        let read = |path: &Path| -> Result<Vec<Pair>> {
            let files = dataset_files(path)?.iter().map(|f| read_file::<Pair>(f)).collect::<Result<Vec<_>>>()?;
            check_keys(&files)?;
            for f in &files {
                // Files without reference log-probs are refused by encode_pairs, naming the column.
                let has_refs = f.rows.iter().any(|p| p.ref_logp_y_l.is_some());
                if let Some(r) = reference.as_ref().filter(|_| has_refs) {
                    r.check(&f.path, f.provenance.config.get("reference"))?;
                }
            }
            Ok(files.into_iter().flat_map(|f| f.rows).collect())
        };
        let mut pairs = read(&self.pairs)?;
        if let Some(n) = self.subsample {
            if n as usize > pairs.len() {
                bail!("--subsample {n}: {} has only {} pairs", self.pairs.display(), pairs.len());
            }
            pairs = subsample(pairs, n as usize);
        }
        let (examples, truncated) = encode_pairs(&enc, &pairs, Some(&objective), &self.pairs)?;
        report_truncated(truncated, examples.len(), "pairs");
        let eval = match &self.eval_pairs {
            Some(p) => Some((Examples::Pairs(encode_pairs(&enc, &read(p)?, Some(&objective), p)?.0), p)),
            None => None,
        };
        let eval = eval.as_ref().map(|(e, p)| (e, p.as_path()));
        let stage = Stage::Preference { objective, alpha_max: self.alpha_max, static_alpha: self.static_alpha };
        self.common.train(self.lr, stage, &model, &enc, (&Examples::Pairs(examples), &self.pairs), eval)
    }
}

/// The preference settings, range-checked before any model loads.
fn check_objective(o: &Objective, alpha_max: f64) -> Result<()> {
    let checks: [(&str, f64, bool, &str); 4] = [
        ("--beta", o.beta, o.beta > 0.0, "a positive number"),
        ("--alpha-max", alpha_max, (0.0..=1.0).contains(&alpha_max), "in [0, 1]"),
        ("--label-smoothing", o.label_smoothing, (0.0..0.5).contains(&o.label_smoothing), "in [0, 0.5)"),
        ("--simpo-gamma", o.gamma, o.gamma.is_finite(), "a finite number"),
    ];
    in_range(&checks)
}
