//! Quantized weights (ggml Q8_0 or Q4_1 blocks) times f32 activations, for
//! inference.
//!
//! candle's quantized matmul streams the whole weight matrix once per batch
//! row, and its fast repacked kernels need the inner size to be a multiple
//! of 256 (SmolLM2's 576 is not). Here each weight block is read once for
//! every row of the batch, so decoding 8 or 16 sequences costs little more
//! weight traffic than decoding one. Activations are quantized to 8 bits per
//! block of 32, as ggml does, and each block's dot product is exact in i32.
//!
//! Weights are repacked at load so that one 256-bit vector holds 4 bytes of
//! each of 8 output columns: one dpbusd (AVX-VNNI or AVX512-VNNI; AVX2
//! emulates it) against 4 activation bytes broadcast gives 8 columns' partial
//! dots at once, with no horizontal sums, and each weight vector serves up to
//! 4 activation rows from a register. The AVX-512 tiers put two such tiles in
//! one 512-bit vector (16 columns per instruction).

use candle_core::{quantized::GgmlDType, quantized::QTensor, Tensor};

use crate::pool::{Pool, SharedMut};

const BLOCK: usize = 32;
/// Output columns interleaved in one vector.
const COLS: usize = 8;
/// Weight bytes of one block of one column tile: Q8_0, Q4_1.
const TILE_Q8: usize = COLS * BLOCK;
const TILE_Q4: usize = COLS * BLOCK / 2;

pub struct QMatrix {
    /// Output features (weight rows).
    n: usize,
    /// Input features, and their blocks of 32.
    k: usize,
    kb: usize,
    /// Tiles of COLS output columns (the last padded with zero weights).
    tiles: usize,
    blocks: Blocks,
}

/// Per (tile, block): the weight bytes, then per column its scales.
enum Blocks {
    /// w = d * q, q in -127..=127. Byte s*32 + l*4 + e of a tile's block is
    /// q[4s + e] of its column l. `q_sum` is 128 * Σq per block and column,
    /// which undoes the +128 that makes activations unsigned for VNNI.
    Q8_0 { q: Vec<i8>, d: Vec<f32>, q_sum: Vec<i32> },
    /// w = d * q + m, q in 0..=15. Byte t*32 + l*4 + e of a tile's block
    /// holds q[4t + e] of column l in its low nibble and q[16 + 4t + e] in
    /// its high one: ggml's byte 4t + e of that column's block.
    Q4_1 { q: Vec<u8>, d: Vec<f32>, m: Vec<f32> },
}

impl QMatrix {
    /// The weight of a Q8_0 or Q4_1 tensor (out, in); None for other types,
    /// and on CPUs without AVX2 (ARM among them), where only the scalar
    /// reference would run and candle's own quantized matmul, vectorised for
    /// NEON, is faster.
    pub fn from_qtensor(t: &QTensor) -> candle_core::Result<Option<Self>> {
        if matches!(Isa::detect(), Isa::Scalar) {
            return Ok(None);
        }
        Self::repack(t)
    }

    /// [`QMatrix::from_qtensor`] whatever the CPU: the tests compare kernels with it.
    fn repack(t: &QTensor) -> candle_core::Result<Option<Self>> {
        let (n, k) = t.shape().dims2()?;
        let (kb, data) = (k / BLOCK, t.data()?);
        let tiles = n.div_ceil(COLS);
        let f16 = |b: &[u8]| half::f16::from_le_bytes([b[0], b[1]]).to_f32();
        let (block_bytes, tile_bytes) = match t.dtype() {
            GgmlDType::Q8_0 => (2 + BLOCK, TILE_Q8),
            GgmlDType::Q4_1 => (4 + BLOCK / 2, TILE_Q4),
            _ => return Ok(None),
        };
        let mut q = vec![0u8; tiles * kb * tile_bytes];
        let (mut d, mut second) = (vec![0f32; tiles * kb * COLS], vec![0f32; tiles * kb * COLS]);
        let mut q_sum = vec![0i32; tiles * kb * COLS];
        for j in 0..n {
            let (c, l) = (j / COLS, j % COLS);
            for b in 0..kb {
                let src = &data[(j * kb + b) * block_bytes..][..block_bytes];
                let (tb, at) = (c * kb + b, (c * kb + b) * COLS + l);
                d[at] = f16(src);
                let quants = if t.dtype() == GgmlDType::Q8_0 {
                    q_sum[at] = 128 * src[2..].iter().map(|&v| v as i8 as i32).sum::<i32>();
                    &src[2..]
                } else {
                    second[at] = f16(&src[2..]);
                    &src[4..]
                };
                for (s, four) in quants.chunks_exact(4).enumerate() {
                    q[tb * tile_bytes + s * COLS * 4 + l * 4..][..4].copy_from_slice(four);
                }
            }
        }
        let blocks = match t.dtype() {
            GgmlDType::Q8_0 => Blocks::Q8_0 { q: q.into_iter().map(|v| v as i8).collect(), d, q_sum },
            _ => Blocks::Q4_1 { q, d, m: second },
        };
        Ok(Some(QMatrix { n, k, kb, tiles, blocks }))
    }

