use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use wrpo_common::{read_dataset, sft::SftExample};
use wrpo_trainer::{
    data::{encode_sft, Examples, SftForm},
    train::Stage,
};

use super::training::{report_truncated, Common};

#[derive(Args)]
pub struct SftArgs {
    #[command(flatten)]
    common: Common,
    /// `sft` dataset (from `wrpo-score sft-set`).
    #[arg(long)]
    data: PathBuf,
    /// Held-out `sft` dataset whose loss is logged as eval rows.
    #[arg(long)]
    eval_data: Option<PathBuf>,
    /// Peak learning rate (recipe: 7e-6).
    #[arg(long, default_value = "7e-6")]
    lr: f64,
    /// Loss on every token of each conversation (default: response tokens only).
    #[arg(long, conflicts_with = "packing")]
    loss_on_prompt: bool,
    /// The recipe's SFT: conversations packed into blocks of --max-length
    /// tokens, loss on every token, documents attending only to themselves.
    /// The default (one conversation per example, response tokens only)
    /// suits small data, where every example's answer counts.
    #[arg(long)]
    packing: bool,
    /// With --packing: let documents attend to the ones before them in a
    /// block, as plain concatenation does (the recipe's exact form).
    #[arg(long, requires = "packing")]
    cross_document_attention: bool,
}

impl SftArgs {
    fn check(&self) -> Result<()> {
        self.common.check(self.lr, ("--data", &self.data), self.eval_data.as_deref().map(|p| ("--eval-data", p)))
    }

    pub fn run(self) -> Result<()> {
        self.check()?;
        wrpo_llm::set_threads(self.common.threads);
        let rows = read_dataset::<SftExample>(&self.data)?;
        let (model, enc) = self.common.load()?;
        let form = match (self.packing, self.loss_on_prompt) {
            (true, _) => SftForm::Packed { cross_document: self.cross_document_attention },
            (false, true) => SftForm::AllTokens,
            (false, false) => SftForm::Response,
        };
        let (examples, truncated) = encode_sft(&enc, &rows, form).with_context(|| self.data.display().to_string())?;
        report_truncated(truncated, examples.len(), "SFT examples");
        let eval = match &self.eval_data {
            Some(p) => Some((Examples::Sft(encode_sft(&enc, &read_dataset::<SftExample>(p)?, form).with_context(|| p.display().to_string())?.0), p)),
            None => None,
        };
        let eval = eval.as_ref().map(|(e, p)| (e, p.as_path()));
        self.common.train(self.lr, Stage::Sft { form }, &model, &enc, (&Examples::Sft(examples), &self.data), eval)
    }
}
