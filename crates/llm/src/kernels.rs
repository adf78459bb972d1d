//! The f32 kernels of every forward, on our pool: dense matmul (`gemm`),
//! RMSNorm, gated activation, residual add, token and rotary embedding, and
//! the matmul the attention and the log-prob kernels build on.
//!
//! Each is one candle op with its analytic backward, computed in f32, or in
//! f64 for the finite-difference checks. Inference (sampling, reward models,
//! reference log-probs) calls the same ops: with no tensor tracking a
//! gradient, candle records nothing and only the forward runs.
//!
//! Why not candle's own: written out of candle's primitives an RMSNorm is
//! seven ops forward and more backward, each with its own buffer; a matmul
//! against a weight's transpose comes back with a transposed gradient that is
//! copied again; and candle's fused kernels have no backward at all, so they
//! would silently drop gradients. candle also runs a dense matmul on rayon's
//! threads and its element-wise ops on its barrier pool, while our attention
//! and quantized matmuls run on [`Pool`]: on 2 cores their spinning workers
//! stole each other's cores, a quarter of a reward model's time. Here every
//! step of a layer runs on the one pool.
//!
//! Other dtypes (bf16 reward models) fall back to candle's ops, for inference
//! only: a tracked bf16 tensor is an error, never a dropped gradient.
//!
//! Gradient contract of the ops that take a weight ([`linear`],
//! [`rms_norm`], [`embedding`], and `logprob`'s LM head): the caller hands
//! the op the weight's gradient destination (`w_grad`, the [`GradBuffer`] an
//! optimizer attached to the layer's weight: `crate::grad`); its backward
//! adds the weight's gradient into that buffer in place and gives candle
//! none. Given none, it returns the gradient to candle like any op.

use std::sync::Arc;

use candle_core::{backend::BackendStorage, CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Storage, Tensor, WithDType};
use num_traits::Float;

pub(crate) use crate::matmul::Operand;
use crate::{
    bf16,
    config::Activation,
    grad::GradBuffer,
    matmul::gemm_f32,
    pool::{Pool, SharedMut},
    rope::{rotate, CosSin},
    vmath::{self, vectorized, Exp},
};

/// Whether these kernels take `tensors`: f32 or f64 on the CPU.
fn applies(tensors: &[&Tensor]) -> bool {
    tensors.iter().all(|t| matches!(t.dtype(), DType::F32 | DType::F64) && t.device().is_cpu())
}

/// Refuse the fallback to candle's ops to a tensor that tracks a gradient:
/// it serves inference only.
fn untracked(tensors: &[&Tensor], op: &str) -> Result<()> {
    match tensors.iter().find(|t| t.track_op()) {
        Some(t) => candle_core::bail!("{op}: gradients are computed in f32 or f64 on the CPU, not {:?} on {:?}", t.dtype(), t.device().location()),
        None => Ok(()),
    }
}

/// `f` on the values of a CPU tensor of element type T (copied first if not
/// contiguous).
pub fn with_values<T: WithDType, R>(t: &Tensor, f: impl FnOnce(&[T]) -> R) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let (Storage::Cpu(cpu), Some((start, end))) = (&*storage, layout.contiguous_offsets()) else {
        candle_core::bail!("the kernels need CPU tensors");
    };
    Ok(f(&cpu.as_slice::<T>()?[start..end]))
}

/// The values of an input of a custom op, which must be contiguous.
pub(crate) fn values<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&s.as_slice::<T>()?[start..end]),
        None => candle_core::bail!("a kernel got a non-contiguous input"),
    }
}

/// dst (m, n), row-major with row stride `dst_rs`, = lhs (m, k) · rhs (k, n),
/// plus dst's old values when `accumulate`: in bf16 with f32 sums where the
/// process runs its f32 matmuls so ([`bf16`]), else in T ([`gemm_f32`]).
///
/// # Safety
/// As [`gemm_f32`]'s.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm<T: WithDType>(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut T,
    dst_rs: usize,
    lhs: Operand<T>,
    rhs: Operand<T>,
    accumulate: bool,
) {
    if T::DTYPE == DType::F32 && bf16::matmuls_bf16() {
        let f32_op = |o: Operand<T>| Operand { ptr: o.ptr.cast::<f32>(), rs: o.rs, cs: o.cs };
        // SAFETY: T is f32; as the caller promised.
        return unsafe { bf16::gemm(m, n, k, dst.cast(), dst_rs, f32_op(lhs), f32_op(rhs), accumulate) };
    }
    // SAFETY: as the caller promised.
    unsafe { gemm_f32(m, n, k, dst, dst_rs, lhs, rhs, accumulate) }
}