    /// One matrix holding the rows of `parts` in order (q, k and v, or gate
    /// and up), so that one pass over the activations serves them all; None
    /// if their block types or input sizes differ, or a part other than the
    /// last ends in a partial tile.
    pub fn concat_rows(parts: &[&QMatrix]) -> Option<QMatrix> {
        let (first, last) = (parts.first()?, parts.len() - 1);
        let mut blocks = match &first.blocks {
            Blocks::Q8_0 { .. } => Blocks::Q8_0 { q: Vec::new(), d: Vec::new(), q_sum: Vec::new() },
            Blocks::Q4_1 { .. } => Blocks::Q4_1 { q: Vec::new(), d: Vec::new(), m: Vec::new() },
        };
        for (i, p) in parts.iter().enumerate() {
            if p.k != first.k || (i < last && p.n % COLS != 0) {
                return None;
            }
            match (&mut blocks, &p.blocks) {
                (Blocks::Q8_0 { q, d, q_sum }, Blocks::Q8_0 { q: pq, d: pd, q_sum: ps }) => {
                    q.extend_from_slice(pq);
                    d.extend_from_slice(pd);
                    q_sum.extend_from_slice(ps);
                }
                (Blocks::Q4_1 { q, d, m }, Blocks::Q4_1 { q: pq, d: pd, m: pm }) => {
                    q.extend_from_slice(pq);
                    d.extend_from_slice(pd);
                    m.extend_from_slice(pm);
                }
                _ => return None,
            }
        }
        let (n, tiles) = (parts.iter().map(|p| p.n).sum(), parts.iter().map(|p| p.tiles).sum());
        Some(QMatrix { n, k: first.k, kb: first.kb, tiles, blocks })
    }

    /// (out, in)
    pub fn dims(&self) -> [usize; 2] {
        [self.n, self.k]
    }

    /// x (m, k) f32 → x · Wᵀ (m, n) f32.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (m, k) = x.dims2()?;
        if k != self.k {
            candle_core::bail!("quantized matmul: input has {k} features, the weight {}", self.k);
        }
        let acts = Activations::quantize(&x.flatten_all()?.to_vec1::<f32>()?, m, self.kb);
        // Rows of whole tiles; cut back to n below if the last tile is partial.
        let width = self.tiles * COLS;
        let mut out = vec![0f32; m * width];
        let out_ptr = SharedMut(out.as_mut_ptr());
        let isa = Isa::detect();
        // Column tiles in parallel chunks, every batch row at once; enough
        // chunks for the threads to balance.
        let pool = Pool::global();
        let per_chunk = (self.tiles / (4 * pool.threads())).clamp(1, 8);
        pool.run(self.tiles.div_ceil(per_chunk), &|c| {
            let range = c * per_chunk..((c + 1) * per_chunk).min(self.tiles);
            // SAFETY: each chunk writes only its own tiles' columns of `out`,
            // which outlives the pool's job; the ISA was checked by `detect`.
            unsafe { isa.tiles(self, &acts, range, &out_ptr) };
        });
        if width != self.n {
            out = out.chunks_exact(width).flat_map(|row| &row[..self.n]).copied().collect();
        }
        Tensor::from_vec(out, (m, self.n), x.device())
    }
}

/// Activation rows quantized per block of 32: x ≈ s * q, s = max |x| / 127.
struct Activations {
    m: usize,
    k: usize,
    kb: usize,
    q: Vec<i8>,
    /// q + 128, for VNNI's unsigned-by-signed dot.
    u: Vec<u8>,
    /// Per row and block.
    s: Vec<f32>,
    /// Per row and block, s * Σq: the offset term of Q4_1's w = d * q + m.
    s_sum: Vec<f32>,
}

