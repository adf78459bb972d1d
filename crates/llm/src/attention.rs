//! Causal attention over packed sequences, the training forward's: sequences
//! that share a prompt hold it once, and every continuation attends to that
//! prompt and to itself. Each (head, segment) is a few matmuls on the blocks
//! it can see, so no (T, T) mask is built and no masked block between two
//! continuations is computed. Differentiable in q, k and v; the softmax
//! probabilities are kept from the forward for the backward.

use std::ops::Range;

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, WithDType};
use num_traits::Float;

use crate::{
    kernels::{gemm, tensor, values, with_values, Operand},
    pool::{Pool, SharedMut},
    vmath::{self, Exp},
};

/// A run of tokens of a packed row. A prompt attends to itself causally; a
/// continuation to its prompt (`prefix`) and causally to itself.
#[derive(Clone, Debug, PartialEq)]
pub struct Segment {
    pub tokens: Range<usize>,
    pub prefix: Option<Range<usize>>,
}

/// The layout of a packed row, and each token's position in its sequence.
#[derive(Clone, Debug)]
pub struct Packing {
    pub segments: Vec<Segment>,
    pub positions: Vec<usize>,
}

impl Packing {
    /// Sequences given as (prompt, continuation) lengths, in groups sharing one
    /// prompt: each group's prompt, then its continuations. A continuation of
    /// length 0 adds nothing; a group with none is its prompt alone.
    pub fn new(groups: &[(usize, Vec<usize>)]) -> Self {
        let (mut segments, mut positions, mut at) = (Vec::new(), Vec::new(), 0);
        for (prompt, continuations) in groups {
            let prefix = at..at + prompt;
            segments.push(Segment { tokens: prefix.clone(), prefix: None });
            positions.extend(0..*prompt);
            at += prompt;
            for &len in continuations.iter().filter(|&&l| l > 0) {
                segments.push(Segment { tokens: at..at + len, prefix: Some(prefix.clone()) });
                positions.extend(*prompt..prompt + len);
                at += len;
            }
        }
        Packing { segments, positions }
    }

    pub fn len(&self) -> usize {
        self.positions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }
}

/// How one layer attends.
pub struct Attention<'a> {
    pub packing: &'a Packing,
    pub heads: usize,
    pub kv_heads: usize,
    pub scale: f64,
    pub softcap: Option<f64>,
    /// Sliding-window layers: a query sees keys fewer than this many positions back.
    pub window: Option<usize>,
}

/// softmax(q kᵀ · scale (soft-capped), causal within the packing) v for q
/// (N, heads · hd), k and v (N, kv_heads · hd), each token's heads side by
/// side as the projections write them: (N, heads · hd).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, a: &Attention) -> Result<Tensor> {
    let (n, width) = q.dims2()?;
    let hd = width / a.heads.max(1);
    let kv = (n, a.kv_heads * hd);
    if a.heads == 0 || width != a.heads * hd || k.dims2()? != kv || v.dims2()? != kv || n != a.packing.len() {
        candle_core::bail!("attention: q {:?}, k {:?}, v {:?} for {} tokens", q.dims(), k.dims(), v.dims(), a.packing.len());
    }
    let op = AttentionOp {
        segments: a.packing.segments.clone(),
        positions: a.packing.positions.clone(),
        heads: a.heads,
        kv_heads: a.kv_heads,
        hd,
        scale: a.scale,
        softcap: a.softcap,
        window: a.window,
        saved: Default::default(),
    };
    // Other dtypes (bf16) attend in f32.
    let dtype = q.dtype();
    let work = if matches!(dtype, DType::F32 | DType::F64) { dtype } else { DType::F32 };
    let prepare = |t: &Tensor| t.to_dtype(work)?.contiguous();
    prepare(q)?.apply_op3(&prepare(k)?, &prepare(v)?, op)?.to_dtype(dtype)
}

