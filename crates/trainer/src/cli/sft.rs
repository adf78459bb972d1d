use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use wrpo_common::{io::check_paths, read_dataset, sft::SftExample};
use wrpo_trainer::{
    data::{encode_sft, Examples, SftForm},
    train::{load_model, Stage},
};

use super::training::{check_settings, encoder, report_truncated, train, Common};

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
        let c = &self.common;
        check_settings(c, self.lr)?;
        let mut inputs = vec![("--data", self.data.as_path()), ("--model", c.model.as_path())];
        inputs.extend(self.eval_data.as_deref().map(|p| ("--eval-data", p)));
        check_paths(&[("--out", &c.out)], &inputs)
    }

    pub fn run(self) -> Result<()> {
        self.check()?;
        wrpo_llm::set_threads(self.common.threads);
        let c = &self.common;
        let rows = read_dataset::<SftExample>(&self.data)?;
        let (model, tokenizer) = load_model(&c.model)?;
        let enc = encoder(&model, tokenizer, c.max_length, c.max_prompt_length, &c.model)?;
        let form = match (self.packing, self.loss_on_prompt) {
            (true, _) => SftForm::Packed { cross_document: self.cross_document_attention },
            (false, true) => SftForm::AllTokens,
            (false, false) => SftForm::Response,
        };
        let (examples, truncated) = encode_sft(&enc, &rows, form).with_context(|| self.data.display().to_string())?;
        report_truncated(truncated, examples.len(), "SFT examples");
        let eval = match &self.eval_data {
            Some(p) => Some(Examples::Sft(encode_sft(&enc, &read_dataset::<SftExample>(p)?, form).with_context(|| p.display().to_string())?.0)),
            None => None,
        };
        let mut inputs = vec![self.data.clone(), c.model.clone()];
        inputs.extend(self.eval_data.clone());
        train(c, self.lr, Stage::Sft { form }, &model, &enc, &Examples::Sft(examples), eval.as_ref(), inputs)?;
        Ok(())
    }
}
