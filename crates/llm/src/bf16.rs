//! The f32 matmuls on the CPU's bf16 units: mixed precision.
//!
//! Switched on for the process ([`set_matmuls_bf16`], the binaries'
//! `--precision bf16`), every f32 matmul of `kernels` (each linear
//! layer's forward and both products of its backward, attention's two
//! products, the LM head's forward and backward) rounds both operands to
//! bf16 and accumulates their products in f32, as PyTorch's
//! `torch.autocast("cpu", dtype=torch.bfloat16)` and the GPU recipe's bf16
//! do. Everything else stays f32: the master weights and the optimizer's
//! state, norms, softmax, log-probs and the loss. Unlike autocast, a
//! product comes back in f32, not rounded to bf16 (the logits above all).
//!
//! A process-wide switch, like `torch.set_float32_matmul_precision`: every
//! matmul of the process runs one way, and the layers need not carry it.
//!
//! Tiers, the best this CPU has chosen at start, or the one `WRPO_BF16_ISA`
//! names:
//! - `amx`: AMX tiles (`tdpbf16ps`: a 16 x 16 f32 tile += 16 x 32 bf16 ·
//!   32 x 16 bf16), Sapphire Rapids and later;
//! - `avx512bf16`: `vdpbf16ps` on zmm registers (Zen 4, Cooper Lake);
//! - `emulated`: the operands rounded to bf16, then the f32 matmul: the same
//!   numbers at f32's speed. The reference the others are tested against,
//!   and what a CPU with neither runs when asked for it by name.
//!
//! No crate does this: `gemm` (candle's) has f16 but no bf16 kernels, and
//! `matrixmultiply` f32 and f64 only; oneDNN has no maintained Rust binding.
//!
//! Both hardware tiers read the same packed operands: A as bf16 rows of the
//! depth padded to 32, B in panels of 32 columns with each pair of depths
//! side by side (the "VNNI" layout both `vdpbf16ps` and `tdpbf16ps` read),
//! zeros past the edges. Outputs are written in blocks of 32 x 32.

use std::{
    cell::RefCell,
    sync::{
        atomic::{AtomicBool, Ordering},
        OnceLock,
    },
};

use crate::{
    matmul::{gemm_f32, Operand},
    pool::Pool,
};

/// Rows and columns of an output block; also the depth step.
const BLOCK: usize = 32;
/// Rows (or columns) of the larger operand packed at a time.
const CHUNK: usize = 256;
/// Depth packed at a time (a multiple of BLOCK).
const DEPTH: usize = 2048;

static ON: AtomicBool = AtomicBool::new(false);

/// Run the process's f32 matmuls in bf16 (or back in f32); bf16 needs a
/// tier ([`tier`]), else the error says which this CPU has.
pub fn set_matmuls_bf16(on: bool) -> Result<(), String> {
    if on {
        tier()?;
    }
    ON.store(on, Ordering::Relaxed);
    Ok(())
}

/// Whether the f32 matmuls run in bf16.
pub fn matmuls_bf16() -> bool {
    ON.load(Ordering::Relaxed)
}

/// The precision of a process's f32 matmuls, as a run records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    /// Operands rounded to bf16, products summed in f32.
    Bf16,
}

impl Precision {
    /// `f32`, `bf16`, or `auto`: bf16 where this CPU has bf16 units, else f32
    /// (the binaries' `--precision`).
    pub fn parse(s: &str) -> Result<Precision, String> {
        match s {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            "auto" => Ok(if has_bf16_units() { Precision::Bf16 } else { Precision::F32 }),
            _ => Err(format!("'{s}' is not a precision: auto, f32 or bf16")),
        }
    }

    pub fn is_f32(&self) -> bool {
        *self == Precision::F32
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }

    /// Run the process's matmuls in this precision; the error names the flag.
    pub fn apply(self) -> Result<(), String> {
        set_matmuls_bf16(self == Precision::Bf16).map_err(|e| format!("--precision {}: {e}", self.name()))
    }

    /// In words for logs: `f32`, or `bf16 (amx)` with the tier it runs on.
    pub fn describe(self) -> String {
        match (self, tier()) {
            (Precision::Bf16, Ok(t)) => format!("bf16 ({})", t.name()),
            _ => self.name().to_string(),
        }
    }
}

/// Names the tier to force, as the int8 kernels' `WRPO_ISA` does theirs.
const VARIABLE: &str = "WRPO_BF16_ISA";

#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Tier {
    Emulated,
    #[cfg(target_arch = "x86_64")]
    Avx512Bf16,
    #[cfg(target_arch = "x86_64")]
    Amx,
}