impl Activations {
    fn quantize(xs: &[f32], m: usize, kb: usize) -> Self {
        let k = kb * BLOCK;
        let (mut q, mut s, mut s_sum) = (vec![0i8; m * k], vec![0f32; m * kb], vec![0f32; m * kb]);
        for (i, block) in xs.chunks_exact(BLOCK).enumerate() {
            let amax = block.iter().fold(0f32, |a, v| a.max(v.abs()));
            // As ggml does: quantize with the f32 scale, keep it as f16.
            let d = amax / 127.0;
            let inv = if d == 0.0 { 0.0 } else { 1.0 / d };
            let out = &mut q[i * BLOCK..(i + 1) * BLOCK];
            for (o, v) in out.iter_mut().zip(block) {
                // Half away from zero, as ggml's reference (and candle) round.
                *o = (v * inv).round() as i8;
            }
            s[i] = half::f16::from_f32(d).to_f32();
            s_sum[i] = s[i] * out.iter().map(|&v| v as i32).sum::<i32>() as f32;
        }
        let u = q.iter().map(|&v| (v as u8) ^ 0x80).collect();
        Activations { m, k, kb, q, u, s, s_sum }
    }
}

/// The int8 kernels' tier for this process (see [`Isa::choose`]), or why
/// `WRPO_ISA` cannot be honoured: checked at start, before any model loads.
pub fn kernel_tier() -> Result<&'static str, String> {
    Isa::from_env().map(Isa::name)
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Isa {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512Bw,
    #[cfg(target_arch = "x86_64")]
    AvxVnni,
    #[cfg(target_arch = "x86_64")]
    Avx512Vnni,
}

/// Names a tier as `WRPO_ISA` takes it.
const ISA_VARIABLE: &str = "WRPO_ISA";

impl Isa {
    fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => "avx2",
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Bw => "avx512bw",
            #[cfg(target_arch = "x86_64")]
            Isa::AvxVnni => "avxvnni",
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => "avx512vnni",
        }
    }

    /// The tiers this CPU can run, best last.
    fn available() -> Vec<Isa> {
        #[allow(unused_mut)]
        let mut tiers = vec![Isa::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") && has!("fma") {
                tiers.push(Isa::Avx2);
                let avx512bw = has!("avx512f") && has!("avx512bw");
                if avx512bw {
                    tiers.push(Isa::Avx512Bw);
                }
                if has!("avxvnni") {
                    tiers.push(Isa::AvxVnni);
                }
                if avx512bw && has!("avx512vnni") && has!("avx512vl") {
                    tiers.push(Isa::Avx512Vnni);
                }
            }
        }
        tiers
    }

    /// The best tier of this CPU, or the one `WRPO_ISA` names, so that a
    /// lower tier can be measured or tested on a CPU that has a better one.
    fn choose(requested: Option<&str>) -> Result<Isa, String> {
        crate::tiers::choose(&Isa::available(), Isa::name, requested, ISA_VARIABLE, "the int8 kernels at")
    }

    /// The tier `WRPO_ISA` asks for, or this CPU's best.
    fn from_env() -> Result<Isa, String> {
        Isa::choose(std::env::var(ISA_VARIABLE).ok().as_deref())
    }

    /// The tier every quantized matmul of this process runs
    /// (`setup_process` has refused a `WRPO_ISA` this CPU cannot run).
    fn detect() -> Isa {
        static CHOSEN: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *CHOSEN.get_or_init(|| Isa::from_env().unwrap_or_else(|e| panic!("{e}")))
    }

    /// Column tiles `tiles` for every activation row, into `out` (m rows of
    /// tiles * COLS).
    ///
    /// # Safety
    /// The CPU has the ISA (`detect` chose it); `out` holds that many floats.
    unsafe fn tiles(self, w: &QMatrix, acts: &Activations, tiles: std::ops::Range<usize>, out: &SharedMut<f32>) {
        match self {
            Isa::Scalar => scalar::tiles(w, acts, tiles, out),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => x86::tiles_avx2(w, acts, tiles, out),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Bw => x86::tiles_avx512bw(w, acts, tiles, out),
            #[cfg(target_arch = "x86_64")]
            Isa::AvxVnni => x86::tiles_avxvnni(w, acts, tiles, out),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => x86::tiles_avx512vnni(w, acts, tiles, out),
        }
    }
}