struct AttentionOp {
    segments: Vec<Segment>,
    positions: Vec<usize>,
    heads: usize,
    kv_heads: usize,
    hd: usize,
    scale: f64,
    softcap: Option<f64>,
    window: Option<usize>,
    /// Per (head, segment) task: probabilities (queries x visible keys) and
    /// each query's log-sum-exp, kept by the forward for the backward.
    saved: std::sync::Mutex<Option<Saved>>,
}

/// One task's probabilities (queries x visible keys) and log-sum-exps.
type Probs<T> = (Vec<T>, Vec<T>);

enum Saved {
    F32(Vec<Probs<f32>>),
    F64(Vec<Probs<f64>>),
}

/// What a task sees: the key ranges (the prompt, if any, then its own tokens).
fn visible(s: &Segment) -> Vec<Range<usize>> {
    s.prefix.iter().cloned().chain([s.tokens.clone()]).collect()
}

/// A strided operand at element `at` of `v`.
fn op<T>(v: &[T], at: usize, rs: usize, cs: usize) -> Operand<T> {
    Operand { ptr: v[at..].as_ptr(), rs, cs }
}

/// A (rows, cols) matmul on the calling thread: the tasks run on the pool already.
fn mm<T: WithDType>(rows: usize, cols: usize, inner: usize, dst: *mut T, dst_rs: usize, a: Operand<T>, b: Operand<T>, accumulate: bool) {
    // SAFETY: the callers pass operands and destinations that hold the
    // elements their shapes and strides reach, and write disjoint blocks.
    unsafe { gemm(rows, cols, inner, dst, dst_rs, a, b, accumulate) }
}

impl AttentionOp {
    fn tasks(&self) -> usize {
        self.heads * self.segments.len()
    }

    /// (head, segment) of task t.
    fn task(&self, t: usize) -> (usize, &Segment) {
        (t / self.segments.len(), &self.segments[t % self.segments.len()])
    }

    fn forward<T: WithDType + Exp>(&self, q: &[T], k: &[T], v: &[T]) -> (Vec<T>, Vec<Probs<T>>) {
        let (n, hd, heads) = (self.positions.len(), self.hd, self.heads);
        let groups = heads / self.kv_heads;
        // Row widths: token t's head h at t * width + h * hd.
        let (qw, kw) = (heads * hd, self.kv_heads * hd);
        let mut out = vec![T::zero(); n * heads * hd];
        let mut saved: Vec<(usize, Vec<T>, Vec<T>)> = (0..self.tasks()).map(|t| (t, Vec::new(), Vec::new())).collect();
        let out_ptr = SharedMut(out.as_mut_ptr());
        Pool::global().for_each_mut(&mut saved, &|(t, probs, lse)| {
            let (h, s) = self.task(*t);
            let g = h / groups;
            let (nq, keys) = (s.tokens.len(), visible(s));
            let nvis: usize = keys.iter().map(|r| r.len()).sum();
            let mut p = vec![T::zero(); nq * nvis];
            let qs = op(q, s.tokens.start * qw + h * hd, qw, 1);
            let mut col = 0;
            for r in &keys {
                mm(nq, r.len(), hd, p[col..].as_mut_ptr(), nvis, qs, op(k, r.start * kw + g * hd, 1, kw), false);
                col += r.len();
            }
            *lse = vec![T::zero(); nq];
            for (a, row) in p.chunks_exact_mut(nvis).enumerate() {
                lse[a] = self.softmax_row(s.tokens.start + a, &keys, row);
            }
            // out rows of this segment, columns of head h.
            let mut col = 0;
            for (i, r) in keys.iter().enumerate() {
                // SAFETY: task (h, s) alone writes these rows and columns of `out`.
                let dst = unsafe { out_ptr.add((s.tokens.start * heads + h) * hd) };
                mm(nq, hd, r.len(), dst, qw, op(&p, col, nvis, 1), op(v, r.start * kw + g * hd, kw, 1), i > 0);
                col += r.len();
            }
            *probs = p;
        });
        (out, saved.into_iter().map(|(_, p, l)| (p, l)).collect())
    }

