//! Log-probabilities of label tokens through the LM head, in bounded memory.
//!
//! A naive `log_softmax(hidden @ W^T).gather(labels)` keeps (rows x vocab)
//! logits, their softmax and their gradients alive until backward ends: for
//! Gemma-3's 262k vocabulary and 768 rows that is several GB. Here the
//! forward and the backward both walk the rows in chunks and keep only the
//! (rows,) result, plus the logits themselves for the backward while they fit
//! in [`KEEP_ELEMS`] (else the backward recomputes them chunk by chunk); the
//! backward applies the analytic gradient of log p(label):
//!   d/dlogit_v = g * (1[v = label] - p_v)   (times 1 - tanh^2 under soft-capping).

use std::{
    any::Any,
    sync::{Arc, Mutex},
};

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Storage, Tensor, WithDType};

use crate::{
    grad::GradBuffer,
    kernels::{gemm, weight_gradient, with_values, Operand},
    pool::{Pool, SharedMut},
    vmath::{self, Exp},
};

/// Rows of logits materialised at a time: about 64 MB.
const CHUNK_ELEMS: usize = 16 << 20;

/// The most logits a training forward keeps for its backward: 1 GiB of f32
/// (Gemma-3's 262k vocabulary at 1,000 label rows). Larger batches recompute.
const KEEP_ELEMS: usize = 1 << 28;

/// log p(labels[i] | hidden[i]) for hidden (M, H) and an LM head weight
/// (V, H), with optional final-logit soft-capping; differentiable with
/// respect to both `hidden` and `weight`; the weight's gradient goes to
/// `w_grad` when given.
pub fn label_logprobs(hidden: &Tensor, weight: &Tensor, w_grad: Option<Arc<GradBuffer>>, labels: &[u32], softcap: Option<f64>) -> Result<Tensor> {
    let (m, _) = hidden.dims2()?;
    if labels.len() != m {
        candle_core::bail!("label_logprobs: {} labels for {m} rows", labels.len());
    }
    label_logprobs_in_chunks(hidden, weight, w_grad, labels, softcap, chunk_rows(weight.dim(0)?), KEEP_ELEMS)
}

fn label_logprobs_in_chunks(
    hidden: &Tensor,
    weight: &Tensor,
    w_grad: Option<Arc<GradBuffer>>,
    labels: &[u32],
    softcap: Option<f64>,
    rows: usize,
    keep_limit: usize,
) -> Result<Tensor> {
    let op = LabelLogProb { labels: labels.to_vec(), softcap, rows, w_grad };
    // Training keeps the logits for the backward, up to `keep_limit` of them:
    // one matmul of the three fewer, for (rows x vocab) floats until the backward has run.
    let keep = (hidden.track_op() || weight.track_op()) && labels.len() * weight.dim(0)? <= keep_limit;
    let (values, _, kept) = op.run(hidden, weight, None, None, keep)?;
    hidden.apply_op2(weight, LabelLogProbOp { op, values, kept: Mutex::new(kept) })
}

fn chunk_rows(vocab: usize) -> usize {
    (CHUNK_ELEMS / vocab.max(1)).max(1)
}

struct LabelLogProb {
    labels: Vec<u32>,
    softcap: Option<f64>,
    /// Rows per chunk.
    rows: usize,
    /// Where the backward adds the weight's gradient, if the caller gave a
    /// buffer (the kernels' contract, `kernels`).
    w_grad: Option<Arc<GradBuffer>>,
}

/// Soft-capped logits (rows x vocab) and each row's log-sum-exp, of element
/// type T, kept from the forward.
type Kept = Box<dyn Any + Send + Sync>;

/// The log-probabilities (M,), the gradients of hidden and weight when
/// `grad` is given (none for a weight whose gradient went into its
/// [`GradBuffer`]), and the logits when `keep`.
type Run = (Tensor, Option<(Tensor, Option<Tensor>)>, Option<Kept>);