/// `n` rows of `width` values, split into tasks on the pool: `f(first row, rows)`.
fn over_rows<T: Send>(out: &mut [T], width: usize, f: &(dyn Fn(usize, &mut [T]) + Sync)) {
    let rows = out.len() / width.max(1);
    let per_task = (8 * 1024 / width.max(1)).max(1);
    let ptr = SharedMut(out.as_mut_ptr());
    Pool::global().run(rows.div_ceil(per_task), &|c| {
        let (first, n) = (c * per_task, per_task.min(rows - c * per_task));
        // SAFETY: task c alone writes rows first..first + n; `out` outlives the job.
        f(first, unsafe { std::slice::from_raw_parts_mut(ptr.add(first * width), n * width) });
    });
}

/// `f(a, b)` element by element for inputs of one shape, across the pool,
/// vectorised.
fn zip_map<T: WithDType + Exp>(
    a: &CpuStorage,
    la: &Layout,
    b: &CpuStorage,
    lb: &Layout,
    f: impl Fn(T, T) -> T + Sync,
) -> Result<(CpuStorage, Shape)> {
    let (av, bv) = (values::<T>(a, la)?, values::<T>(b, lb)?);
    let width = la.shape().dims().last().copied().unwrap_or(1);
    let mut y = vec![T::zero(); av.len()];
    over_rows(&mut y, width, &|first, out| {
        let at = first * width;
        let n = out.len();
        vmath::map2(out, &av[at..at + n], &bv[at..at + n], &f);
    });
    Ok((T::to_cpu_storage_owned(y), la.shape().clone()))
}

/// A gradient of `like`'s dtype from values computed in T.
pub(crate) fn tensor<T: WithDType>(v: Vec<T>, shape: &Shape, like: &Tensor) -> Result<Tensor> {
    Tensor::from_vec(v, shape, like.device())?.to_dtype(like.dtype())
}

/// `weight`'s gradient, which `add` adds into the values it is given: the
/// op's `buffer` when it was handed one and computes in f32 (then None:
/// candle gets no gradient for `weight`), else a zeroed one, returned as a
/// tensor of `weight`'s shape and dtype.
pub(crate) fn weight_gradient<T: WithDType>(
    weight: &Tensor,
    buffer: Option<&Arc<GradBuffer>>,
    add: impl FnOnce(&mut [T]) -> Result<()>,
) -> Result<Option<Tensor>> {
    let Some(buffer) = buffer.filter(|_| T::DTYPE == DType::F32) else {
        let mut values = vec![T::zero(); weight.elem_count()];
        add(&mut values)?;
        return Ok(Some(tensor(values, weight.shape(), weight)?));
    };
    let mut values = buffer.lock();
    assert_eq!(values.len(), weight.elem_count(), "a gradient buffer of another size than its weight");
    // SAFETY: T is f32 (checked above), so the buffer's values are T's.
    add(unsafe { std::slice::from_raw_parts_mut(values.as_mut_ptr() as *mut T, values.len()) })?;
    buffer.mark_received();
    Ok(None)
}

/// A two-input op with its analytic backward, written once for f32 and f64
/// (f64 for the finite-difference checks).
trait Kernel2: Send + Sync + 'static {
    const NAME: &'static str;
    /// The output of inputs `a` and `b` (contiguous).
    fn fwd<T: WithDType + Exp>(&self, a: &CpuStorage, la: &Layout, b: &CpuStorage, lb: &Layout) -> Result<(CpuStorage, Shape)>;
    /// The gradients of `a` and `b` from the output's gradient `g`; none for
    /// a weight `b` whose gradient went into its [`GradBuffer`].
    fn bwd_as<T: WithDType + Exp>(&self, a: &Tensor, b: &Tensor, g: &Tensor) -> Result<(Tensor, Option<Tensor>)>;
}

/// A [`Kernel2`] as a candle op.
struct Op2<K>(K);

impl<K: Kernel2> CustomOp2 for Op2<K> {
    fn name(&self) -> &'static str {
        K::NAME
    }

    fn cpu_fwd(&self, a: &CpuStorage, la: &Layout, b: &CpuStorage, lb: &Layout) -> Result<(CpuStorage, Shape)> {
        match a.dtype() {
            DType::F64 => self.0.fwd::<f64>(a, la, b, lb),
            _ => self.0.fwd::<f32>(a, la, b, lb),
        }
    }

    fn bwd(&self, a: &Tensor, b: &Tensor, _: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (da, db) = match a.dtype() {
            DType::F64 => self.0.bwd_as::<f64>(a, b, g)?,
            _ => self.0.bwd_as::<f32>(a, b, g)?,
        };
        Ok((Some(da), db))
    }
}

/// x (m, k) · wᵀ for a weight w (n, k): (m, n), differentiable in both;
/// w's gradient goes to `w_grad` when given.
pub fn linear(x: &Tensor, w: &Tensor, w_grad: Option<Arc<GradBuffer>>) -> Result<Tensor> {
    let ((_, k), (_, wk)) = (x.dims2()?, w.dims2()?);
    if k != wk {
        candle_core::bail!("linear: input has {k} features, the weight {wk}");
    }
    if !applies(&[x, w]) {
        untracked(&[x, w], "linear")?;
        return x.matmul(&w.t()?);
    }
    x.contiguous()?.apply_op2(&w.contiguous()?, Op2(LinearOp { w_grad }))
}

