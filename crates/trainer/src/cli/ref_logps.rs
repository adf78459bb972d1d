use std::path::PathBuf;

use anyhow::{bail, Result};
use candle_core::DType;
use clap::Args;
use wrpo_common::{io::check_paths, pairs::Pair, read_dataset, write_dataset, Provenance};
use wrpo_llm::{bf16::Precision, LoadOptions, Model};
use wrpo_trainer::{
    data::{encode_pairs, Sequence},
    reference::{reference_logps, ReferenceRecord},
    train::{use_precision, PRODUCER},
};

use super::training::{encoder, report_truncated};

#[derive(Args)]
pub struct RefArgs {
    /// The reference model (Target-SFT): an HF folder or a GGUF file.
    #[arg(long)]
    model: PathBuf,
    /// `pairs` dataset.
    #[arg(long)]
    pairs: PathBuf,
    /// Output `pairs` dataset with the reference columns filled.
    #[arg(long)]
    out: PathBuf,
    /// Pairs per forward pass.
    #[arg(long, default_value_t = 4)]
    micro_batch: usize,
    /// As the training runs' --max-length: the pairs are truncated as they will be.
    #[arg(long, default_value_t = 2048)]
    max_length: usize,
    /// As the training runs' --max-prompt-length.
    #[arg(long, default_value_t = 1800)]
    max_prompt_length: usize,
    /// The matmuls' precision, that of the training runs these pairs feed
    /// (their first step checks the policy against these log-probs): f32;
    /// bf16 (operands rounded to bf16, sums in f32, on the CPU's bf16 units);
    /// auto: bf16 where the CPU has bf16 units.
    #[arg(long, default_value = "f32", value_parser = Precision::parse)]
    precision: Precision,
    /// CPU threads [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
}

impl RefArgs {
    fn check(&self) -> Result<()> {
        if self.micro_batch == 0 {
            bail!("--micro-batch must be at least 1, got 0");
        }
        check_paths(&[("--out", &self.out)], &[("--pairs", &self.pairs), ("--model", &self.model)])
    }

    pub fn run(self) -> Result<()> {
        self.check()?;
        wrpo_llm::set_threads(self.threads);
        let mut pairs = read_dataset::<Pair>(&self.pairs)?;
        let model = Model::load(&self.model, &LoadOptions::frozen(DType::F32))?;
        if model.has_quantized() {
            bail!("{}: the reference must be a dense model", self.model.display());
        }
        let tokenizer = wrpo_llm::Tokenizer::load(&self.model)?;
        let enc = encoder(&model, tokenizer, self.max_length, self.max_prompt_length, &self.model)?;
        let (examples, truncated) = encode_pairs(&enc, &pairs, None, &self.pairs)?;
        report_truncated(truncated, examples.len(), "pairs");
        let precision = self.precision;
        use_precision(&model, precision)?;
        let record = ReferenceRecord::of(&self.model, &enc, precision)?;
        let logps = reference_logps(&model, &examples, self.micro_batch)?;
        for ((p, l), e) in pairs.iter_mut().zip(&logps).zip(&examples) {
            (p.ref_logp_y_ws, p.ref_logp_y_wt, p.ref_logp_y_l) = (Some(l[0]), Some(l[1]), Some(l[2]));
            let tokens = |s: &Option<Sequence>| s.as_ref().map(|s| s.response_len() as u32);
            (p.ref_tokens_y_ws, p.ref_tokens_y_wt, p.ref_tokens_y_l) =
                (tokens(&e.seqs.y_ws), tokens(&e.seqs.y_wt), Some(e.seqs.y_l.response_len() as u32));
        }
        let config =
            serde_json::json!({"model": self.model, "max_length": self.max_length, "max_prompt_length": self.max_prompt_length, "reference": record});
        let prov = Provenance::new(PRODUCER, &config)?.with_input(&self.pairs)?.with_input(&self.model)?;
        write_dataset(&self.out, &pairs, &prov)?;
        eprintln!("reference log-probs of {} pairs -> {}", pairs.len(), self.out.display());
        Ok(())
    }
}
