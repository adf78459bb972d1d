//! Log-probabilities of label tokens through the LM head, in bounded memory.
//!
//! A naive `log_softmax(hidden @ W^T).gather(labels)` keeps (rows x vocab)
//! logits, their softmax and their gradients alive until backward ends: for
//! Gemma-3's 262k vocabulary and 768 rows that is several GB. Here the
//! forward and the backward both walk the rows in chunks and keep only the
//! (rows,) result; the backward recomputes each chunk's softmax and applies
//! the analytic gradient of log p(label):
//!   d/dlogit_v = g * (1[v = label] - p_v)   (times 1 - tanh^2 under soft-capping).

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Storage, Tensor, D};

/// Rows of logits materialised at a time: about 64 MB for a 262k vocabulary.
const CHUNK_ELEMS: usize = 16 << 20;

/// log p(labels[i] | hidden[i]) for hidden (M, H) and an LM head weight
/// (V, H), with optional final-logit soft-capping; differentiable with
/// respect to both `hidden` and `weight`.
pub fn label_logprobs(hidden: &Tensor, weight: &Tensor, labels: &[u32], softcap: Option<f64>) -> Result<Tensor> {
    let (m, _) = hidden.dims2()?;
    if labels.len() != m {
        candle_core::bail!("label_logprobs: {} labels for {m} rows", labels.len());
    }
    label_logprobs_in_chunks(hidden, weight, labels, softcap, chunk_rows(weight.dim(0)?))
}

fn label_logprobs_in_chunks(hidden: &Tensor, weight: &Tensor, labels: &[u32], softcap: Option<f64>, rows: usize) -> Result<Tensor> {
    let values = forward_values(&hidden.detach(), &weight.detach(), labels, softcap, rows)?;
    hidden.apply_op2(weight, LabelLogProb { labels: labels.to_vec(), softcap, values, rows })
}

fn chunk_rows(vocab: usize) -> usize {
    (CHUNK_ELEMS / vocab.max(1)).max(1)
}

/// Capped logits of a chunk of rows, and tanh(logits / cap) when capped.
fn logits(h: &Tensor, w: &Tensor, softcap: Option<f64>) -> Result<(Tensor, Option<Tensor>)> {
    let raw = h.matmul(&w.t()?)?;
    Ok(match softcap {
        Some(cap) => {
            let t = (raw / cap)?.tanh()?;
            ((&t * cap)?, Some(t))
        }
        None => (raw, None),
    })
}

fn labels_tensor(labels: &[u32], device: &candle_core::Device) -> Result<Tensor> {
    Tensor::from_slice(labels, (labels.len(), 1), device)
}

fn forward_values(h: &Tensor, w: &Tensor, labels: &[u32], softcap: Option<f64>, step: usize) -> Result<Tensor> {
    let m = h.dim(0)?;
    let mut out = Vec::new();
    for start in (0..m).step_by(step) {
        let n = step.min(m - start);
        let (z, _) = logits(&h.narrow(0, start, n)?, w, softcap)?;
        let max = z.max_keepdim(D::Minus1)?;
        let lse = (z.broadcast_sub(&max)?.exp()?.sum_keepdim(D::Minus1)?.log()? + &max)?;
        let picked = z.gather(&labels_tensor(&labels[start..start + n], h.device())?, 1)?;
        out.push((picked - lse)?.squeeze(1)?);
    }
    Tensor::cat(&out, 0)
}

struct LabelLogProb {
    labels: Vec<u32>,
    softcap: Option<f64>,
    /// The forward's result, computed from the same inputs before the op is applied.
    values: Tensor,
    /// Rows per chunk.
    rows: usize,
}

impl CustomOp2 for LabelLogProb {
    fn name(&self) -> &'static str {
        "label-logprob"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        match &*self.values.storage_and_layout().0 {
            Storage::Cpu(s) => Ok((s.clone(), self.values.shape().clone())),
            _ => candle_core::bail!("label-logprob runs on the CPU only"),
        }
    }

    fn bwd(&self, hidden: &Tensor, weight: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (h, w) = (hidden.detach(), weight.detach());
        let (m, step) = (h.dim(0)?, self.rows);
        let grad = grad.detach();
        let mut grad_h = Vec::new();
        let mut grad_w: Option<Tensor> = None;
        for start in (0..m).step_by(step) {
            let n = step.min(m - start);
            let hc = h.narrow(0, start, n)?;
            let (z, tanh) = logits(&hc, &w, self.softcap)?;
            // g * (onehot - softmax): the fused softmax is fine here, nothing differentiates through it.
            let p = candle_nn::ops::softmax_last_dim(&z)?;
            let labels = labels_tensor(&self.labels[start..start + n], h.device())?;
            let ones = Tensor::ones((n, 1), p.dtype(), h.device())?;
            let dz = p.neg()?.scatter_add(&labels, &ones, 1)?;
            let mut dz = dz.broadcast_mul(&grad.narrow(0, start, n)?.unsqueeze(1)?)?;
            if let Some(t) = tanh {
                dz = (dz * (1.0 - t.sqr()?)?)?;
            }
            grad_h.push(dz.matmul(&w)?);
            // (vocab x hidden) per chunk: no zero-filled start, one sum per extra chunk.
            let part = dz.t()?.matmul(&hc)?;
            grad_w = Some(match grad_w {
                Some(g) => (g + part)?,
                None => part,
            });
        }
        Ok((Some(Tensor::cat(&grad_h, 0)?), grad_w))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use candle_nn::ops::log_softmax;

    /// The chunked op against log_softmax + gather through candle's autograd,
    /// with and without soft-capping, chunks smaller than the batch.
    #[test]
    fn values_and_gradients_equal_the_naive_computation() {
        let dev = Device::Cpu;
        let (m, h, v) = (7, 5, 11);
        let hidden = Var::from_tensor(&Tensor::randn(0f32, 1.0, (m, h), &dev).unwrap()).unwrap();
        let weight = Var::from_tensor(&Tensor::randn(0f32, 1.0, (v, h), &dev).unwrap()).unwrap();
        let labels: Vec<u32> = (0..m as u32).map(|i| (i * 3) % v as u32).collect();
        let coef = Tensor::randn(0f32, 1.0, m, &dev).unwrap();
        for softcap in [None, Some(2.0)] {
            let naive = {
                let mut z = hidden.matmul(&weight.t().unwrap()).unwrap();
                if let Some(c) = softcap {
                    z = ((z / c).unwrap().tanh().unwrap() * c).unwrap();
                }
                log_softmax(&z, D::Minus1).unwrap().gather(&labels_tensor(&labels, &dev).unwrap(), 1).unwrap().squeeze(1).unwrap()
            };
            // Chunks of 3 rows: 7 rows make two whole chunks and a partial one.
            let ours = label_logprobs_in_chunks(&hidden, &weight, &labels, softcap, 3).unwrap();
            let max_diff = |a: &Tensor, b: &Tensor| (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
            assert!(max_diff(&naive, &ours) < 1e-5);
            let g_naive = (&naive * &coef).unwrap().sum_all().unwrap().backward().unwrap();
            let g_ours = (&ours * &coef).unwrap().sum_all().unwrap().backward().unwrap();
            for var in [&hidden, &weight] {
                let (a, b) = (g_naive.get(var).unwrap(), g_ours.get(var).unwrap());
                assert!(max_diff(a, b) < 1e-5, "softcap {softcap:?}: {}", max_diff(a, b));
            }
        }
    }
}