impl Tier {
    pub fn name(self) -> &'static str {
        match self {
            Tier::Emulated => "emulated",
            #[cfg(target_arch = "x86_64")]
            Tier::Avx512Bf16 => "avx512bf16",
            #[cfg(target_arch = "x86_64")]
            Tier::Amx => "amx",
        }
    }

    /// The tiers this CPU can run, best last.
    fn available() -> Vec<Tier> {
        #[allow(unused_mut)]
        let mut tiers = vec![Tier::Emulated];
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx512f") && has!("avx512bw") && has!("avx512bf16") {
                tiers.push(Tier::Avx512Bf16);
                if x86::amx_usable() {
                    tiers.push(Tier::Amx);
                }
            }
        }
        tiers
    }

    /// `requested`, or the best tier of this CPU.
    fn choose(requested: Option<&str>) -> Result<Tier, String> {
        crate::tiers::choose(&Tier::available(), Tier::name, requested, VARIABLE, "bf16 matmuls as")
    }
}

/// The tier bf16 matmuls run on: `WRPO_BF16_ISA`'s, or this CPU's best.
pub fn tier() -> Result<Tier, String> {
    static CHOSEN: OnceLock<Result<Tier, String>> = OnceLock::new();
    CHOSEN.get_or_init(|| Tier::choose(std::env::var(VARIABLE).ok().as_deref())).clone()
}

/// Whether this CPU has bf16 units (a tier besides `emulated`): where
/// `--precision auto` picks bf16.
pub fn has_bf16_units() -> bool {
    Tier::available().len() > 1
}

/// f32 to bf16 bits, rounded to nearest even (NaN stays NaN), as
/// `vcvtne2ps2bf16` rounds.
pub(crate) fn to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) | 0x40) as u16;
    }
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// `x` rounded to bf16, as f32.
pub(crate) fn round(x: f32) -> f32 {
    f32::from_bits((to_bf16(x) as u32) << 16)
}

/// Round `var`'s values to bf16 (kept in f32), in place: the values a bf16
/// matmul reads of it. Returns how many sat exactly halfway between two
/// bf16 numbers, where any change, however small, moves what a bf16 matmul
/// reads by half a bf16 step.
pub fn round_var(var: &candle_core::Var) -> candle_core::Result<usize> {
    let v = var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
    let (rounded, ties) = (v.iter().map(|&x| round(x)).collect::<Vec<f32>>(), v.iter().filter(|x| x.to_bits() & 0xffff == 0x8000).count());
    var.set(&candle_core::Tensor::from_vec(rounded, var.shape(), var.device())?)?;
    Ok(ties)
}

/// dst (m, n), row stride `dst_rs`, = lhs (m, k) · rhs (k, n) (plus dst's
/// old values when `accumulate`), operands rounded to bf16, products summed
/// in f32. Blocks of dst run on the pool as in `matmul::gemm_f32`.
///
/// # Safety
/// As `matmul::gemm_f32`'s: the operands hold what their shapes and strides
/// reach, and nothing else touches dst's m x n elements meanwhile.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm(m: usize, n: usize, k: usize, dst: *mut f32, dst_rs: usize, lhs: Operand<f32>, rhs: Operand<f32>, accumulate: bool) {
    let tier = tier().expect("bf16 matmuls are switched on only with a tier");
    if tier == Tier::Emulated {
        return emulated(m, n, k, dst, dst_rs, lhs, rhs, accumulate);
    }
    struct Ptrs(*mut f32, Operand<f32>, Operand<f32>);
    // SAFETY: the tasks write disjoint blocks of dst and only read the operands.
    unsafe impl Sync for Ptrs {}
    let ptrs = Ptrs(dst, lhs, rhs);
    let pool = Pool::global();
    // Split dst along its longer side, each task packing all of the operand
    // it does not split (matmul::gemm_f32 says why).
    let by_rows = m > n;
    let long = if by_rows { m } else { n };
    let units = long.div_ceil(BLOCK);
    let blocks = pool.threads().min(units).max(1);
    pool.run(blocks, &|c| {
        let start = (c * units / blocks * BLOCK).min(long);
        let end = ((c + 1) * units / blocks * BLOCK).min(long);
        let Ptrs(dst, lhs, rhs) = &ptrs;
        let (rows, cols) = if by_rows { (start..end, 0..n) } else { (0..m, start..end) };
        // SAFETY: as the caller promised; this task writes its own block of dst.
        unsafe { block(tier, rows, cols, k, *dst, dst_rs, *lhs, *rhs, accumulate) }
    });
}