struct LinearOp {
    /// Where the backward adds w's gradient, if the caller gave one.
    w_grad: Option<Arc<GradBuffer>>,
}

/// dst (m, n) = a (m, k) · b (k, n), plus dst's old values when
/// `accumulate`, the operands read through their strides.
fn matmul_into<T: WithDType>(m: usize, n: usize, k: usize, dst: &mut [T], a: Operand<T>, b: Operand<T>, accumulate: bool) {
    assert_eq!(dst.len(), m * n, "matmul_into: dst of another size");
    // SAFETY: the callers pass operands of the shapes and strides they describe; dst is m * n.
    unsafe { gemm(m, n, k, dst.as_mut_ptr(), n, a, b, accumulate) }
}

/// a (m, k) · b (k, n) as a new (m, n) buffer, written once by the matmul:
/// zeroing it first was a wasted pass (memset was 2% of a training step).
fn matmul<T: WithDType>(m: usize, n: usize, k: usize, a: Operand<T>, b: Operand<T>) -> Vec<T> {
    let mut dst = Vec::with_capacity(m * n);
    // SAFETY: as matmul_into's; without `accumulate` gemm writes all m * n
    // values of dst and reads none, so the buffer is initialised before its
    // length is set.
    unsafe {
        gemm(m, n, k, dst.as_mut_ptr(), n, a, b, false);
        dst.set_len(m * n);
    }
    dst
}

impl Kernel2 for LinearOp {
    const NAME: &'static str = "linear";

    fn fwd<T: WithDType + Exp>(&self, x: &CpuStorage, lx: &Layout, w: &CpuStorage, lw: &Layout) -> Result<(CpuStorage, Shape)> {
        let ((m, k), (n, _)) = (lx.shape().dims2()?, lw.shape().dims2()?);
        let (xv, wv) = (values::<T>(x, lx)?, values::<T>(w, lw)?);
        let y = matmul(m, n, k, Operand { ptr: xv.as_ptr(), rs: k, cs: 1 }, Operand { ptr: wv.as_ptr(), rs: 1, cs: k });
        Ok((T::to_cpu_storage_owned(y), Shape::from((m, n))))
    }

    /// dx = dy · w (m, k) and dw = dyᵀ · x (n, k), the latter added into
    /// w's gradient buffer when it has one.
    fn bwd_as<T: WithDType + Exp>(&self, x: &Tensor, w: &Tensor, dy: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        let ((m, k), (n, _)) = (x.dims2()?, w.dims2()?);
        let (xt, wt, gt) = (x.to_dtype(T::DTYPE)?, w.to_dtype(T::DTYPE)?, dy.to_dtype(T::DTYPE)?);
        let (dx, dw) = with_values(&xt, |xv: &[T]| {
            with_values(&wt, |wv: &[T]| {
                with_values(&gt, |g: &[T]| {
                    let dx = matmul(m, k, n, Operand { ptr: g.as_ptr(), rs: n, cs: 1 }, Operand { ptr: wv.as_ptr(), rs: k, cs: 1 });
                    let (g_t, x) = (Operand { ptr: g.as_ptr(), rs: 1, cs: n }, Operand { ptr: xv.as_ptr(), rs: k, cs: 1 });
                    let dw = weight_gradient(w, self.w_grad.as_ref(), |sum: &mut [T]| {
                        matmul_into(n, k, m, sum, g_t, x, true);
                        Ok(())
                    })?;
                    Ok::<_, candle_core::Error>((dx, dw))
                })
            })
        })????;
        Ok((tensor(dx, x.shape(), x)?, dw))
    }
}

/// RMSNorm over each run of w.len() values of x (its last dimension, or a
/// multiple of w's length: the heads of q and k side by side):
/// x / sqrt(mean(x²) + eps) * (offset + w), differentiable in x and w; w's
/// gradient goes to `w_grad` when given.
pub fn rms_norm(x: &Tensor, w: &Tensor, w_grad: Option<Arc<GradBuffer>>, eps: f64, offset: f64) -> Result<Tensor> {
    let dim = w.elem_count();
    if dim == 0 || x.dim(candle_core::D::Minus1)? % dim != 0 {
        candle_core::bail!("RMSNorm: x {:?} is not made of rows of the weight's {dim} values", x.dims());
    }
    if !applies(&[x, w]) {
        untracked(&[x, w], "RMSNorm")?;
        let scale = if offset == 0.0 { w.clone() } else { (w + offset)? };
        return candle_nn::ops::rms_norm(&x.contiguous()?.reshape(((), dim))?, &scale, eps as f32)?.reshape(x.shape());
    }
    x.contiguous()?.apply_op2(&w.contiguous()?, Op2(RmsNormOp { eps, offset, w_grad }))
}