    /// Scale, soft-cap, mask and softmax one query's scores in place; its log-sum-exp.
    fn softmax_row<T: Exp>(&self, query: usize, keys: &[Range<usize>], row: &mut [T]) -> T {
        let scale = T::from(self.scale).unwrap();
        let cap = self.softcap.map(|c| T::from(c).unwrap());
        let pos = self.positions[query];
        let mut max = T::neg_infinity();
        let mut col = 0;
        for r in keys {
            for key in r.clone() {
                let seen = key <= query && self.window.is_none_or(|w| pos - self.positions[key] < w);
                let x = &mut row[col];
                *x = if !seen {
                    T::neg_infinity()
                } else {
                    let raw = *x * scale;
                    cap.map_or(raw, |c| c * (raw / c).tanh())
                };
                max = max.max(*x);
                col += 1;
            }
        }
        let lse = max + vmath::sum_exp(row, max).ln();
        vmath::exp_in_place(row, lse, T::one(), T::one());
        lse
    }

    /// dq, dk, dv from d out (N, heads · hd) and the saved probabilities:
    /// dP = dO vᵀ, dS = P ∘ (dP - rowsum(P ∘ dP)) (through the cap), dq = dS k · scale,
    /// dk = dSᵀ q · scale, dv = Pᵀ dO. Keys are shared across tasks, so each
    /// task sums its dk and dv privately and they are added after.
    fn backward<T: WithDType + Float>(&self, q: &[T], k: &[T], v: &[T], d_out: &[T], saved: &[Probs<T>]) -> (Vec<T>, Vec<T>, Vec<T>) {
        let (n, hd, heads, kv_heads) = (self.positions.len(), self.hd, self.heads, self.kv_heads);
        let groups = heads / kv_heads;
        let (qw, kw) = (heads * hd, kv_heads * hd);
        let scale = T::from(self.scale).unwrap();
        let cap = self.softcap.map(|c| T::from(c).unwrap());
        let mut dq = vec![T::zero(); heads * n * hd];
        let dq_ptr = SharedMut(dq.as_mut_ptr());
        let mut local: Vec<(usize, Vec<T>, Vec<T>)> = (0..self.tasks()).map(|t| (t, Vec::new(), Vec::new())).collect();
        Pool::global().for_each_mut(&mut local, &|(t, dk, dv)| {
            let (h, s) = self.task(*t);
            let g = h / groups;
            let (nq, keys) = (s.tokens.len(), visible(s));
            let nvis: usize = keys.iter().map(|r| r.len()).sum();
            let (p, lse) = &saved[*t];
            let d_o = op(d_out, s.tokens.start * qw + h * hd, qw, 1);
            let mut ds = vec![T::zero(); nq * nvis];
            let mut col = 0;
            for r in &keys {
                mm(nq, r.len(), hd, ds[col..].as_mut_ptr(), nvis, d_o, op(v, r.start * kw + g * hd, 1, kw), false);
                col += r.len();
            }
            for (a, (d_row, p_row)) in ds.chunks_exact_mut(nvis).zip(p.chunks_exact(nvis)).enumerate() {
                let dot = d_row.iter().zip(p_row).fold(T::zero(), |acc, (&d, &p)| acc + d * p);
                for (d, &p) in d_row.iter_mut().zip(p_row) {
                    // The capped score is ln p + lse; d capped / d raw = 1 - (capped / cap)².
                    let through_cap = match cap {
                        Some(c) if p > T::zero() => T::one() - ((p.ln() + lse[a]) / c).powi(2),
                        _ => T::one(),
                    };
                    *d = p * (*d - dot) * through_cap * scale;
                }
            }
            // dq rows of this segment for head h: dS · k.
            let mut col = 0;
            for (i, r) in keys.iter().enumerate() {
                // SAFETY: task (h, s) alone writes these rows (segment s) and columns (head h) of dq.
                let dst = unsafe { dq_ptr.add(s.tokens.start * qw + h * hd) };
                mm(nq, hd, r.len(), dst, qw, op(&ds, col, nvis, 1), op(k, r.start * kw + g * hd, kw, 1), i > 0);
                col += r.len();
            }
            // The visible keys' dk = dSᵀ q and dv = Pᵀ dO, in this task's own buffers.
            *dk = vec![T::zero(); nvis * hd];
            *dv = vec![T::zero(); nvis * hd];
            let qs = op(q, s.tokens.start * qw + h * hd, qw, 1);
            mm(nvis, hd, nq, dk.as_mut_ptr(), hd, op(&ds, 0, 1, nvis), qs, false);
            mm(nvis, hd, nq, dv.as_mut_ptr(), hd, op(p, 0, 1, nvis), d_o, false);
        });
        let (mut dk, mut dv) = (vec![T::zero(); kv_heads * n * hd], vec![T::zero(); kv_heads * n * hd]);
        for (t, dk_t, dv_t) in &local {
            let (h, s) = self.task(*t);
            let g = h / groups;
            let keys = visible(s).into_iter().flatten();
            for (row, key) in keys.enumerate() {
                let at = key * kw + g * hd;
                for (i, (a, b)) in dk_t[row * hd..(row + 1) * hd].iter().zip(&dv_t[row * hd..(row + 1) * hd]).enumerate() {
                    dk[at + i] += *a;
                    dv[at + i] += *b;
                }
            }
        }
        (dq, dk, dv)
    }