mod scalar {
    use super::*;

    /// The reference the SIMD kernels must agree with, read straight from
    /// the packed layout.
    pub(super) fn tiles(w: &QMatrix, acts: &Activations, tiles: std::ops::Range<usize>, out: &SharedMut<f32>) {
        for c in tiles {
            for l in 0..COLS {
                for r in 0..acts.m {
                    let mut sum = 0f32;
                    for b in 0..w.kb {
                        let (tb, xb) = (c * w.kb + b, r * acts.kb + b);
                        let x = &acts.q[r * acts.k + b * BLOCK..][..BLOCK];
                        // Value i of the block sits in byte group i / 4 (mod 4 for Q4_1) at l * 4 + i % 4.
                        let byte = |tile: usize, i: usize| tile * tb + (i / 4) * COLS * 4 + l * 4 + i % 4;
                        sum += match &w.blocks {
                            Blocks::Q8_0 { q, d, .. } => {
                                let dot: i32 = (0..BLOCK).map(|i| q[byte(TILE_Q8, i)] as i32 * x[i] as i32).sum();
                                dot as f32 * d[tb * COLS + l] * acts.s[xb]
                            }
                            Blocks::Q4_1 { q, d, m } => {
                                let value = |i: usize| if i < 16 { q[byte(TILE_Q4, i)] & 15 } else { q[byte(TILE_Q4, i - 16)] >> 4 };
                                let dot: i32 = (0..BLOCK).map(|i| value(i) as i32 * x[i] as i32).sum();
                                dot as f32 * d[tb * COLS + l] * acts.s[xb] + m[tb * COLS + l] * acts.s_sum[xb]
                            }
                        };
                    }
                    // SAFETY: (r, c * COLS + l) is inside the output, and only this chunk writes tile c.
                    unsafe { *out.add(r * w.tiles * COLS + c * COLS + l) = sum };
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::*;

    /// The 8-bit dot product that differs between instruction sets: acc plus,
    /// per i32 lane, the sum of 4 adjacent products of unsigned `u` by signed `s`.
    trait Dot {
        /// Can u * s pairs exceed i16 (VNNI sums in i32 and cannot saturate)?
        const WIDE: bool;
        unsafe fn dot(acc: __m256i, u: __m256i, s: __m256i) -> __m256i;
    }

    struct Avx2;
    impl Dot for Avx2 {
        const WIDE: bool = false;
        #[inline(always)]
        unsafe fn dot(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
            _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)))
        }
    }

    struct AvxVnni;
    impl Dot for AvxVnni {
        const WIDE: bool = true;
        #[inline(always)]
        unsafe fn dot(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
            _mm256_dpbusd_avx_epi32(acc, u, s)
        }
    }

    struct Avx512Vnni;
    impl Dot for Avx512Vnni {
        const WIDE: bool = true;
        #[inline(always)]
        unsafe fn dot(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
            _mm256_dpbusd_epi32(acc, u, s)
        }
    }

    /// The same dot on 512-bit vectors, which hold two column tiles (16
    /// columns); `Half` is its 256-bit form, for a last tile left alone.
    trait Dot512 {
        const WIDE: bool;
        type Half: Dot;
        unsafe fn dot(acc: __m512i, u: __m512i, s: __m512i) -> __m512i;
    }

    impl Dot512 for Avx2 {
        const WIDE: bool = false;
        type Half = Avx2;
        #[inline(always)]
        unsafe fn dot(acc: __m512i, u: __m512i, s: __m512i) -> __m512i {
            _mm512_add_epi32(acc, _mm512_madd_epi16(_mm512_maddubs_epi16(u, s), _mm512_set1_epi16(1)))
        }
    }

    impl Dot512 for Avx512Vnni {
        const WIDE: bool = true;
        type Half = Avx512Vnni;
        #[inline(always)]
        unsafe fn dot(acc: __m512i, u: __m512i, s: __m512i) -> __m512i {
            _mm512_dpbusd_epi32(acc, u, s)
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tiles_avx2(w: &QMatrix, acts: &Activations, tiles: std::ops::Range<usize>, out: &SharedMut<f32>) {
        run::<Avx2>(w, acts, tiles, out)
    }

    #[target_feature(enable = "avx2,fma,avxvnni")]
    pub(super) unsafe fn tiles_avxvnni(w: &QMatrix, acts: &Activations, tiles: std::ops::Range<usize>, out: &SharedMut<f32>) {
        run::<AvxVnni>(w, acts, tiles, out)
    }

    /// AVX-512 without VNNI (Skylake-SP): `vpmaddubsw` + `vpmaddwd` on 64 bytes.
    #[target_feature(enable = "avx2,fma,avx512f,avx512bw")]
    pub(super) unsafe fn tiles_avx512bw(w: &QMatrix, acts: &Activations, tiles: std::ops::Range<usize>, out: &SharedMut<f32>) {
        run512::<Avx2>(w, acts, tiles, out)
    }

    #[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vnni,avx512vl")]
    pub(super) unsafe fn tiles_avx512vnni(w: &QMatrix, acts: &Activations, tiles: std::ops::Range<usize>, out: &SharedMut<f32>) {
        run512::<Avx512Vnni>(w, acts, tiles, out)
    }

    /// Rows in groups of up to 4 sharing each weight vector. Inlined into
    /// each `#[target_feature]` entry point above, so that the intrinsics
    /// compile for that instruction set (no closure may hold a kernel: a
    /// closure would not have the entry point's features, and every
    /// intrinsic in it would become a call).
    #[inline(always)]
    unsafe fn run<D: Dot>(w: &QMatrix, acts: &Activations, tiles: std::ops::Range<usize>, out: &SharedMut<f32>) {
        for c in tiles {
            let mut r = 0;
            while r < acts.m {
                r += one_tile::<D>(w, acts, c, r, out);
            }
        }
    }

    /// Tile c for the rows from r0 on, as many as one pass takes; returns
    /// how many. Fewer rows get more independent sums per row, so that the
    /// dot products never wait on one another.
    #[inline(always)]
    unsafe fn one_tile<D: Dot>(w: &QMatrix, acts: &Activations, c: usize, r0: usize, out: &SharedMut<f32>) -> usize {
        match acts.m - r0 {
            1 => tile::<D, 1, 4>(w, acts, c, r0, out),
            2 => tile::<D, 2, 2>(w, acts, c, r0, out),
            3 => tile::<D, 3, 1>(w, acts, c, r0, out),
            _ => tile::<D, 4, 1>(w, acts, c, r0, out),
        }
    }

    /// Tiles in pairs, one 512-bit vector each; an odd last one on 256 bits.
    #[inline(always)]
    unsafe fn run512<D: Dot512>(w: &QMatrix, acts: &Activations, tiles: std::ops::Range<usize>, out: &SharedMut<f32>) {
        let mut c = tiles.start;
        while c + 1 < tiles.end {
            let mut r = 0;
            while r < acts.m {
                r += match acts.m - r {
                    1 => pair::<D, 1, 4>(w, acts, c, r, out),
                    2 => pair::<D, 2, 2>(w, acts, c, r, out),
                    3 => pair::<D, 3, 1>(w, acts, c, r, out),
                    _ => pair::<D, 4, 1>(w, acts, c, r, out),
                };
            }
            c += 2;
        }
        if c < tiles.end {
            let mut r = 0;
            while r < acts.m {
                r += one_tile::<D::Half>(w, acts, c, r, out);
            }
        }
    }

    /// 32 bytes at `low` and 32 at `high` as one vector.
    #[inline(always)]
    unsafe fn join(low: *const u8, high: *const u8) -> __m512i {
        _mm512_inserti64x4::<1>(_mm512_castsi256_si512(_mm256_loadu_si256(low as *const __m256i)), _mm256_loadu_si256(high as *const __m256i))
    }

    /// [`tile`] for tiles c and c + 1 at once: tile c's 8 columns in the low
    /// half of every vector, tile c + 1's in the high half, which are also
    /// the 16 adjacent output columns. Returns R.
    #[inline(always)]
    unsafe fn pair<D: Dot512, const R: usize, const CH: usize>(w: &QMatrix, acts: &Activations, c: usize, r0: usize, out: &SharedMut<f32>) -> usize {
        let mut acc = [_mm512_setzero_ps(); R];
        for b in 0..w.kb {
            let (t0, t1) = (c * w.kb + b, (c + 1) * w.kb + b);
            let mut sums = [[_mm512_setzero_si512(); CH]; R];
            let x4 = |bytes: *const u8, r: usize, i: usize| {
                _mm512_set1_epi32((bytes.add((r0 + r) * acts.k + b * BLOCK + i) as *const i32).read_unaligned())
            };
            let x_q = acts.q.as_ptr() as *const u8;
            let scales = |r: usize| acts.s[(r0 + r) * acts.kb + b];
            let per_column = |v: &[f32]| _mm512_castsi512_ps(join(v.as_ptr().add(t0 * COLS) as *const u8, v.as_ptr().add(t1 * COLS) as *const u8));
            match &w.blocks {
                Blocks::Q8_0 { q, d, q_sum } => {
                    let (w0, w1) = (q.as_ptr().add(t0 * TILE_Q8) as *const u8, q.as_ptr().add(t1 * TILE_Q8) as *const u8);
                    for step in 0..BLOCK / 4 {
                        let wv = join(w0.add(step * 32), w1.add(step * 32));
                        let (w_abs, negative) = (_mm512_abs_epi8(wv), _mm512_movepi8_mask(wv));
                        for (r, sum) in sums.iter_mut().enumerate() {
                            let s = &mut sum[step % CH];
                            *s = if D::WIDE {
                                D::dot(*s, x4(acts.u.as_ptr(), r, step * 4), wv)
                            } else {
                                // |w| * (x with w's sign), as the 256-bit kernel (AVX-512 has no sign_epi8).
                                let x = x4(x_q, r, step * 4);
                                D::dot(*s, w_abs, _mm512_mask_sub_epi8(x, negative, _mm512_setzero_si512(), x))
                            };
                        }
                    }
                    let dv = per_column(d);
                    let offset = join(q_sum.as_ptr().add(t0 * COLS) as *const u8, q_sum.as_ptr().add(t1 * COLS) as *const u8);
                    for (r, a) in acc.iter_mut().enumerate() {
                        let mut dots = sums[r].iter().fold(_mm512_setzero_si512(), |t, &s| _mm512_add_epi32(t, s));
                        if D::WIDE {
                            dots = _mm512_sub_epi32(dots, offset);
                        }
                        *a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dots), _mm512_mul_ps(dv, _mm512_set1_ps(scales(r))), *a);
                    }
                }
                Blocks::Q4_1 { q, d, m } => {
                    let (w0, w1) = (q.as_ptr().add(t0 * TILE_Q4), q.as_ptr().add(t1 * TILE_Q4));
                    let low = _mm512_set1_epi8(15);
                    for step in 0..BLOCK / 8 {
                        let packed = join(w0.add(step * 32), w1.add(step * 32));
                        let (lo, hi) = (_mm512_and_si512(packed, low), _mm512_and_si512(_mm512_srli_epi16::<4>(packed), low));
                        for (r, sum) in sums.iter_mut().enumerate() {
                            sum[(2 * step) % CH] = D::dot(sum[(2 * step) % CH], lo, x4(x_q, r, step * 4));
                            sum[(2 * step + 1) % CH] = D::dot(sum[(2 * step + 1) % CH], hi, x4(x_q, r, 16 + step * 4));
                        }
                    }
                    let (dv, mv) = (per_column(d), per_column(m));
                    for (r, a) in acc.iter_mut().enumerate() {
                        let dots = sums[r].iter().fold(_mm512_setzero_si512(), |t, &s| _mm512_add_epi32(t, s));
                        *a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dots), _mm512_mul_ps(dv, _mm512_set1_ps(scales(r))), *a);
                        *a = _mm512_fmadd_ps(mv, _mm512_set1_ps(acts.s_sum[(r0 + r) * acts.kb + b]), *a);
                    }
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            _mm512_storeu_ps(out.add((r0 + r) * w.tiles * COLS + c * COLS), *a);
        }
        R
    }

    /// Tile c's 8 columns for rows r0..r0 + R, each row's integer sums split
    /// over CH accumulators. Returns R.
    #[inline(always)]
    unsafe fn tile<D: Dot, const R: usize, const CH: usize>(w: &QMatrix, acts: &Activations, c: usize, r0: usize, out: &SharedMut<f32>) -> usize {
        let mut acc = [_mm256_setzero_ps(); R];
        for b in 0..w.kb {
            let tb = c * w.kb + b;
            let mut sums = [[_mm256_setzero_si256(); CH]; R];
            // 4 activation bytes of row r at value i of this block, in every lane.
            let x4 = |bytes: *const u8, r: usize, i: usize| {
                _mm256_set1_epi32((bytes.add((r0 + r) * acts.k + b * BLOCK + i) as *const i32).read_unaligned())
            };
            let x_q = acts.q.as_ptr() as *const u8;
            let scales = |r: usize| acts.s[(r0 + r) * acts.kb + b];
            match &w.blocks {
                Blocks::Q8_0 { q, d, q_sum } => {
                    let w_q = q.as_ptr().add(tb * TILE_Q8) as *const u8;
                    for step in 0..BLOCK / 4 {
                        let wv = _mm256_loadu_si256(w_q.add(step * 32) as *const __m256i);
                        let w_abs = _mm256_sign_epi8(wv, wv);
                        for (r, sum) in sums.iter_mut().enumerate() {
                            let s = &mut sum[step % CH];
                            *s = if D::WIDE {
                                D::dot(*s, x4(acts.u.as_ptr(), r, step * 4), wv)
                            } else {
                                // |w| * (x with w's sign) keeps pairs within i16.
                                D::dot(*s, w_abs, _mm256_sign_epi8(x4(x_q, r, step * 4), wv))
                            };
                        }
                    }
                    let dv = _mm256_loadu_ps(d.as_ptr().add(tb * COLS));
                    let offset = _mm256_loadu_si256(q_sum.as_ptr().add(tb * COLS) as *const __m256i);
                    for (r, a) in acc.iter_mut().enumerate() {
                        let mut dots = sums[r].iter().fold(_mm256_setzero_si256(), |t, &s| _mm256_add_epi32(t, s));
                        if D::WIDE {
                            // (q_x + 128) · q_w = q_x · q_w + 128 Σq_w
                            dots = _mm256_sub_epi32(dots, offset);
                        }
                        *a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dots), _mm256_mul_ps(dv, _mm256_set1_ps(scales(r))), *a);
                    }
                }
                Blocks::Q4_1 { q, d, m } => {
                    let w_q = q.as_ptr().add(tb * TILE_Q4);
                    let low = _mm256_set1_epi8(15);
                    for step in 0..BLOCK / 8 {
                        let packed = _mm256_loadu_si256(w_q.add(step * 32) as *const __m256i);
                        let (lo, hi) = (_mm256_and_si256(packed, low), _mm256_and_si256(_mm256_srli_epi16(packed, 4), low));
                        for (r, sum) in sums.iter_mut().enumerate() {
                            sum[(2 * step) % CH] = D::dot(sum[(2 * step) % CH], lo, x4(x_q, r, step * 4));
                            sum[(2 * step + 1) % CH] = D::dot(sum[(2 * step + 1) % CH], hi, x4(x_q, r, 16 + step * 4));
                        }
                    }
                    let (dv, mv) = (_mm256_loadu_ps(d.as_ptr().add(tb * COLS)), _mm256_loadu_ps(m.as_ptr().add(tb * COLS)));
                    for (r, a) in acc.iter_mut().enumerate() {
                        let dots = sums[r].iter().fold(_mm256_setzero_si256(), |t, &s| _mm256_add_epi32(t, s));
                        *a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dots), _mm256_mul_ps(dv, _mm256_set1_ps(scales(r))), *a);
                        *a = _mm256_fmadd_ps(mv, _mm256_set1_ps(acts.s_sum[(r0 + r) * acts.kb + b]), *a);
                    }
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            _mm256_storeu_ps(out.add((r0 + r) * w.tiles * COLS + c * COLS), *a);
        }
        R
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{quantized::QMatMul, Device, Module};