struct RmsNormOp {
    eps: f64,
    offset: f64,
    /// Where the backward adds w's gradient, if the caller gave one.
    w_grad: Option<Arc<GradBuffer>>,
}

impl Kernel2 for RmsNormOp {
    const NAME: &'static str = "rms-norm";

    fn fwd<T: WithDType + Exp>(&self, x: &CpuStorage, lx: &Layout, w: &CpuStorage, lw: &Layout) -> Result<(CpuStorage, Shape)> {
        let (xv, wv) = (values::<T>(x, lx)?, values::<T>(w, lw)?);
        let (dim, offset, eps) = (wv.len(), T::from(self.offset).unwrap(), T::from(self.eps).unwrap());
        let mut y = vec![T::zero(); xv.len()];
        over_rows(&mut y, dim, &|first, out| {
            for (r, y) in out.chunks_exact_mut(dim).enumerate() {
                let row = &xv[(first + r) * dim..][..dim];
                let inv = inv_rms(row, eps);
                for ((y, &v), &w) in y.iter_mut().zip(row).zip(wv) {
                    *y = v * inv * (offset + w);
                }
            }
        });
        Ok((T::to_cpu_storage_owned(y), lx.shape().clone()))
    }

    /// With x̂ = x / rms and s = offset + w:
    /// dx = (dy·s - x̂ · mean(dy·s·x̂)) / rms, dw = Σ_rows dy·x̂.
    fn bwd_as<T: WithDType + Exp>(&self, x: &Tensor, w: &Tensor, dy: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        let (xt, wt, gt) = (x.to_dtype(T::DTYPE)?, w.to_dtype(T::DTYPE)?, dy.to_dtype(T::DTYPE)?);
        let dim = w.elem_count();
        let (offset, eps) = (T::from(self.offset).unwrap(), T::from(self.eps).unwrap());
        let n = T::from(dim).unwrap();
        let mut dx = vec![T::zero(); x.elem_count()];
        let rows = x.elem_count() / dim;
        // dw: one partial sum per task, added up after.
        let per_task = (8 * 1024 / dim).max(1);
        let tasks = rows.div_ceil(per_task);
        let mut partial = vec![T::zero(); tasks * dim];
        with_values(&xt, |xv: &[T]| {
            with_values(&wt, |wv: &[T]| {
                with_values(&gt, |g: &[T]| {
                    let (dx_ptr, part_ptr) = (SharedMut(dx.as_mut_ptr()), SharedMut(partial.as_mut_ptr()));
                    Pool::global().run(tasks, &|c| {
                        // SAFETY: task c alone writes rows of dx in its range and its own partial row.
                        let part = unsafe { std::slice::from_raw_parts_mut(part_ptr.add(c * dim), dim) };
                        for r in c * per_task..((c + 1) * per_task).min(rows) {
                            let (row, g) = (&xv[r * dim..][..dim], &g[r * dim..][..dim]);
                            let dx = unsafe { std::slice::from_raw_parts_mut(dx_ptr.add(r * dim), dim) };
                            let inv = inv_rms(row, eps);
                            let mean = row.iter().zip(g).zip(wv).fold(T::zero(), |a, ((&v, &g), &w)| a + g * (offset + w) * v * inv) / n;
                            for (j, d) in dx.iter_mut().enumerate() {
                                let xhat = row[j] * inv;
                                *d = (g[j] * (offset + wv[j]) - xhat * mean) * inv;
                                part[j] += g[j] * xhat;
                            }
                        }
                    });
                })
            })
        })???;
        let dw = weight_gradient(w, self.w_grad.as_ref(), |dw: &mut [T]| {
            for part in partial.chunks_exact(dim) {
                dw.iter_mut().zip(part).for_each(|(a, &b)| *a += b);
            }
            Ok(())
        })?;
        Ok((tensor(dx, x.shape(), x)?, dw))
    }
}

fn inv_rms<T: Float>(row: &[T], eps: T) -> T {
    let mean_sq = row.iter().fold(T::zero(), |a, &v| a + v * v) / T::from(row.len()).unwrap();
    T::one() / (mean_sq + eps).sqrt()
}

/// act(gate) * up, element by element, differentiable in both. SiLU and
/// GELU's tanh form run here; GELU's erf form as candle's ops.
pub fn gated(gate: &Tensor, up: &Tensor, activation: Activation) -> Result<Tensor> {
    if gate.shape() != up.shape() {
        candle_core::bail!("gated: shapes {:?} and {:?} differ", gate.shape(), up.shape());
    }
    let gelu_tanh = match activation {
        Activation::Gelu => return gate.gelu_erf()? * up,
        _ if !applies(&[gate, up]) => {
            untracked(&[gate, up], "gated activation")?;
            return match activation {
                Activation::Silu => gate.silu()? * up,
                _ => gate.gelu()? * up,
            };
        }
        Activation::Silu => false,
        Activation::GeluTanh => true,
    };
    gate.contiguous()?.apply_op2(&up.contiguous()?, Op2(GatedOp { gelu_tanh }))
}