impl LabelLogProb {
    /// The log-probabilities and, with `grad` (d loss / d log-prob per row),
    /// the gradients of hidden and weight, as tensors of their dtypes:
    /// computed in f64 for f64 inputs (the finite-difference checks) and in
    /// f32 otherwise. `kept` logits from the forward spare their matmul.
    fn run(&self, hidden: &Tensor, weight: &Tensor, grad: Option<&Tensor>, kept: Option<Kept>, keep: bool) -> Result<Run> {
        let (values, grads, kept) = match hidden.dtype() {
            DType::F64 => self.run_as::<f64>(hidden, weight, grad, kept, keep)?,
            _ => self.run_as::<f32>(hidden, weight, grad, kept, keep)?,
        };
        let as_input = |g: Tensor, like: &Tensor| g.reshape(like.shape())?.to_dtype(like.dtype());
        // The weight's gradient comes in its shape and dtype already (kernels::weight_gradient).
        let grads = grads.map(|(gh, gw)| Ok::<_, candle_core::Error>((as_input(gh, hidden)?, gw))).transpose()?;
        Ok((values.to_dtype(hidden.dtype())?, grads, kept))
    }

    /// [`LabelLogProb::run`] in element type T. Each chunk of rows: logits by
    /// one matmul (or kept ones), soft-capping, log-sum-exp and, backward, the
    /// analytic gradient written over the logits in place, then two matmuls;
    /// the weight's gradient accumulates into one (V, H) buffer, the
    /// [`GradBuffer`] it was given, if any.
    fn run_as<T: WithDType + Exp>(&self, hidden: &Tensor, weight: &Tensor, grad: Option<&Tensor>, kept: Option<Kept>, keep: bool) -> Result<Run> {
        let dev = hidden.device().clone();
        let variable = weight.clone();
        let (hidden, weight) = (hidden.detach().to_dtype(T::DTYPE)?, weight.detach().to_dtype(T::DTYPE)?);
        let grad = grad.map(|g| g.to_dtype(T::DTYPE)?.to_vec1::<T>()).transpose()?;
        let ((m, hd), v) = (hidden.dims2()?, weight.dim(0)?);
        let cap = self.softcap.map(|c| T::from(c).expect("a float"));
        let mut values = vec![T::zero(); m];
        let mut grad_h = grad.as_ref().map(|_| vec![T::zero(); m * hd]);
        let kept = kept
            .map(|k| k.downcast::<(Vec<T>, Vec<T>)>().map(|b| *b))
            .transpose()
            .map_err(|_| candle_core::Error::Msg("label-logprob: kept logits of another dtype".into()))?;
        let have_logits = kept.is_some();
        // All rows' logits when kept or keeping; else one chunk's, reused.
        let (mut z, mut lse) = kept.unwrap_or_else(|| (vec![T::zero(); if keep { m } else { self.rows.min(m) } * v], vec![T::zero(); m]));
        // With every row's logits in memory, one chunk: each chunk's matmuls
        // pack the whole (v, hd) weight again and add into the whole weight
        // gradient again (Gemma's 671 MB, 9 times for 576 rows).
        let all_rows = z.len() == m * v;
        let rows = if all_rows { m.max(1) } else { self.rows };
        // Every chunk; the weight's gradient is added into `grad_w` (v, hd).
        let mut chunks = |mut grad_w: Option<&mut [T]>| -> Result<()> {
            with_values(&hidden, |h: &[T]| {
                with_values(&weight, |w: &[T]| {
                    for start in (0..m).step_by(rows) {
                        let n = rows.min(m - start);
                        let z = if all_rows { &mut z[start * v..(start + n) * v] } else { &mut z[..n * v] };
                        let h_chunk = Operand { ptr: h[start * hd..].as_ptr(), rs: hd, cs: 1 };
                        if !have_logits {
                            // SAFETY: h holds rows start..start + n of hd values, w is (v, hd), z is (n, v).
                            unsafe { gemm(n, v, hd, z.as_mut_ptr(), v, h_chunk, Operand { ptr: w.as_ptr(), rs: 1, cs: hd }, false) };
                        }
                        let mut rows: Vec<(usize, &mut [T])> = z.chunks_exact_mut(v).enumerate().collect();
                        let (out, lse_out) = (SharedMut(values[start..].as_mut_ptr()), SharedMut(lse[start..].as_mut_ptr()));
                        Pool::global().for_each_mut(&mut rows, &|(r, z)| {
                            let label = self.labels[start + *r] as usize;
                            // SAFETY: row r of this chunk alone reads and writes value and lse start + r.
                            let lse = unsafe { &mut *lse_out.add(*r) };
                            if !have_logits {
                                if let Some(cap) = cap {
                                    z.iter_mut().for_each(|x| *x = cap * (*x / cap).tanh());
                                }
                                let max = vmath::max(z);
                                *lse = max + vmath::sum_exp(z, max).ln();
                                unsafe { *out.add(*r) = z[label] - *lse };
                            }
                            if let Some(g) = &grad {
                                // d log p(label) / d z_j = 1[j = label] - p_j, times the
                                // cap's d z / d raw = 1 - (z / cap)^2; written over z.
                                let (g, lse) = (g[start + *r], *lse);
                                let through_cap = |z: T| cap.map_or(T::one(), |c| T::one() - (z / c) * (z / c));
                                let z_label = z[label];
                                match cap {
                                    None => vmath::exp_in_place(z, lse, T::one(), -g),
                                    Some(_) => z.iter_mut().for_each(|x| *x = -g * (*x - lse).exp_fast() * through_cap(*x)),
                                }
                                z[label] += g * through_cap(z_label);
                            }
                        });
                        if let (Some(grad_h), Some(grad_w)) = (grad_h.as_mut(), grad_w.as_mut()) {
                            assert_eq!(grad_w.len(), v * hd, "label-logprob: a weight gradient of another size");
                            let dz = z.as_ptr();
                            // SAFETY: dz is (n, v), w (v, hd), h's chunk (n, hd); grad_h's rows
                            // start..start + n and grad_w (v, hd) are written by these calls only.
                            unsafe {
                                gemm(
                                    n,
                                    hd,
                                    v,
                                    grad_h[start * hd..].as_mut_ptr(),
                                    hd,
                                    Operand { ptr: dz, rs: v, cs: 1 },
                                    Operand { ptr: w.as_ptr(), rs: hd, cs: 1 },
                                    false,
                                );
                                gemm(v, hd, n, grad_w.as_mut_ptr(), hd, Operand { ptr: dz, rs: 1, cs: v }, h_chunk, true);
                            }
                        }
                    }
                })
            })??;
            Ok(())
        };
        let grad_w = match grad {
            None => {
                chunks(None)?;
                None
            }
            Some(_) => weight_gradient(&variable, self.w_grad.as_ref(), |sum: &mut [T]| chunks(Some(sum)))?,
        };
        let grads = grad_h.map(|gh| Ok::<_, candle_core::Error>((Tensor::new(gh, &dev)?, grad_w))).transpose()?;
        let kept: Option<Kept> = (keep && !have_logits).then(|| Box::new((z, lse)) as Kept);
        Ok((Tensor::new(values, &dev)?, grads, kept))
    }
}