    fn max_abs(t: &Tensor) -> f32 {
        t.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
    }

    /// Every instruction set this CPU has agrees with the scalar kernel, and
    /// all agree with candle's quantized matmul (which quantizes activations
    /// the same way) up to float summation order (candle's Q4_1 dot wants an
    /// even number of blocks, so every k here has one). The shapes cover 1 to 4
    /// rows per pass and a partial last tile of columns (33).
    #[test]
    fn kernels_match_the_scalar_reference_and_candle() {
        let dev = Device::Cpu;
        for dtype in [GgmlDType::Q8_0, GgmlDType::Q4_1] {
            for (m, k, n) in [(1, 576, 40), (5, 128, 33), (2, 64, 16), (3, 64, 8), (16, 256, 24)] {
                let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
                let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
                let q = QTensor::quantize(&w, dtype).unwrap();
                let ours = QMatrix::repack(&q).unwrap().unwrap();
                let exact = x.matmul(&w.t().unwrap()).unwrap();
                let scale = max_abs(&exact);
                let acts = Activations::quantize(&x.flatten_all().unwrap().to_vec1().unwrap(), m, ours.kb);
                let run = |isa: Isa| {
                    let width = ours.tiles * COLS;
                    let mut out = vec![0f32; m * width];
                    let ptr = SharedMut(out.as_mut_ptr());
                    // SAFETY: only ISAs this CPU has are run.
                    unsafe { isa.tiles(&ours, &acts, 0..ours.tiles, &ptr) };
                    Tensor::from_vec(out, (m, width), &dev).unwrap().narrow(1, 0, n).unwrap()
                };
                let reference = run(Isa::Scalar);
                for isa in Isa::available() {
                    let err = max_abs(&(run(isa) - &reference).unwrap());
                    assert!(err <= 1e-5 * scale, "{dtype:?} {} ({m}x{k}x{n}): {err} from the scalar kernel", isa.name());
                }
                // ggml's Q8_1 activations (candle's for Q4_1) store Σq times the
                // scale as f16, so its offset term is rounded where ours is not.
                let tolerance = if dtype == GgmlDType::Q4_1 { 5e-3 } else { 1e-5 };
                let theirs = QMatMul::from_qtensor(q).unwrap().forward(&x).unwrap();
                let err = max_abs(&(ours.forward(&x).unwrap() - &theirs).unwrap());
                assert!(err <= tolerance * scale, "{dtype:?} ({m}x{k}x{n}): {err} from candle (values up to {scale})");
                // And near the exact f32 product: 4- or 8-bit weights, 8-bit activations.
                let bound = if dtype == GgmlDType::Q4_1 { 0.3 } else { 0.05 };
                let err = max_abs(&(ours.forward(&x).unwrap() - &exact).unwrap());
                assert!(err < bound * scale, "{dtype:?} ({m}x{k}x{n}): {err} from f32 (values up to {scale})");
            }
        }
    }