struct GatedOp {
    gelu_tanh: bool,
}

impl GatedOp {
    /// act(g) and act'(g).
    #[inline(always)]
    fn act<T: Exp>(&self, g: T) -> (T, T) {
        let one = T::one();
        if self.gelu_tanh {
            let (c, k) = (T::from((2.0 / std::f64::consts::PI).sqrt()).unwrap(), T::from(0.044715).unwrap());
            let half = T::from(0.5).unwrap();
            let t = (c * (g + k * g * g * g)).tanh_fast();
            (half * g * (one + t), half * (one + t) + half * g * (one - t * t) * c * (one + T::from(3.0).unwrap() * k * g * g))
        } else {
            let s = one / (one + (-g).exp_fast());
            (g * s, s * (one + g * (one - s)))
        }
    }
}

impl Kernel2 for GatedOp {
    const NAME: &'static str = "gated-activation";

    fn fwd<T: WithDType + Exp>(&self, g: &CpuStorage, lg: &Layout, u: &CpuStorage, lu: &Layout) -> Result<(CpuStorage, Shape)> {
        zip_map(
            g,
            lg,
            u,
            lu,
            #[inline(always)]
            |g: T, u| self.act(g).0 * u,
        )
    }

    /// d gate = dh · up · act'(gate), d up = dh · act(gate), written into one buffer of two halves.
    fn bwd_as<T: WithDType + Exp>(&self, gate: &Tensor, up: &Tensor, dh: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        let (gt, ut, dt) = (gate.to_dtype(T::DTYPE)?, up.to_dtype(T::DTYPE)?, dh.to_dtype(T::DTYPE)?);
        let n = gate.elem_count();
        let (mut d_gate, mut d_up) = (vec![T::zero(); n], vec![T::zero(); n]);
        let d_up_ptr = SharedMut(d_up.as_mut_ptr());
        with_values(&gt, |gv: &[T]| {
            with_values(&ut, |uv: &[T]| {
                with_values(&dt, |dv: &[T]| {
                    // Elements split into tasks by d gate's; each task writes the same elements of d up.
                    over_rows(&mut d_gate, 1, &|first, dg| {
                        let range = first..first + dg.len();
                        // SAFETY: this task alone writes these elements of d_up, which outlives the job.
                        let du = unsafe { std::slice::from_raw_parts_mut(d_up_ptr.add(first), dg.len()) };
                        let (gv, uv, dv) = (&gv[range.clone()], &uv[range.clone()], &dv[range]);
                        vectorized(
                            #[inline(always)]
                            || {
                                for ((((dg, du), &g), &u), &d) in dg.iter_mut().zip(du.iter_mut()).zip(gv).zip(uv).zip(dv) {
                                    let (a, da) = self.act(g);
                                    *dg = d * u * da;
                                    *du = d * a;
                                }
                            },
                        )
                    });
                })
            })
        })???;
        Ok((tensor(d_gate, gate.shape(), gate)?, Some(tensor(d_up, up.shape(), up)?)))
    }
}

/// a + b for tensors of one shape (the residual stream), differentiable in both.
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.shape() != b.shape() {
        candle_core::bail!("add: shapes {:?} and {:?} differ", a.shape(), b.shape());
    }
    if !applies(&[a, b]) {
        return a + b;
    }
    a.contiguous()?.apply_op2(&b.contiguous()?, Op2(AddOp))
}

struct AddOp;

impl Kernel2 for AddOp {
    const NAME: &'static str = "add";

    fn fwd<T: WithDType + Exp>(&self, a: &CpuStorage, la: &Layout, b: &CpuStorage, lb: &Layout) -> Result<(CpuStorage, Shape)> {
        zip_map(a, la, b, lb, |a: T, b| a + b)
    }

    fn bwd_as<T: WithDType + Exp>(&self, _: &Tensor, _: &Tensor, g: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        Ok((g.clone(), Some(g.clone())))
    }
}

/// Rows `ids` of an embedding table w (V, H): (N, H), differentiable in w.
/// Its backward adds the rows' gradients into `w_grad` when given: candle's
/// `index_select` builds the whole table's gradient for it.
pub fn embedding(w: &Tensor, w_grad: Option<Arc<GradBuffer>>, ids: &[u32]) -> Result<Tensor> {
    let vocab = w.dim(0)?;
    if let Some(&id) = ids.iter().find(|&&id| id as usize >= vocab) {
        candle_core::bail!("embedding: token id {id} is outside the vocabulary of {vocab}");
    }
    if !applies(&[w]) {
        untracked(&[w], "embedding")?;
        return w.index_select(&Tensor::from_slice(ids, ids.len(), w.device())?, 0);
    }
    w.contiguous()?.apply_op1(EmbeddingOp { ids: ids.to_vec(), w_grad })
}

