//! The frozen reference model's log-probs of the pairs' responses, which
//! the reference-based objectives (WRPO, DPO, IPO and their forms) compare
//! the policy's with: computed once by `wrpo-train ref-logps`
//! ([`reference_logps`]), recorded with what fixes them
//! ([`ReferenceRecord`], in the pairs file's provenance), and checked by
//! preference training: the record against the run's before it starts, the
//! log-probs against the policy at its first step ([`check_at_start`]).

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::DType;
use serde::{Deserialize, Serialize};
use wrpo_common::progress::Progress;
use wrpo_llm::{bf16::Precision, Model};

use crate::{
    data::{split, Encoder, PairExample, Sequence, RERUN_REF},
    loss::{Objective, Y},
};

/// Fill the reference log-probs of every pair with the frozen reference
/// model: the same forward and tokenization as training, computed once.
pub fn reference_logps(model: &Model, examples: &[PairExample], micro_batch: usize) -> Result<Vec<[f64; 3]>> {
    let mut out = Vec::with_capacity(examples.len());
    let mut progress = Progress::new(examples.len() as u64, "pairs");
    progress.set_model("ref-logps");
    for chunk in examples.chunks(micro_batch.max(1)) {
        let seqs: Vec<&Sequence> = Y::ALL.into_iter().flat_map(|y| chunk.iter().map(move |e| e.seq(y))).collect();
        let logps = model.response_logprobs(&split(&seqs))?;
        let v = logps.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        let n = chunk.len();
        for (i, e) in chunk.iter().enumerate() {
            let row = [v[i], v[n + i], v[2 * n + i]];
            if row.iter().any(|x| !x.is_finite()) {
                bail!("prompt {}: a reference log-prob is not finite ({row:?})", e.prompt_id);
            }
            out.push(row);
        }
        progress.add(n as u64, seqs.iter().map(|s| s.response_len() as u64).sum());
    }
    progress.finish();
    Ok(out)
}

/// What fixes the reference log-probs of a pairs file: `ref-logps` records it
/// in the file's provenance (`reference`), `wrpo` refuses pairs whose record
/// differs from its own run, since every implicit reward would shift silently.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReferenceRecord {
    /// Content hash of the reference model, which must be the model
    /// preference training starts from (Target-SFT).
    pub model_sha256: String,
    /// [`Encoder::fingerprint`]: tokenizer, chat template and end-of-turn token.
    pub tokens_sha256: String,
    pub max_length: usize,
    pub max_prompt_length: usize,
    /// The matmuls' precision: a bf16 forward's log-probs differ from an
    /// f32 one's by more than the first step's check allows (files from
    /// before it was recorded were f32).
    #[serde(default)]
    pub precision: Precision,
}

impl ReferenceRecord {
    pub fn of(model: &Path, enc: &Encoder, precision: Precision) -> Result<Self> {
        Ok(ReferenceRecord {
            model_sha256: wrpo_common::io::content_sha256(model)?,
            tokens_sha256: enc.fingerprint(),
            max_length: enc.truncation.max_length,
            max_prompt_length: enc.truncation.max_prompt_length,
            precision,
        })
    }

    /// Refuse a pairs file whose recorded reference (`recorded`, its
    /// provenance's `reference`) differs from this run's, naming the field.
    /// A file without one (written by another tool or an older version)
    /// cannot be checked here; the check at the first step still applies.
    pub fn check(&self, file: &Path, recorded: Option<&serde_json::Value>) -> Result<()> {
        let Some(recorded) = recorded.filter(|r| !r.is_null()) else {
            eprintln!("warning: {} records no reference model; its log-probs are checked at the first step only", file.display());
            return Ok(());
        };
        let r: ReferenceRecord =
            serde_json::from_value(recorded.clone()).with_context(|| format!("{}: its 'reference' record is not readable", file.display()))?;
        let differs = |what: String| anyhow!("{}: its reference log-probs were computed with {what}; {RERUN_REF}", file.display());
        if r.tokens_sha256 != self.tokens_sha256 {
            return Err(differs("another tokenizer or chat template than this run's model has".into()));
        }
        if (r.max_length, r.max_prompt_length) != (self.max_length, self.max_prompt_length) {
            return Err(differs(format!(
                "--max-length {} --max-prompt-length {}, this run uses {} and {}",
                r.max_length, r.max_prompt_length, self.max_length, self.max_prompt_length
            )));
        }
        if r.precision != self.precision {
            return Err(differs(format!("{} matmuls, this run uses {}", r.precision.name(), self.precision.name())));
        }
        if r.model_sha256 != self.model_sha256 {
            return Err(differs(format!(
                "a reference model (sha256 {}) other than the model this run starts from (sha256 {}); the reference is that model (Target-SFT)",
                &r.model_sha256[..12.min(r.model_sha256.len())],
                &self.model_sha256[..12]
            )));
        }
        Ok(())
    }
}

/// At the first step the policy is the reference, so policy minus
/// reference log-probs must be ~0 (rounding of a differently packed
/// forward aside): anything else means the pairs' reference log-probs
/// came from another model, template or truncation. `model` is the policy,
/// `batch` the first micro-batch.
pub fn check_at_start(model: &Model, objective: &Objective, batch: &[&PairExample]) -> Result<()> {
    if !objective.needs_reference() {
        return Ok(());
    }
    let mut seqs = Vec::new();
    let mut refs = Vec::new();
    for y in objective.responses() {
        for e in batch {
            let Some(r) = e.reference else { continue };
            seqs.push(e.seq(y));
            refs.push((e.prompt_id.as_str(), y, r[y.index()]));
        }
    }
    let policy = model.response_logprobs(&split(&seqs))?.detach().to_dtype(DType::F64)?.to_vec1::<f64>()?;
    for (logp, (prompt_id, y, reference)) in policy.iter().zip(refs) {
        if (logp - reference).abs() > 0.05 + 1e-4 * reference.abs() {
            bail!(
                "at the first step the policy is the reference, but on prompt {prompt_id} log pi({y:?}) is {logp:.4} and the pairs' reference log-prob {reference:.4}: \
                 they were computed with another model, template or truncation; {RERUN_REF}"
            );
        }
    }
    Ok(())
}
