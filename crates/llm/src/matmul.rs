//! The dense matmul every kernel builds on, in the operands' own precision,
//! on our pool; `kernels::gemm` runs it or its bf16 form (`bf16.rs`), which
//! falls back to it.

use candle_core::WithDType;

use crate::pool::Pool;

/// A strided matrix operand: element (i, j) at `ptr[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub(crate) struct Operand<T> {
    pub ptr: *const T,
    pub rs: usize,
    pub cs: usize,
}

/// dst (m, n), row-major with row stride `dst_rs`, = lhs (m, k) · rhs (k, n),
/// plus dst's old values when `accumulate`, in T's own precision whatever
/// the process's matmul precision (`kernels::gemm` picks). Blocks of dst
/// run on the pool (one per thread), each a single-threaded call of the
/// `gemm` crate's kernels (candle's).
///
/// A block packs all of the operand it does not split, so dst is split along
/// its longer side: a weight gradient (vocabulary, hidden) split into column
/// blocks repacked the whole (vocabulary, tokens) operand in every block,
/// and ran at half the speed of the same FLOPs split by rows.
///
/// # Safety
/// The operands hold the elements their shapes and strides reach, and `dst`
/// holds m rows of n columns that nothing else reads or writes meanwhile.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_f32<T: WithDType>(
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
    // One block per thread, of equal size in whole units of the kernel:
    // `gemm` transposes a row-major dst, so dst's columns run down its
    // 64-wide microkernel and its rows along the 6-wide side. Blocks of 64
    // rows either way left a thread idle for a third of some matmuls
    // (640 rows as 192 + 192 + 192 + 64 on 2 threads).
    let unit = if by_rows { 8 } else { 64 };
    let units = long.div_ceil(unit);
    let blocks = pool.threads().min(units);
    pool.run(blocks, &|c| {
        let start = (c * units / blocks * unit).min(long);
        let len = ((c + 1) * units / blocks * unit).min(long) - start;
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