thread_local! {
    /// Each thread's packed operands, kept between calls: attention makes
    /// many small products.
    static PACKED: RefCell<(Vec<u16>, Vec<u16>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// One task's block of dst: rows x cols of it, from A's rows and B's columns.
///
/// # Safety
/// As [`gemm`]'s, for this block.
#[allow(clippy::too_many_arguments)]
unsafe fn block(
    tier: Tier,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    lhs: Operand<f32>,
    rhs: Operand<f32>,
    accumulate: bool,
) {
    // The depth a part at a time, the later parts adding to dst: packed
    // whole, the LM head's backward (its depth the vocabulary) held 25 MB of
    // each operand per thread, kept between calls (134 MB for Gemma's 262k).
    let mut d = 0;
    loop {
        let part = (k - d).min(DEPTH);
        // SAFETY: columns d.. of lhs and rows d.. of rhs are inside the operands.
        let (l, r) = unsafe { (Operand { ptr: lhs.ptr.add(d * lhs.cs), ..lhs }, Operand { ptr: rhs.ptr.add(d * rhs.rs), ..rhs }) };
        // SAFETY: as the caller promised, for this part of the depth.
        unsafe { block_depth(tier, rows.clone(), cols.clone(), part, dst, dst_rs, l, r, accumulate || d > 0) };
        d += part;
        if d >= k {
            return;
        }
    }
}

/// [`block`] for a depth of at most [`DEPTH`].
///
/// # Safety
/// As [`gemm`]'s, for this block.
#[allow(clippy::too_many_arguments)]
unsafe fn block_depth(
    tier: Tier,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    lhs: Operand<f32>,
    rhs: Operand<f32>,
    accumulate: bool,
) {
    if rows.is_empty() || cols.is_empty() {
        return;
    }
    let kp = k.div_ceil(BLOCK).max(1) * BLOCK;
    let (mr, nc) = (rows.len(), cols.len());
    PACKED.with_borrow_mut(|(a, b)| {
        #[cfg(target_arch = "x86_64")]
        let _tiles = (tier == Tier::Amx).then(x86::Tiles::load);
        // The smaller operand is packed whole, the larger a chunk at a time,
        // each chunk passing by the whole of the other while it is in the
        // cache: packed whole, the LM head's 49k columns went through memory
        // twice.
        let by_rows = mr >= nc;
        let (long, start) = if by_rows { (mr, rows.start) } else { (nc, cols.start) };
        // SAFETY (both packs): the operands reach these rows, columns and depths.
        if by_rows {
            unsafe { pack_b(b, rhs, cols.clone(), k, kp) };
        } else {
            unsafe { pack_a(a, lhs, rows.clone(), k, kp) };
        }
        for chunk in (0..long).step_by(CHUNK) {
            let part = start + chunk..start + (chunk + CHUNK).min(long);
            let (r_part, c_part) = if by_rows { (chunk..chunk + part.len(), 0..nc) } else { (0..mr, chunk..chunk + part.len()) };
            if by_rows {
                unsafe { pack_a(a, lhs, part, k, kp) };
            } else {
                unsafe { pack_b(b, rhs, part, k, kp) };
            }
            // Offsets into the packed operands: a chunk's start at 0.
            let (a_off, b_off) = if by_rows { (chunk, 0) } else { (0, chunk) };
            for c0 in c_part.step_by(BLOCK) {
                for r0 in r_part.clone().step_by(BLOCK) {
                    let (a, b) = (a[(r0 - a_off) * kp..].as_ptr(), b[(c0 - b_off) * kp..].as_ptr());
                    // SAFETY: the block at (r0, c0) is inside this task's part of dst.
                    let c = unsafe { dst.add((rows.start + r0) * dst_rs + cols.start + c0) };
                    let (h, w) = ((mr - r0).min(BLOCK), (nc - c0).min(BLOCK));
                    // SAFETY: a and b hold BLOCK rows and columns of depth kp; c is h x w.
                    unsafe { micro_edges(tier, a, b, kp, c, dst_rs, h, w, accumulate) }
                }
            }
        }
    });
}

/// A 32 x 32 block of dst, of which h x w are inside it: the kernels run on
/// a full block, so a block at the edge goes through a copy.
///
/// # Safety
/// `a` and `b` hold a packed block of depth `kp`; c holds h rows of w.
#[allow(clippy::too_many_arguments)]
unsafe fn micro_edges(tier: Tier, a: *const u16, b: *const u16, kp: usize, c: *mut f32, ldc: usize, h: usize, w: usize, accumulate: bool) {
    if h == BLOCK && w == BLOCK {
        // SAFETY: as the caller promised.
        return unsafe { micro(tier, a, b, kp, c, ldc, accumulate) };
    }
    let mut tmp = [0f32; BLOCK * BLOCK];
    if accumulate {
        for i in 0..h {
            // SAFETY: row i of the block has w elements inside dst.
            tmp[i * BLOCK..i * BLOCK + w].copy_from_slice(unsafe { std::slice::from_raw_parts(c.add(i * ldc), w) });
        }
    }
    // SAFETY: tmp is a full block.
    unsafe { micro(tier, a, b, kp, tmp.as_mut_ptr(), BLOCK, true) };
    for i in 0..h {
        // SAFETY: as above.
        unsafe { std::slice::from_raw_parts_mut(c.add(i * ldc), w) }.copy_from_slice(&tmp[i * BLOCK..i * BLOCK + w]);
    }
}

/// c (32 x 32, row stride ldc) = a · b, plus c when `accumulate`.
///
/// # Safety
/// As [`micro_edges`]'s, with a full block of c.
unsafe fn micro(tier: Tier, a: *const u16, b: *const u16, kp: usize, c: *mut f32, ldc: usize, accumulate: bool) {
    match tier {
        Tier::Emulated => unreachable!("the emulated tier does not pack"),
        // SAFETY: `tier` chose these only where the CPU has them.
        #[cfg(target_arch = "x86_64")]
        Tier::Avx512Bf16 => unsafe { x86::micro_avx512(a, b, kp, c, ldc, accumulate) },
        #[cfg(target_arch = "x86_64")]
        Tier::Amx => unsafe { x86::micro_amx(a, b, kp, c, ldc, accumulate) },
    }
}

/// A's rows as bf16, each of depth kp (zeros past k), padded with zero rows
/// to a multiple of 32.
///
/// # Safety
/// `src` holds rows x k elements.
unsafe fn pack_a(out: &mut Vec<u16>, src: Operand<f32>, rows: std::ops::Range<usize>, k: usize, kp: usize) {
    let padded = rows.len().div_ceil(BLOCK) * BLOCK;
    // Every element is written below: growing is the only zeroing needed.
    if out.len() < padded * kp {
        out.resize(padded * kp, 0);
    }
    let out = &mut out[..padded * kp];
    out[rows.len() * kp..].fill(0);
    let by_columns = cfg!(target_arch = "x86_64") && src.rs == 1 && src.cs != 1;
    for (i, r) in rows.clone().enumerate() {
        let row = &mut out[i * kp..(i + 1) * kp];
        row[k..].fill(0);
        if src.cs == 1 {
            // SAFETY: row r of src has k elements.
            convert(unsafe { std::slice::from_raw_parts(src.ptr.add(r * src.rs), k) }, &mut row[..k]);
        } else if !by_columns {
            for (j, o) in row[..k].iter_mut().enumerate() {
                // SAFETY: element (r, j) of src, j < k.
                *o = to_bf16(unsafe { *src.ptr.add(r * src.rs + j * src.cs) });
            }
        }
    }
    #[cfg(target_arch = "x86_64")]
    if by_columns {
        // SAFETY: packing runs only on the tiers with AVX512-BF16; src holds
        // these rows at depths below k.
        unsafe { x86::pack_a_columns(out, src.ptr.add(rows.start), src.cs, rows.len(), k, kp) };
    }
}

/// B's columns in panels of 32: panel p holds, for each pair of depths q,
/// its 32 columns' (B[2q][c], B[2q + 1][c]) side by side; zeros past k and
/// past the last column.
///
/// # Safety
/// `src` holds k x cols elements.
unsafe fn pack_b(out: &mut Vec<u16>, src: Operand<f32>, cols: std::ops::Range<usize>, k: usize, kp: usize) {
    let panels = cols.len().div_ceil(BLOCK);
    if out.len() < panels * BLOCK * kp {
        out.resize(panels * BLOCK * kp, 0);
    }
    let out = &mut out[..panels * BLOCK * kp];
    #[cfg(target_arch = "x86_64")]
    if src.cs == 1 {
        // Stored by rows: a pair of rows' 32 columns at once.
        for (p, panel) in out.chunks_exact_mut(BLOCK * kp).enumerate() {
            let c0 = cols.start + p * BLOCK;
            let width = (cols.end - c0).min(BLOCK);
            // SAFETY: packing runs only on the tiers with AVX512-BF16; the
            // panel's columns and k rows are inside src.
            unsafe { x86::pack_b_panel(panel, src.ptr.add(c0), src.rs, k, width) };
        }
        return;
    }
    // A pair of depths of one column is one u32 of the panel: panel p is a
    // (kp / 2) x 32 matrix of u32, column c's pairs down its column.
    let mut pairs = vec![0u16; kp];
    for p in 0..panels {
        let panel = &mut out[p * BLOCK * kp..(p + 1) * BLOCK * kp];
        for lane in 0..BLOCK {
            let c = cols.start + p * BLOCK + lane;
            if c >= cols.end {
                pairs.fill(0);
            } else if src.rs == 1 {
                // SAFETY: column c of src has k elements, one after another.
                convert(unsafe { std::slice::from_raw_parts(src.ptr.add(c * src.cs), k) }, &mut pairs[..k]);
            } else {
                for (d, o) in pairs[..k].iter_mut().enumerate() {
                    // SAFETY: element (d, c) of src, d < k.
                    *o = to_bf16(unsafe { *src.ptr.add(d * src.rs + c * src.cs) });
                }
            }
            for q in 0..kp / 2 {
                panel[q * 2 * BLOCK + 2 * lane] = pairs[2 * q];
                panel[q * 2 * BLOCK + 2 * lane + 1] = pairs[2 * q + 1];
            }
        }
    }
}

/// `src` rounded to bf16 into `out`, vectorised where the CPU has the units.
fn convert(src: &[f32], out: &mut [u16]) {
    #[cfg(target_arch = "x86_64")]
    if matches!(tier(), Ok(Tier::Avx512Bf16 | Tier::Amx)) {
        // SAFETY: those tiers are chosen only where the CPU has AVX512-BF16.
        return unsafe { x86::convert(src, out) };
    }
    for (o, &x) in out.iter_mut().zip(src) {
        *o = to_bf16(x);
    }
}

/// The emulated tier: both operands rounded to bf16 (as f32, which holds
/// them exactly, as it does their products), then the f32 matmul.
#[allow(clippy::too_many_arguments)]
unsafe fn emulated(m: usize, n: usize, k: usize, dst: *mut f32, dst_rs: usize, lhs: Operand<f32>, rhs: Operand<f32>, accumulate: bool) {
    let rounded = |src: Operand<f32>, rows: usize, cols: usize| -> Vec<f32> {
        // SAFETY: the operand holds rows x cols elements.
        (0..rows * cols).map(|e| round(unsafe { *src.ptr.add(e / cols * src.rs + e % cols * src.cs) })).collect()
    };
    let (a, b) = (rounded(lhs, m, k), rounded(rhs, k, n));
    let (a, b) = (Operand { ptr: a.as_ptr(), rs: k, cs: 1 }, Operand { ptr: b.as_ptr(), rs: n, cs: 1 });
    // SAFETY: a and b are the rounded operands, dst as the caller promised.
    unsafe { gemm_f32(m, n, k, dst, dst_rs, a, b, accumulate) }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::{asm, x86_64::*};

    use super::BLOCK;

    /// AMX-BF16 and AMX-TILE in CPUID, and the kernel's leave to use the
    /// tile data (Linux grants it per process on request; without it the
    /// first tile instruction kills the process).
    pub(super) fn amx_usable() -> bool {
        // CPUID leaf 7 exists on every x86-64 CPU with AVX-512.
        let leaf7 = __cpuid_count(7, 0);
        let (bf16, tile) = ((leaf7.edx >> 22) & 1 == 1, (leaf7.edx >> 24) & 1 == 1);
        bf16 && tile && request_tile_data()
    }

    #[cfg(target_os = "linux")]
    fn request_tile_data() -> bool {
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: arch_prctl with these arguments only asks for a permission.
        unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
    }

    #[cfg(not(target_os = "linux"))]
    fn request_tile_data() -> bool {
        false
    }

    /// The tile configuration of this thread while it lives: tmm0-3 hold a
    /// 32 x 32 f32 block of C as four 16 x 16 tiles, tmm4-5 two 16-row
    /// tiles of A (32 bf16 of depth each), tmm6-7 two of B (16 pairs of
    /// depths x 16 columns each); all 16 rows of 64 bytes.
    pub(super) struct Tiles;

    impl Tiles {
        pub(super) fn load() -> Tiles {
            #[repr(C, align(64))]
            struct Config([u8; 64]);
            let mut cfg = Config([0; 64]);
            cfg.0[0] = 1; // palette 1
            for t in 0..8 {
                cfg.0[16 + 2 * t] = 64; // bytes per row
                cfg.0[48 + t] = 16; // rows
            }
            // SAFETY: `tier` chose AMX, so the CPU has it and Linux allowed it.
            unsafe { asm!("ldtilecfg [{0}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly)) };
            Tiles
        }
    }

    impl Drop for Tiles {
        fn drop(&mut self) {
            // SAFETY: tiles were configured by `load`. Released, the thread's
            // AMX state is no longer saved at each context switch.
            unsafe { asm!("tilerelease", options(nostack, nomem)) };
        }
    }

    /// c (32 x 32, row stride ldc floats) = a · b (+ c), on AMX tiles.
    ///
    /// # Safety
    /// The CPU has AMX-BF16 and this thread holds [`Tiles`]; a holds 32 rows
    /// of kp bf16, b a panel of depth kp; c a full block.
    pub(super) unsafe fn micro_amx(a: *const u16, b: *const u16, kp: usize, c: *mut f32, ldc: usize, accumulate: bool) {
        let (lda, ldb, ldc_bytes) = (kp * 2, 4 * BLOCK, ldc * 4);
        // SAFETY (each block below): the pointers and strides reach only
        // the packed operands and c's block, as the caller promised.
        unsafe {
            let c_low = c.add(16 * ldc);
            if accumulate {
                asm!(
                    "tileloadd tmm0, [{c} + {s}*1]",
                    "tileloadd tmm1, [{c} + {s}*1 + 64]",
                    "tileloadd tmm2, [{cl} + {s}*1]",
                    "tileloadd tmm3, [{cl} + {s}*1 + 64]",
                    c = in(reg) c, cl = in(reg) c_low, s = in(reg) ldc_bytes, options(nostack, readonly)
                );
            } else {
                asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem));
            }
            for step in 0..kp / BLOCK {
                // A: 32 bf16 of depth per row (64 bytes) along each row; B: 16
                // pairs of depths, a pair's 32 columns being 128 bytes.
                let a_top = a.add(step * BLOCK);
                let a_low = a_top.add(16 * kp);
                let b_step = b.add(step * BLOCK * BLOCK);
                asm!(
                    "tileloadd tmm4, [{at} + {lda}*1]",
                    "tileloadd tmm5, [{al} + {lda}*1]",
                    "tileloadd tmm6, [{b} + {ldb}*1]",
                    "tileloadd tmm7, [{b} + {ldb}*1 + 64]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    at = in(reg) a_top, al = in(reg) a_low, b = in(reg) b_step, lda = in(reg) lda, ldb = in(reg) ldb,
                    options(nostack, readonly)
                );
            }
            asm!(
                "tilestored [{c} + {s}*1], tmm0",
                "tilestored [{c} + {s}*1 + 64], tmm1",
                "tilestored [{cl} + {s}*1], tmm2",
                "tilestored [{cl} + {s}*1 + 64], tmm3",
                c = in(reg) c, cl = in(reg) c_low, s = in(reg) ldc_bytes, options(nostack)
            );
        }
    }

    /// c (32 x 32, row stride ldc floats) = a · b (+ c), eight rows at a
    /// time: 16 accumulators of 16 floats, one pair of depths per step.
    ///
    /// # Safety
    /// The CPU has AVX512-BF16; a, b and c as for [`micro_amx`].
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn micro_avx512(a: *const u16, b: *const u16, kp: usize, c: *mut f32, ldc: usize, accumulate: bool) {
        const ROWS: usize = 8;
        for group in 0..BLOCK / ROWS {
            let mut acc = [[_mm512_setzero_ps(); 2]; ROWS];
            // SAFETY (below): as the caller promised, every address is inside
            // the packed operands or c's block.
            if accumulate {
                for (r, acc) in acc.iter_mut().enumerate() {
                    let row = unsafe { c.add((group * ROWS + r) * ldc) };
                    *acc = unsafe { [_mm512_loadu_ps(row), _mm512_loadu_ps(row.add(16))] };
                }
            }
            let a_rows = unsafe { a.add(group * ROWS * kp) };
            for q in 0..kp / 2 {
                let bq = unsafe { b.add(q * 2 * BLOCK) };
                let (b0, b1) = unsafe { (_mm512_loadu_si512(bq.cast()), _mm512_loadu_si512(bq.add(BLOCK).cast())) };
                let (b0, b1) = unsafe { (std::mem::transmute::<__m512i, __m512bh>(b0), std::mem::transmute::<__m512i, __m512bh>(b1)) };
                for (r, acc) in acc.iter_mut().enumerate() {
                    let pair = unsafe { a_rows.add(r * kp + 2 * q).cast::<i32>().read_unaligned() };
                    let av = unsafe { std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(pair)) };
                    acc[0] = _mm512_dpbf16_ps(acc[0], av, b0);
                    acc[1] = _mm512_dpbf16_ps(acc[1], av, b1);
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                let row = unsafe { c.add((group * ROWS + r) * ldc) };
                unsafe {
                    _mm512_storeu_ps(row, acc[0]);
                    _mm512_storeu_ps(row.add(16), acc[1]);
                }
            }
        }
    }

    /// A stored by columns (element (r, j) at `src + r + j * cs`) into rows
    /// of depth kp, in tiles of 32 rows x 32 depths: each depth's 32 rows
    /// read and rounded at once, the tile then turned into rows.
    ///
    /// # Safety
    /// The CPU has AVX512-BF16; src holds `rows` rows at depths below k;
    /// `out` holds those rows of kp.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn pack_a_columns(out: &mut [u16], src: *const f32, cs: usize, rows: usize, k: usize, kp: usize) {
        let mut tile = [[0u16; BLOCK]; BLOCK];
        for r0 in (0..rows).step_by(BLOCK) {
            let h = (rows - r0).min(BLOCK);
            let mask = if h >= BLOCK { u32::MAX } else { (1u32 << h) - 1 };
            let (low, high) = (mask as u16, (mask >> 16) as u16);
            for j0 in (0..k).step_by(BLOCK) {
                let w = (k - j0).min(BLOCK);
                for (dj, t) in tile[..w].iter_mut().enumerate() {
                    // SAFETY: depth j0 + dj < k, rows r0 .. r0 + h; the masks read no further.
                    unsafe {
                        let col = src.add(r0 + (j0 + dj) * cs);
                        let (lo, hi) = (_mm512_maskz_loadu_ps(low, col), _mm512_maskz_loadu_ps(high, col.add(16)));
                        _mm512_storeu_si512(t.as_mut_ptr().cast(), std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo)));
                    }
                }
                for i in 0..h {
                    let row = &mut out[(r0 + i) * kp + j0..(r0 + i) * kp + j0 + w];
                    for (dj, o) in row.iter_mut().enumerate() {
                        *o = tile[dj][i];
                    }
                }
            }
        }
    }

    /// One panel of B from rows of stride `rs` floats starting at `src`:
    /// for each pair of depths, the two rows' `width` columns rounded and
    /// interleaved (zeros past `width` and past k).
    ///
    /// # Safety
    /// The CPU has AVX512-BF16; `src` holds k rows of `width` columns;
    /// `panel` is 32 columns of depth kp.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn pack_b_panel(panel: &mut [u16], src: *const f32, rs: usize, k: usize, width: usize) {
        let mask = if width >= BLOCK { u32::MAX } else { (1u32 << width) - 1 };
        let (low, high) = (mask as u16, (mask >> 16) as u16);
        // Output u16 j of the first half takes row 2q's column j / 2 (j even)
        // or row 2q + 1's (j odd, index bit 5 picking the second operand).
        let index = |half: i16| -> __m512i {
            let v: [i16; 32] = std::array::from_fn(|j| 16 * half + j as i16 / 2 + 32 * (j as i16 % 2));
            // SAFETY: 32 i16 are 512 bits.
            unsafe { std::mem::transmute::<[i16; 32], __m512i>(v) }
        };
        let (first, second) = (index(0), index(1));
        let row = |d: usize| -> __m512i {
            if d >= k {
                return _mm512_setzero_si512();
            }
            // SAFETY: row d < k has `width` columns; the masks read no further.
            unsafe {
                let r = src.add(d * rs);
                let (lo, hi) = (_mm512_maskz_loadu_ps(low, r), _mm512_maskz_loadu_ps(high, r.add(16)));
                std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo))
            }
        };
        for (q, out) in panel.chunks_exact_mut(2 * BLOCK).enumerate() {
            let (even, odd) = (row(2 * q), row(2 * q + 1));
            // SAFETY: `out` holds 64 u16.
            unsafe {
                _mm512_storeu_si512(out.as_mut_ptr().cast(), _mm512_permutex2var_epi16(even, first, odd));
                _mm512_storeu_si512(out.as_mut_ptr().add(BLOCK).cast(), _mm512_permutex2var_epi16(even, second, odd));
            }
        }
    }

    /// `src` rounded to bf16 (nearest even) into `out`, 32 at a time.
    ///
    /// # Safety
    /// The CPU has AVX512-BF16.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn convert(src: &[f32], out: &mut [u16]) {
        let n = src.len().min(out.len());
        let whole = n / 32 * 32;
        for i in (0..whole).step_by(32) {
            // SAFETY: i + 32 <= n for both slices.
            unsafe {
                let (lo, hi) = (_mm512_loadu_ps(src.as_ptr().add(i)), _mm512_loadu_ps(src.as_ptr().add(i + 16)));
                let v = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo));
                _mm512_storeu_si512(out.as_mut_ptr().add(i).cast(), v);
            }
        }
        for i in whole..n {
            out[i] = super::to_bf16(src[i]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-1, 1), some large and some tiny in turn.
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..n)
            .map(|i| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let u = (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
                if i % 7 == 0 {
                    u * 30.0
                } else {
                    u
                }
            })
            .collect()
    }

    #[test]
    fn rounding_is_to_nearest_even() {
        assert_eq!(to_bf16(1.0), 0x3f80);
        // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: to the even one, 1.
        assert_eq!(round(1.0 + 1.0 / 256.0), 1.0);
        // 1 + 3 * 2^-8 lies halfway between 1 + 2^-7 and 1 + 2^-6: up, to the even one.
        assert_eq!(round(1.0 + 3.0 / 256.0), 1.0 + 1.0 / 64.0);
        assert_eq!(round(-2.5), -2.5);
        assert!(round(f32::NAN).is_nan());
        assert_eq!(round(f32::INFINITY), f32::INFINITY);
    }

    /// Every tier of this CPU against the products, in f64, of the operands
    /// rounded to bf16: shapes off the 32 grid, transposed operands, and
    /// accumulation into dst.
    #[test]
    fn every_tier_matches_the_rounded_product() {
        for tier in Tier::available() {
            // Past CHUNK rows or columns too, where the larger operand is packed in parts, and
            // past DEPTH, where the depth is.
            for &(m, n, k) in
                &[(1, 1, 1), (5, 3, 7), (32, 32, 32), (33, 70, 65), (100, 40, 300), (64, 96, 16), (300, 33, 40), (33, 290, 40), (3, 5, 4200)]
            {
                for (a_t, b_t, accumulate) in [(false, false, false), (true, false, true), (false, true, false), (true, true, true)] {
                    let (a, b) = (values(m * k, 1), values(k * n, 2));
                    // Row-major, or stored transposed and read through strides.
                    let lhs = if a_t { Operand { ptr: a.as_ptr(), rs: 1, cs: m } } else { Operand { ptr: a.as_ptr(), rs: k, cs: 1 } };
                    let rhs = if b_t { Operand { ptr: b.as_ptr(), rs: 1, cs: k } } else { Operand { ptr: b.as_ptr(), rs: n, cs: 1 } };
                    let at = |i: usize, j: usize| round(a[if a_t { i + j * m } else { i * k + j }]) as f64;
                    let bt = |i: usize, j: usize| round(b[if b_t { i + j * k } else { i * n + j }]) as f64;
                    // dst has a wider row than n, to check the stride.
                    let dst_rs = n + 3;
                    let before = values(m * dst_rs, 3);
                    let mut dst = before.clone();
                    // SAFETY: the operands and dst hold what the shapes and strides reach.
                    unsafe { run_tier(tier, m, n, k, dst.as_mut_ptr(), dst_rs, lhs, rhs, accumulate) };
                    for i in 0..m {
                        for j in 0..dst_rs {
                            let got = dst[i * dst_rs + j] as f64;
                            if j >= n {
                                assert_eq!(got, before[i * dst_rs + j] as f64, "{} wrote past the row", tier.name());
                                continue;
                            }
                            let (sum, scale) = (0..k).fold((0.0, 0.0), |(s, a_), d| (s + at(i, d) * bt(d, j), a_ + (at(i, d) * bt(d, j)).abs()));
                            let want = sum + if accumulate { before[i * dst_rs + j] as f64 } else { 0.0 };
                            // f32 sums of k exact products: k ulps of the largest partial sum at most.
                            let tol = (k as f64 + 2.0) * f32::EPSILON as f64 * (scale + want.abs());
                            assert!((got - want).abs() <= tol, "{} {m}x{n}x{k} at ({i}, {j}): {got} against {want}", tier.name());
                        }
                    }
                }
            }
        }
    }

    /// [`gemm`] with a given tier instead of the process's.
    #[allow(clippy::too_many_arguments)]
    unsafe fn run_tier(
        tier: Tier,
        m: usize,
        n: usize,
        k: usize,
        dst: *mut f32,
        dst_rs: usize,
        lhs: Operand<f32>,
        rhs: Operand<f32>,
        accumulate: bool,
    ) {
        unsafe {
            if tier == Tier::Emulated {
                emulated(m, n, k, dst, dst_rs, lhs, rhs, accumulate)
            } else {
                block(tier, 0..m, 0..n, k, dst, dst_rs, lhs, rhs, accumulate)
            }
        }
    }

    #[test]
    fn an_unknown_tier_is_refused_with_the_ones_this_cpu_has() {
        let err = Tier::choose(Some("avx9000")).unwrap_err();
        assert!(err.contains("WRPO_BF16_ISA=avx9000") && err.contains("emulated"), "{err}");
    }
}
