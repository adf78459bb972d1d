//! f32 kernels of the inference path (sampling, reward models, reference
//! log-probs) on our pool: dense matmul, RMSNorm, gated activation and the
//! residual add.
//!
//! candle runs a dense matmul on rayon's threads, its fused RMSNorm on
//! rayon's too, and its large element-wise ops on a third set (its barrier
//! pool), while the cached attention and the quantized matmuls run on
//! [`Pool`]'s. On a 2-core machine their spinning workers take turns
//! stealing each other's cores: a quarter of a reward model's time went to
//! spinning. Here every step of a layer runs on the one pool; the matmul
//! calls the `gemm` kernels candle uses, single-threaded, per block of output
//! columns. Nothing here has a backward pass: the model uses these only when
//! no gradient is tracked, and falls back to candle's ops for other dtypes.

use candle_core::{DType, Storage, Tensor, WithDType, D};

use crate::pool::{Pool, SharedMut};

/// Whether these kernels take `tensors`: f32 on the CPU, no gradient tracked.
pub(crate) fn applies(tensors: &[&Tensor]) -> bool {
    tensors.iter().all(|t| t.dtype() == DType::F32 && t.device().is_cpu() && !t.track_op())
}

/// `f` on the values of a CPU tensor of element type T (copied first if not
/// contiguous).
pub fn with_values<T: WithDType, R>(t: &Tensor, f: impl FnOnce(&[T]) -> R) -> candle_core::Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let (Storage::Cpu(cpu), Some((start, end))) = (&*storage, layout.contiguous_offsets()) else {
        candle_core::bail!("the inference kernels need CPU tensors");
    };
    Ok(f(&cpu.as_slice::<T>()?[start..end]))
}

/// Fill `out` row by row (rows of `row` values) across the pool: `f(r, row r)`.
fn fill_rows(out: &mut [f32], row: usize, f: &(dyn Fn(usize, &mut [f32]) + Sync)) {
    let rows = out.len() / row;
    let per_task = (16 * 1024 / row).max(1);
    let ptr = SharedMut(out.as_mut_ptr());
    Pool::global().run(rows.div_ceil(per_task), &|c| {
        for r in c * per_task..((c + 1) * per_task).min(rows) {
            // SAFETY: row r is written by this task only; `out` outlives the job.
            f(r, unsafe { std::slice::from_raw_parts_mut(ptr.add(r * row), row) });
        }
    });
}

/// A strided f32 matrix operand: element (i, j) at `ptr[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub(crate) struct Operand<T> {
    pub ptr: *const T,
    pub rs: usize,
    pub cs: usize,
}

/// dst (m, n), row-major with row stride `dst_rs`, = lhs (m, k) · rhs (k, n),
/// plus dst's old values when `accumulate`; blocks of dst run on the pool
/// (two per thread, for balance), each a single-threaded call of the kernels.
///
/// A block packs all of the operand it does not split, so dst is split along
/// its longer side: a weight gradient (vocabulary, hidden) split into column
/// blocks repacked the whole (vocabulary, tokens) operand in every block,
/// and ran at half the speed of the same FLOPs split by rows.
///
/// # Safety
/// The operands hold the elements their shapes and strides reach, and `dst`
/// holds m rows of n columns that nothing else reads or writes meanwhile.
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
    struct Ptrs<T>(*mut T, Operand<T>, Operand<T>);
    // SAFETY: the tasks write disjoint blocks of dst and only read the operands.
    unsafe impl<T> Sync for Ptrs<T> {}
    let ptrs = Ptrs(dst, lhs, rhs);
    let pool = Pool::global();
    let by_rows = m > n;
    let long = if by_rows { m } else { n };
    // Multiples of 64, a whole number of the kernels' rows and columns.
    let block = long.div_ceil(2 * pool.threads()).next_multiple_of(64);
    pool.run(long.div_ceil(block), &|c| {
        let (start, len) = (c * block, block.min(long - c * block));
        let Ptrs(dst, lhs, rhs) = &ptrs;
        let (rows, cols) = if by_rows { (len, n) } else { (m, len) };
        // SAFETY: as the caller promised; this task touches its own block of dst.
        unsafe {
            let (dst, lhs_ptr, rhs_ptr) = if by_rows {
                (dst.add(start * dst_rs), lhs.ptr.add(start * lhs.rs), rhs.ptr)
            } else {
                (dst.add(start), lhs.ptr, rhs.ptr.add(start * rhs.cs))
            };
            gemm::gemm(
                rows,
                cols,
                k,
                dst,
                1,
                dst_rs as isize,
                accumulate,
                lhs_ptr,
                lhs.cs as isize,
                lhs.rs as isize,
                rhs_ptr,
                rhs.cs as isize,
                rhs.rs as isize,
                if accumulate { T::one() } else { T::zero() },
                T::one(),
                false,
                false,
                false,
                gemm::Parallelism::None,
            )
        }
    });
}