struct EmbeddingOp {
    ids: Vec<u32>,
    /// Where the backward adds w's gradient, if the caller gave one.
    w_grad: Option<Arc<GradBuffer>>,
}

impl EmbeddingOp {
    /// Add row r of `rows` (N, H) to row ids[r] of `table` (V, H).
    fn scatter_add<T: WithDType + Float>(&self, rows: &[T], table: &mut [T], h: usize) {
        for (row, &id) in rows.chunks_exact(h).zip(&self.ids) {
            table[id as usize * h..][..h].iter_mut().zip(row).for_each(|(t, &g)| *t += g);
        }
    }

    fn bwd_as<T: WithDType + Exp>(&self, w: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let h = w.dim(1)?;
        with_values(&grad.to_dtype(T::DTYPE)?, |g: &[T]| {
            weight_gradient(w, self.w_grad.as_ref(), |table: &mut [T]| {
                self.scatter_add(g, table, h);
                Ok(())
            })
        })?
    }
}

impl CustomOp1 for EmbeddingOp {
    fn name(&self) -> &'static str {
        "embedding"
    }

    fn cpu_fwd(&self, w: &CpuStorage, lw: &Layout) -> Result<(CpuStorage, Shape)> {
        let h = lw.shape().dims2()?.1;
        fn gather<T: WithDType>(ids: &[u32], table: &[T], h: usize) -> Vec<T> {
            ids.iter().flat_map(|&id| table[id as usize * h..][..h].iter().copied()).collect()
        }
        let storage = match w.dtype() {
            DType::F64 => CpuStorage::F64(gather(&self.ids, values::<f64>(w, lw)?, h)),
            DType::F32 => CpuStorage::F32(gather(&self.ids, values::<f32>(w, lw)?, h)),
            other => candle_core::bail!("embedding: {other:?} tables are not supported here"),
        };
        Ok((storage, Shape::from((self.ids.len(), h))))
    }

    fn bwd(&self, w: &Tensor, _: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        match w.dtype() {
            DType::F64 => self.bwd_as::<f64>(w, grad),
            _ => self.bwd_as::<f32>(w, grad),
        }
    }
}

/// Rotary embedding of x (N, heads · head_dim), each token's heads side by
/// side, at each token's angles (`angles`: N tokens' worth), differentiable
/// in x: the backward rotates the gradient back.
pub fn rope(x: &Tensor, angles: &CosSin, head_dim: usize) -> Result<Tensor> {
    let (n, width) = x.dims2()?;
    if head_dim == 0 || width % head_dim != 0 || head_dim < angles.rot_dim {
        candle_core::bail!("rope: rows of {width} values are not heads of {head_dim} rotating {}", angles.rot_dim);
    }
    if angles.cos.len() != n * angles.rot_dim / 2 {
        candle_core::bail!("rope: {} angles for {n} tokens", angles.cos.len() / (angles.rot_dim / 2).max(1));
    }
    x.contiguous()?.apply_op1(RopeOp { angles: angles.clone(), head_dim })
}

struct RopeOp {
    angles: CosSin,
    head_dim: usize,
}

impl RopeOp {
    /// Rotate every (token, head) row of x, forward or back.
    fn run<T: WithDType + Float>(&self, x: &[T], shape: &Shape, inverse: bool) -> Result<Vec<T>> {
        let (_, width) = shape.dims2()?;
        let (a, half, hd) = (&self.angles, self.angles.rot_dim / 2, self.head_dim);
        let heads = width / hd;
        let mut out = vec![T::zero(); x.len()];
        over_rows(&mut out, hd, &|first, rows| {
            for (r, out) in rows.chunks_exact_mut(hd).enumerate() {
                let (row, token) = (first + r, (first + r) / heads);
                let at = token * half..(token + 1) * half;
                rotate(&x[row * hd..(row + 1) * hd], &a.cos[at.clone()], &a.sin[at], a.rot_dim, inverse, out);
            }
        });
        Ok(out)
    }
}