    #[test]
    fn the_tier_is_the_best_unless_a_lower_one_is_named() {
        let tiers = Isa::available();
        assert_eq!(Isa::choose(None).unwrap(), *tiers.last().unwrap());
        for t in &tiers {
            assert_eq!(Isa::choose(Some(t.name())).unwrap(), *t);
        }
        let err = Isa::choose(Some("avx9000")).unwrap_err();
        assert!(err.contains("WRPO_ISA=avx9000") && err.contains("scalar"), "{err}");
    }

    #[test]
    fn concatenated_rows_give_the_concatenated_outputs() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (3, 96), &dev).unwrap();
        let part =
            |n| QMatrix::repack(&QTensor::quantize(&Tensor::randn(0f32, 1.0, (n, 96), &dev).unwrap(), GgmlDType::Q4_1).unwrap()).unwrap().unwrap();
        let (a, b) = (part(8), part(5));
        let both = QMatrix::concat_rows(&[&a, &b]).unwrap();
        let want = Tensor::cat(&[a.forward(&x).unwrap(), b.forward(&x).unwrap()], 1).unwrap();
        assert_eq!(max_abs(&(both.forward(&x).unwrap() - want).unwrap()), 0.0);
        let q8 = QMatrix::repack(&QTensor::quantize(&Tensor::randn(0f32, 1.0, (4, 96), &dev).unwrap(), GgmlDType::Q8_0).unwrap()).unwrap().unwrap();
        assert!(QMatrix::concat_rows(&[&a, &q8]).is_none(), "different block types");
    }

    #[test]
    fn other_block_types_are_left_to_candle() {
        let w = Tensor::randn(0f32, 1.0, (8, 256), &Device::Cpu).unwrap();
        assert!(QMatrix::repack(&QTensor::quantize(&w, GgmlDType::Q4K).unwrap()).unwrap().is_none());
    }
}