/// x (m, k) · wᵀ for a weight w (n, k): (m, n).
pub(crate) fn matmul_t(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    let ((m, k), (n, wk)) = (x.dims2()?, w.dims2()?);
    if k != wk {
        candle_core::bail!("matmul: input has {k} features, the weight {wk}");
    }
    let mut out = vec![0f32; m * n];
    with_values(x, |xv: &[f32]| {
        with_values(w, |wv: &[f32]| {
            let (lhs, rhs) = (Operand { ptr: xv.as_ptr(), rs: k, cs: 1 }, Operand { ptr: wv.as_ptr(), rs: 1, cs: k });
            // SAFETY: x is (m, k) and w (n, k), both row-major; out is (m, n).
            unsafe { gemm(m, n, k, out.as_mut_ptr(), n, lhs, rhs, false) }
        })
    })??;
    Tensor::from_vec(out, (m, n), x.device())
}

/// x / sqrt(mean(x^2) + eps) * (offset + weight) over the last dimension.
pub(crate) fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64, offset: f64) -> candle_core::Result<Tensor> {
    let dim = weight.dim(0)?;
    let scale = with_values(weight, |w: &[f32]| w.iter().map(|&v| (v as f64 + offset) as f32).collect::<Vec<_>>())?;
    let mut out = vec![0f32; x.elem_count()];
    with_values(x, |xs: &[f32]| {
        fill_rows(&mut out, dim, &|r, y| {
            let row = &xs[r * dim..(r + 1) * dim];
            let mean_sq = row.iter().map(|&v| v * v).sum::<f32>() / dim as f32;
            let inv = 1.0 / (mean_sq + eps as f32).sqrt();
            for ((y, &v), &s) in y.iter_mut().zip(row).zip(&scale) {
                *y = v * inv * s;
            }
        })
    })?;
    Tensor::from_vec(out, x.shape(), x.device())
}

/// `f(a, b)` element by element, for tensors of one shape.
fn zip_map(a: &Tensor, b: &Tensor, f: &(dyn Fn(f32, f32) -> f32 + Sync)) -> candle_core::Result<Tensor> {
    if a.shape() != b.shape() {
        candle_core::bail!("shapes {:?} and {:?} differ", a.shape(), b.shape());
    }
    let width = a.dim(D::Minus1)?;
    let mut out = vec![0f32; a.elem_count()];
    with_values(a, |x: &[f32]| {
        with_values(b, |y: &[f32]| {
            fill_rows(&mut out, width, &|r, o| {
                let at = r * width..(r + 1) * width;
                for ((o, &x), &y) in o.iter_mut().zip(&x[at.clone()]).zip(&y[at]) {
                    *o = f(x, y);
                }
            })
        })
    })??;
    Tensor::from_vec(out, a.shape(), a.device())
}

/// act(gate) * up: SiLU, or GELU's tanh form when `gelu_tanh`.
pub(crate) fn gated(gate: &Tensor, up: &Tensor, gelu_tanh: bool) -> candle_core::Result<Tensor> {
    let c = (2.0 / std::f32::consts::PI).sqrt();
    match gelu_tanh {
        true => zip_map(gate, up, &|g, u| 0.5 * g * (1.0 + (c * (g + 0.044715 * g * g * g)).tanh()) * u),
        false => zip_map(gate, up, &|g, u| g / (1.0 + (-g).exp()) * u),
    }
}

/// a + b (the residual stream).
pub(crate) fn add(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    zip_map(a, b, &|x, y| x + y)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, D};

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    #[test]
    fn matmul_equals_candles_at_every_shape() {
        let dev = Device::Cpu;
        for (m, k, n) in [(1, 8, 3), (7, 64, 100), (33, 576, 1536), (130, 40, 17)] {
            let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
            let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
            let err = max_diff(&super::matmul_t(&x, &w).unwrap(), &x.matmul(&w.t().unwrap()).unwrap());
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

    #[test]
    fn element_wise_kernels_equal_candles() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 2.0, (3, 5, 96), &dev).unwrap();
        let y = Tensor::randn(0f32, 2.0, (3, 5, 96), &dev).unwrap();
        let w = Tensor::randn(0f32, 1.0, 96, &dev).unwrap();
        let norm = x.broadcast_div(&(x.sqr().unwrap().mean_keepdim(D::Minus1).unwrap() + 1e-6).unwrap().sqrt().unwrap()).unwrap();
        let want = norm.broadcast_mul(&(&w + 1.0).unwrap()).unwrap();
        assert!(max_diff(&super::rms_norm(&x, &w, 1e-6, 1.0).unwrap(), &want) < 1e-5);
        let silu = (x.silu().unwrap() * &y).unwrap();
        assert!(max_diff(&super::gated(&x, &y, false).unwrap(), &silu) < 1e-5);
        let gelu = (x.gelu().unwrap() * &y).unwrap();
        assert!(max_diff(&super::gated(&x, &y, true).unwrap(), &gelu) < 1e-5);
        assert!(max_diff(&super::add(&x, &y).unwrap(), &(&x + &y).unwrap()) < 1e-6);
    }
}