    fn shape(&self) -> Shape {
        Shape::from((self.positions.len(), self.heads * self.hd))
    }
}

impl CustomOp3 for AttentionOp {
    fn name(&self) -> &'static str {
        "packed-attention"
    }

    fn cpu_fwd(&self, q: &CpuStorage, lq: &Layout, k: &CpuStorage, lk: &Layout, v: &CpuStorage, lv: &Layout) -> Result<(CpuStorage, Shape)> {
        let mut saved = self.saved.lock().unwrap_or_else(|e| e.into_inner());
        let out = match q {
            CpuStorage::F64(_) => {
                let (out, s) = self.forward::<f64>(values(q, lq)?, values(k, lk)?, values(v, lv)?);
                *saved = Some(Saved::F64(s));
                CpuStorage::F64(out)
            }
            CpuStorage::F32(_) => {
                let (out, s) = self.forward::<f32>(values(q, lq)?, values(k, lk)?, values(v, lv)?);
                *saved = Some(Saved::F32(s));
                CpuStorage::F32(out)
            }
            _ => candle_core::bail!("attention runs in f32 or f64"),
        };
        Ok((out, self.shape()))
    }

    fn bwd(&self, q: &Tensor, k: &Tensor, v: &Tensor, _: &Tensor, d_out: &Tensor) -> Result<Grads3> {
        let saved = self.saved.lock().unwrap_or_else(|e| e.into_inner());
        let d_out = d_out.to_dtype(q.dtype())?;
        match (&*saved, q.dtype()) {
            (Some(Saved::F64(s)), DType::F64) => grads(with4(q, k, v, &d_out, |q, k, v, d| self.backward::<f64>(q, k, v, d, s))?, [q, k, v]),
            (Some(Saved::F32(s)), DType::F32) => grads(with4(q, k, v, &d_out, |q, k, v, d| self.backward::<f32>(q, k, v, d, s))?, [q, k, v]),
            _ => candle_core::bail!("attention: backward without its forward"),
        }
    }
}

type Grads3 = (Option<Tensor>, Option<Tensor>, Option<Tensor>);

/// dq, dk, dv as tensors shaped as q, k, v.
fn grads<T: WithDType>((dq, dk, dv): (Vec<T>, Vec<T>, Vec<T>), [q, k, v]: [&Tensor; 3]) -> Result<Grads3> {
    Ok((Some(tensor(dq, q.shape(), q)?), Some(tensor(dk, k.shape(), k)?), Some(tensor(dv, v.shape(), v)?)))
}

/// `f` on the values of four tensors of one element type.
fn with4<T: WithDType, R>(a: &Tensor, b: &Tensor, c: &Tensor, d: &Tensor, f: impl FnOnce(&[T], &[T], &[T], &[T]) -> R) -> Result<R> {
    with_values(a, |a| with_values(b, |b| with_values(c, |c| with_values(d, |d| f(a, b, c, d)))))???
}