impl CustomOp1 for RopeOp {
    fn name(&self) -> &'static str {
        "rope"
    }

    fn cpu_fwd(&self, x: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = match x.dtype() {
            DType::F64 => CpuStorage::F64(self.run(values::<f64>(x, l)?, l.shape(), false)?),
            _ => CpuStorage::F32(self.run(values::<f32>(x, l)?, l.shape(), false)?),
        };
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let dy = dy.to_dtype(x.dtype())?;
        let dx = match x.dtype() {
            DType::F64 => tensor(with_values(&dy, |g: &[f64]| self.run(g, x.shape(), true))??, x.shape(), x)?,
            _ => tensor(with_values(&dy, |g: &[f32]| self.run(g, x.shape(), true))??, x.shape(), x)?,
        };
        Ok(Some(dx))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor, Var, D};

    use crate::config::Activation;

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
    }

    /// Each op against the same maths in candle's primitives: values and the
    /// gradients of a random weighting of the output, in f64 (so both sides
    /// are exact to rounding) and in f32.
    fn check(name: &str, dtype: DType, shapes: [&[usize]; 2], ours: &dyn Fn(&Tensor, &Tensor) -> Tensor, naive: &dyn Fn(&Tensor, &Tensor) -> Tensor) {
        // candle's own GELU backward rounds its constants to six digits.
        let grad_tol = if name == "gelu" {
            1e-5
        } else if dtype == DType::F64 {
            1e-9
        } else {
            1e-3
        };
        let dev = Device::Cpu;
        let a = Var::from_tensor(&Tensor::randn(0f64, 1.0, shapes[0], &dev).unwrap().to_dtype(dtype).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::randn(0f64, 1.0, shapes[1], &dev).unwrap().to_dtype(dtype).unwrap()).unwrap();
        let (y, want) = (ours(&a, &b), naive(&a, &b));
        let tol = if dtype == DType::F64 { 1e-10 } else { 1e-4 };
        assert!(max_diff(&y, &want) < tol, "{name} {dtype:?}: values differ by {}", max_diff(&y, &want));
        let coef = Tensor::randn(0f64, 1.0, y.shape(), &dev).unwrap().to_dtype(dtype).unwrap();
        let g = (&y * &coef).unwrap().sum_all().unwrap().backward().unwrap();
        let g_want = (&want * &coef).unwrap().sum_all().unwrap().backward().unwrap();
        for (which, v) in [("first", &a), ("second", &b)] {
            let (got, want) = (g.get(v).expect("a gradient for every input"), g_want.get(v).unwrap());
            assert!(max_diff(got, want) < grad_tol, "{name} {dtype:?}: d {which} differs by {}", max_diff(got, want));
        }
    }

    #[test]
    fn fused_ops_and_their_gradients_equal_candles_primitives() {
        for dtype in [DType::F64, DType::F32] {
            check("linear", dtype, [&[37, 24], &[19, 24]], &|x, w| super::linear(x, w, None).unwrap(), &|x, w| x.matmul(&w.t().unwrap()).unwrap());
            for offset in [0.0, 1.0] {
                check("rms_norm", dtype, [&[3, 5, 24], &[24]], &|x, w| super::rms_norm(x, w, None, 1e-6, offset).unwrap(), &|x, w| {
                    let inv = (x.sqr().unwrap().mean_keepdim(D::Minus1).unwrap() + 1e-6).unwrap().sqrt().unwrap();
                    x.broadcast_div(&inv).unwrap().broadcast_mul(&(w + offset).unwrap()).unwrap()
                });
            }
            check("silu", dtype, [&[4, 3, 10], &[4, 3, 10]], &|g, u| super::gated(g, u, Activation::Silu).unwrap(), &|g, u| {
                (g.silu().unwrap() * u).unwrap()
            });
            check("gelu", dtype, [&[4, 3, 10], &[4, 3, 10]], &|g, u| super::gated(g, u, Activation::GeluTanh).unwrap(), &|g, u| {
                (g.gelu().unwrap() * u).unwrap()
            });
            check("add", dtype, [&[4, 3, 10], &[4, 3, 10]], &|a, b| super::add(a, b).unwrap(), &|a, b| (a + b).unwrap());
        }
    }

    /// Inference's shapes (no gradient tracked), from a decode step's one row
    /// to a prefill's hundreds.
    #[test]
    fn linear_equals_candles_matmul_at_every_shape() {
        let dev = Device::Cpu;
        for (m, k, n) in [(1, 8, 3), (7, 64, 100), (33, 576, 1536), (130, 40, 17)] {
            let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
            let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
            let err = max_diff(&super::linear(&x, &w, None).unwrap(), &x.matmul(&w.t().unwrap()).unwrap());
            assert!(err < 1e-3, "({m}, {k}, {n}): {err}");
        }
    }

    /// Both ways of splitting dst (rows when it is taller than wide), with a
    /// transposed lhs, as a weight gradient reads it, and accumulation.
    #[test]
    fn strided_accumulating_gemm_equals_candles() {
        let dev = Device::Cpu;
        for (m, k, n) in [(300, 24, 70), (70, 24, 300), (129, 5, 129)] {
            let a_t = Tensor::randn(0f32, 1.0, (k, m), &dev).unwrap();
            let b = Tensor::randn(0f32, 1.0, (k, n), &dev).unwrap();
            let before = Tensor::randn(0f32, 1.0, (m, n), &dev).unwrap();
            let mut dst = before.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            super::with_values(&a_t, |a: &[f32]| {
                super::with_values(&b, |b: &[f32]| {
                    let (lhs, rhs) = (super::Operand { ptr: a.as_ptr(), rs: 1, cs: m }, super::Operand { ptr: b.as_ptr(), rs: n, cs: 1 });
                    // SAFETY: a_t is (k, m) and b (k, n), row-major; dst is (m, n).
                    unsafe { super::gemm(m, n, k, dst.as_mut_ptr(), n, lhs, rhs, true) }
                })
            })
            .unwrap()
            .unwrap();
            let want = (before + a_t.t().unwrap().matmul(&b).unwrap()).unwrap();
            let err = max_diff(&Tensor::from_vec(dst, (m, n), &dev).unwrap(), &want);
            assert!(err < 1e-4, "({m}, {k}, {n}): {err}");
        }
    }

    /// bf16 (reward models) runs on candle's ops; a bf16 tensor that tracks a
    /// gradient is refused rather than given a kernel without a backward.
    #[test]
    fn other_dtypes_fall_back_for_inference_only() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (3, 16), &dev).unwrap();
        let w = Tensor::randn(0f32, 1.0, 16, &dev).unwrap();
        let (xb, wb) = (x.to_dtype(DType::BF16).unwrap(), w.to_dtype(DType::BF16).unwrap());
        let ours = super::rms_norm(&x, &w, None, 1e-6, 1.0).unwrap();
        let fallback = super::rms_norm(&xb, &wb, None, 1e-6, 1.0).unwrap().to_dtype(DType::F32).unwrap();
        // x, w and the output each rounded to bf16 (8 bits): 1.2% of the largest
        // value at worst in 300 draws, so 3%. (An absolute 0.05 failed on some.)
        let largest = ours.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap() as f64;
        assert!(max_diff(&ours, &fallback) < 0.03 * largest, "bf16 RMSNorm differs by {} (largest value {largest})", max_diff(&ours, &fallback));
        let tracked = Var::from_tensor(&xb).unwrap();
        let err = super::rms_norm(&tracked, &wb, None, 1e-6, 1.0).unwrap_err().to_string();
        assert!(err.contains("f32 or f64"), "{err}");
    }

    /// Rope against transformers' formula, x * cos + rotate_half(x) * sin, in
    /// candle's primitives, with a partial rotation (rot_dim 6 of head_dim 8).
    #[test]
    fn rope_and_its_gradient_equal_the_rotate_half_formula() {
        use crate::rope::CosSin;
        let (heads, n, hd, rot) = (3, 5, 8, 6);
        let angles: Vec<f32> = (0..n * rot / 2).map(|i| 0.37 * i as f32).collect();
        let cs = CosSin { cos: angles.iter().map(|a| a.cos()).collect(), sin: angles.iter().map(|a| a.sin()).collect(), rot_dim: rot };
        // (token, 1, rot): one angle table for every head of a token.
        let table = |v: &[f32]| {
            let t = Tensor::from_slice(v, (n, 1, rot / 2), &Device::Cpu).unwrap().to_dtype(DType::F64).unwrap();
            Tensor::cat(&[&t, &t], 2).unwrap()
        };
        let (cos, sin) = (table(&cs.cos), table(&cs.sin));
        for dtype in [DType::F64, DType::F32] {
            let tol = if dtype == DType::F64 { 1e-12 } else { 1e-5 };
            let naive = |x: &Tensor| {
                let x = x.to_dtype(DType::F64).unwrap();
                let r = x.narrow(D::Minus1, 0, rot).unwrap();
                let (x1, x2) = (r.narrow(D::Minus1, 0, rot / 2).unwrap(), r.narrow(D::Minus1, rot / 2, rot / 2).unwrap());
                let rotated = Tensor::cat(&[&x2.neg().unwrap(), &x1], D::Minus1).unwrap();
                let out = (r.broadcast_mul(&cos).unwrap() + rotated.broadcast_mul(&sin).unwrap()).unwrap();
                Tensor::cat(&[&out, &x.narrow(D::Minus1, rot, hd - rot).unwrap()], D::Minus1).unwrap()
            };
            let x = Var::from_tensor(&Tensor::randn(0f64, 1.0, (n, heads * hd), &Device::Cpu).unwrap().to_dtype(dtype).unwrap()).unwrap();
            let ours = super::rope(&x, &cs, hd).unwrap().reshape((n, heads, hd)).unwrap();
            let want = naive(&x.reshape((n, heads, hd)).unwrap());
            assert!(max_diff(&ours.to_dtype(DType::F64).unwrap(), &want) < tol, "rope {dtype:?}: values differ");
            let coef = Tensor::randn(0f64, 1.0, want.shape(), &Device::Cpu).unwrap();
            let g = (ours.to_dtype(DType::F64).unwrap() * &coef).unwrap().sum_all().unwrap().backward().unwrap();
            let g_want = (&want * &coef).unwrap().sum_all().unwrap().backward().unwrap();
            let (got, expected) = (g.get(&x).unwrap().to_dtype(DType::F64).unwrap(), g_want.get(&x).unwrap().to_dtype(DType::F64).unwrap());
            assert!(max_diff(&got, &expected) < tol * 10.0, "rope {dtype:?}: gradients differ by {}", max_diff(&got, &expected));
        }
    }
}