/// The candle op: forward values computed beforehand (detached), the
/// analytic backward from the kept logits (taken by the first backward;
/// recomputed if there is another).
struct LabelLogProbOp {
    op: LabelLogProb,
    values: Tensor,
    kept: Mutex<Option<Kept>>,
}

impl CustomOp2 for LabelLogProbOp {
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
        let kept = self.kept.lock().unwrap_or_else(|e| e.into_inner()).take();
        let (grad_h, grad_w) = self.op.run(hidden, weight, Some(grad), kept, false)?.1.expect("gradients were asked for");
        Ok((Some(grad_h), grad_w))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var, D};
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
                let index = Tensor::from_slice(&labels, (m, 1), &dev).unwrap();
                log_softmax(&z, D::Minus1).unwrap().gather(&index, 1).unwrap().squeeze(1).unwrap()
            };
            // Chunks of 3 rows: 7 rows make two whole chunks and a partial one;
            // logits kept, or over the keep limit and recomputed.
            for keep_limit in [usize::MAX, 0] {
                let ours = label_logprobs_in_chunks(&hidden, &weight, None, &labels, softcap, 3, keep_limit).unwrap();
                let max_diff =
                    |a: &Tensor, b: &Tensor| (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
                assert!(max_diff(&naive, &ours) < 1e-5);
                let g_naive = (&naive * &coef).unwrap().sum_all().unwrap().backward().unwrap();
                // The first backward uses the logits kept by the forward (if any); a second one recomputes them.
                for pass in ["first", "second"] {
                    let g_ours = (&ours * &coef).unwrap().sum_all().unwrap().backward().unwrap();
                    for var in [&hidden, &weight] {
                        let (a, b) = (g_naive.get(var).unwrap(), g_ours.get(var).unwrap());
                        assert!(max_diff(a, b) < 1e-5, "softcap {softcap:?}, keep limit {keep_limit}, {pass} backward: {}", max_diff(a, b));
                    }
                }
            }
        }
    }
}
