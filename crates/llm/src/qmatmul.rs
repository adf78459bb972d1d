//! Quantized weights (ggml Q8_0 or Q4_1 blocks) times f32 activations, for
//! inference.
//!
//! candle's quantized matmul streams the whole weight matrix once per batch
//! row, and its fast repacked kernels need the inner size to be a multiple
//! of 256 (SmolLM2's 576 is not). Here each weight row is read once for all
//! rows of the batch, so decoding 8 or 16 sequences costs little more weight
//! traffic than decoding one. Activations are quantized to 8 bits per block
//! of 32, as ggml does, and each block's dot product is exact in i32
//! (AVX-VNNI, AVX512-VNNI or AVX2). The integer sums of 8 blocks are reduced
//! into one vector, so the float work (scales, accumulation) is one vector
//! operation per 8 blocks rather than per block.

use candle_core::{quantized::GgmlDType, quantized::QTensor, Tensor};

use crate::pool::{Pool, SharedMut};

const BLOCK: usize = 32;
/// Blocks whose integer sums are reduced and scaled together.
const GROUP: usize = 8;

pub struct QMatrix {
    /// Output features (weight rows).
    n: usize,
    /// Input features.
    k: usize,
    /// Blocks per row, and that rounded up to whole groups: the stride of
    /// the per-block arrays, whose padding holds zeros.
    kb: usize,
    kg: usize,
    blocks: Blocks,
}

enum Blocks {
    /// w = d * q, q in -127..=127; `q_sum` is 128 * Σq per block, which
    /// undoes the +128 that makes activations unsigned for VNNI.
    Q8_0 { q: Vec<i8>, d: Vec<f32>, q_sum: Vec<i32> },
    /// w = d * q + m, q in 0..=15, 16 bytes per block: low nibbles hold the
    /// block's first 16 values, high nibbles the last 16 (ggml's layout).
    Q4_1 { q: Vec<u8>, d: Vec<f32>, m: Vec<f32> },
}

impl QMatrix {
    /// The weight of a Q8_0 or Q4_1 tensor (out, in); None for other types.
    pub fn from_qtensor(t: &QTensor) -> candle_core::Result<Option<Self>> {
        let (n, k) = t.shape().dims2()?;
        let (kb, data) = (k / BLOCK, t.data()?);
        let kg = kb.div_ceil(GROUP) * GROUP;
        let f16 = |b: &[u8]| half::f16::from_le_bytes([b[0], b[1]]).to_f32();
        let blocks = match t.dtype() {
            GgmlDType::Q8_0 => {
                let (mut q, mut d, mut q_sum) = (Vec::with_capacity(n * k), vec![0f32; n * kg], vec![0i32; n * kg]);
                for (i, b) in data.chunks_exact(2 + BLOCK).take(n * kb).enumerate() {
                    let at = i / kb * kg + i % kb;
                    d[at] = f16(b);
                    q.extend(b[2..].iter().map(|&v| v as i8));
                    q_sum[at] = 128 * b[2..].iter().map(|&v| v as i8 as i32).sum::<i32>();
                }
                Blocks::Q8_0 { q, d, q_sum }
            }
            GgmlDType::Q4_1 => {
                let (mut q, mut d, mut m) = (Vec::with_capacity(n * k / 2), vec![0f32; n * kg], vec![0f32; n * kg]);
                for (i, b) in data.chunks_exact(4 + BLOCK / 2).take(n * kb).enumerate() {
                    let at = i / kb * kg + i % kb;
                    d[at] = f16(b);
                    m[at] = f16(&b[2..]);
                    q.extend_from_slice(&b[4..]);
                }
                Blocks::Q4_1 { q, d, m }
            }
            _ => return Ok(None),
        };
        Ok(Some(QMatrix { n, k, kb, kg, blocks }))
    }

    /// One matrix holding the rows of `parts` in order (q, k and v, or gate
    /// and up), so that one pass over the activations serves them all; None
    /// if their block types or input sizes differ.
    pub fn concat_rows(parts: &[&QMatrix]) -> Option<QMatrix> {
        let first = parts.first()?;
        let n = parts.iter().map(|p| p.n).sum();
        let mut blocks = match &first.blocks {
            Blocks::Q8_0 { .. } => Blocks::Q8_0 { q: Vec::new(), d: Vec::new(), q_sum: Vec::new() },
            Blocks::Q4_1 { .. } => Blocks::Q4_1 { q: Vec::new(), d: Vec::new(), m: Vec::new() },
        };
        for p in parts {
            if p.k != first.k {
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
        Some(QMatrix { n, k: first.k, kb: first.kb, kg: first.kg, blocks })
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
        let acts = Activations::quantize(&x.flatten_all()?.to_vec1::<f32>()?, m, self.kb, self.kg);
        let mut out = vec![0f32; m * self.n];
        let out_ptr = SharedMut(out.as_mut_ptr());
        let isa = Isa::detect();
        // Columns (output features) in parallel chunks, every batch row at
        // once; enough chunks for the threads to balance.
        let pool = Pool::global();
        let cols = (self.n / (4 * pool.threads())).clamp(8, 64);
        pool.run(self.n.div_ceil(cols), &|c| {
            let range = c * cols..((c + 1) * cols).min(self.n);
            // SAFETY: each chunk writes only its own columns of `out`, which
            // outlives the pool's job; the ISA was checked by `detect`.
            unsafe { isa.columns(self, &acts, range, &out_ptr) };
        });
        Tensor::from_vec(out, (m, self.n), x.device())
    }
}

/// Activation rows quantized per block of 32: x ≈ s * q, s = max |x| / 127.
struct Activations {
    m: usize,
    k: usize,
    kg: usize,
    q: Vec<i8>,
    /// q + 128, for VNNI's unsigned-by-signed dot.
    u: Vec<u8>,
    /// Per row, kg scales (zero in the padding).
    s: Vec<f32>,
    /// Per row and block, s * Σq: the offset term of Q4_1's w = d * q + m.
    s_sum: Vec<f32>,
}

impl Activations {
    fn quantize(xs: &[f32], m: usize, kb: usize, kg: usize) -> Self {
        let k = kb * BLOCK;
        let (mut q, mut s, mut s_sum) = (vec![0i8; m * k], vec![0f32; m * kg], vec![0f32; m * kg]);
        for (i, block) in xs.chunks_exact(BLOCK).enumerate() {
            let at = i / kb * kg + i % kb;
            let amax = block.iter().fold(0f32, |a, v| a.max(v.abs()));
            // As ggml does: quantize with the f32 scale, keep it as f16.
            let d = amax / 127.0;
            let inv = if d == 0.0 { 0.0 } else { 1.0 / d };
            let out = &mut q[i * BLOCK..(i + 1) * BLOCK];
            for (o, v) in out.iter_mut().zip(block) {
                // Round half to even without libm: |v * inv| <= 127 < 2^22.
                const MAGIC: f32 = 12_582_912.0;
                *o = ((v * inv + MAGIC) - MAGIC) as i8;
            }
            s[at] = half::f16::from_f32(d).to_f32();
            s_sum[at] = s[at] * out.iter().map(|&v| v as i32).sum::<i32>() as f32;
        }
        let u = q.iter().map(|&v| (v as u8) ^ 0x80).collect();
        Activations { m, k, kg, q, u, s, s_sum }
    }
}

#[derive(Clone, Copy)]
enum Isa {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    AvxVnni,
    #[cfg(target_arch = "x86_64")]
    Avx512Vnni,
}

impl Isa {
    fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") && has!("fma") {
                if has!("avxvnni") {
                    return Isa::AvxVnni;
                }
                if has!("avx512vnni") && has!("avx512vl") {
                    return Isa::Avx512Vnni;
                }
                return Isa::Avx2;
            }
        }
        Isa::Scalar
    }

    /// Output columns `cols` for every activation row.
    ///
    /// # Safety
    /// The CPU has the ISA (`detect` chose it); `out` holds acts.m * w.n floats.
    unsafe fn columns(self, w: &QMatrix, acts: &Activations, cols: std::ops::Range<usize>, out: &SharedMut<f32>) {
        match self {
            Isa::Scalar => scalar::columns(w, acts, cols, out),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => x86::columns_avx2(w, acts, cols, out),
            #[cfg(target_arch = "x86_64")]
            Isa::AvxVnni => x86::columns_avxvnni(w, acts, cols, out),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => x86::columns_avx512vnni(w, acts, cols, out),
        }
    }
}

mod scalar {
    use super::*;

    /// The reference the SIMD kernels must agree with.
    pub(super) fn columns(w: &QMatrix, acts: &Activations, cols: std::ops::Range<usize>, out: &SharedMut<f32>) {
        for j in cols {
            for r in 0..acts.m {
                let x_q = &acts.q[r * acts.k..(r + 1) * acts.k];
                let mut sum = 0f32;
                for b in 0..w.kb {
                    let (wb, xb) = (j * w.kg + b, r * acts.kg + b);
                    let x = &x_q[b * BLOCK..(b + 1) * BLOCK];
                    sum += match &w.blocks {
                        Blocks::Q8_0 { q, d, .. } => {
                            let wq = &q[(j * w.kb + b) * BLOCK..][..BLOCK];
                            let dot: i32 = wq.iter().zip(x).map(|(&a, &b)| a as i32 * b as i32).sum();
                            dot as f32 * d[wb] * acts.s[xb]
                        }
                        Blocks::Q4_1 { q, d, m } => {
                            let packed = &q[(j * w.kb + b) * BLOCK / 2..][..BLOCK / 2];
                            let lo = packed.iter().zip(&x[..16]).map(|(&p, &x)| (p & 15) as i32 * x as i32);
                            let hi = packed.iter().zip(&x[16..]).map(|(&p, &x)| (p >> 4) as i32 * x as i32);
                            let dot: i32 = lo.chain(hi).sum();
                            dot as f32 * d[wb] * acts.s[xb] + m[wb] * acts.s_sum[xb]
                        }
                    };
                }
                // SAFETY: (r, j) is inside the output, and only this chunk writes column j.
                unsafe { *out.add(r * w.n + j) = sum };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::*;

    /// The 8-bit dot product that differs between instruction sets: per i32
    /// lane, the sum of 4 adjacent products of unsigned `u` by signed `s`.
    trait Dot {
        /// Can u * s pairs exceed i16 (VNNI sums in i32 and cannot saturate)?
        const WIDE: bool;
        unsafe fn dot(u: __m256i, s: __m256i) -> __m256i;
    }

    struct Avx2;
    impl Dot for Avx2 {
        const WIDE: bool = false;
        #[inline(always)]
        unsafe fn dot(u: __m256i, s: __m256i) -> __m256i {
            _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))
        }
    }

    struct AvxVnni;
    impl Dot for AvxVnni {
        const WIDE: bool = true;
        #[inline(always)]
        unsafe fn dot(u: __m256i, s: __m256i) -> __m256i {
            _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u, s)
        }
    }

    struct Avx512Vnni;
    impl Dot for Avx512Vnni {
        const WIDE: bool = true;
        #[inline(always)]
        unsafe fn dot(u: __m256i, s: __m256i) -> __m256i {
            _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s)
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn columns_avx2(w: &QMatrix, acts: &Activations, cols: std::ops::Range<usize>, out: &SharedMut<f32>) {
        columns::<Avx2>(w, acts, cols, out)
    }

    #[target_feature(enable = "avx2,fma,avxvnni")]
    pub(super) unsafe fn columns_avxvnni(w: &QMatrix, acts: &Activations, cols: std::ops::Range<usize>, out: &SharedMut<f32>) {
        columns::<AvxVnni>(w, acts, cols, out)
    }

    #[target_feature(enable = "avx2,fma,avx512vnni,avx512vl")]
    pub(super) unsafe fn columns_avx512vnni(w: &QMatrix, acts: &Activations, cols: std::ops::Range<usize>, out: &SharedMut<f32>) {
        columns::<Avx512Vnni>(w, acts, cols, out)
    }

    /// Inlined into each `#[target_feature]` entry point above, so that the
    /// intrinsics compile for that instruction set.
    #[inline(always)]
    unsafe fn columns<D: Dot>(w: &QMatrix, acts: &Activations, cols: std::ops::Range<usize>, out: &SharedMut<f32>) {
        // A Q4_1 column unpacked to one byte per value, once for all rows.
        let mut unpacked = vec![0u8; if matches!(w.blocks, Blocks::Q4_1 { .. }) { w.k } else { 0 }];
        for j in cols {
            let w_bytes = match &w.blocks {
                Blocks::Q8_0 { q, .. } => q.as_ptr().add(j * w.k) as *const u8,
                Blocks::Q4_1 { q, .. } => {
                    unpack_nibbles(q.as_ptr().add(j * w.k / 2), &mut unpacked);
                    unpacked.as_ptr()
                }
            };
            for r in 0..acts.m {
                let (x_q, x_u) = (acts.q.as_ptr().add(r * acts.k) as *const u8, acts.u.as_ptr().add(r * acts.k));
                let (x_s, x_sum) = (acts.s.as_ptr().add(r * acts.kg), acts.s_sum.as_ptr().add(r * acts.kg));
                let mut acc = _mm256_setzero_ps();
                for g in (0..w.kb).step_by(GROUP) {
                    let (w_g, at) = (w_bytes.add(g * BLOCK), g * BLOCK);
                    let wg = j * w.kg + g;
                    // Whole groups unroll with a constant count; only the last may be partial.
                    let blocks = if g + GROUP <= w.kb { GROUP } else { w.kb - g };
                    let scale = |d: &[f32]| _mm256_mul_ps(_mm256_loadu_ps(d.as_ptr().add(wg)), _mm256_loadu_ps(x_s.add(g)));
                    match &w.blocks {
                        Blocks::Q8_0 { d, q_sum, .. } => {
                            let mut dots = group_sums(blocks, |i| {
                                let wv = load(w_g.add(i * BLOCK));
                                if D::WIDE {
                                    D::dot(load(x_u.add(at + i * BLOCK)), wv)
                                } else {
                                    // |w| * (x with w's sign) keeps pairs within i16.
                                    D::dot(_mm256_sign_epi8(wv, wv), _mm256_sign_epi8(load(x_q.add(at + i * BLOCK)), wv))
                                }
                            });
                            if D::WIDE {
                                // (q_x + 128) · q_w = q_x · q_w + 128 Σq_w
                                dots = _mm256_sub_epi32(dots, _mm256_loadu_si256(q_sum.as_ptr().add(wg) as *const __m256i));
                            }
                            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dots), scale(d), acc);
                        }
                        Blocks::Q4_1 { d, m, .. } => {
                            let dots = group_sums(blocks, |i| D::dot(load(w_g.add(i * BLOCK)), load(x_q.add(at + i * BLOCK))));
                            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dots), scale(d), acc);
                            acc = _mm256_fmadd_ps(_mm256_loadu_ps(m.as_ptr().add(wg)), _mm256_loadu_ps(x_sum.add(g)), acc);
                        }
                    }
                }
                *out.add(r * w.n + j) = horizontal_sum(acc);
            }
        }
    }

    /// The integer dot products of a group's blocks (`block(i)`, 8 lanes
    /// each), reduced to one lane per block; blocks past `count` are zero.
    #[inline(always)]
    unsafe fn group_sums(count: usize, block: impl Fn(usize) -> __m256i) -> __m256i {
        let sums: [__m256i; GROUP] = if count == GROUP {
            // Straight-line code for whole groups.
            std::array::from_fn(&block)
        } else {
            std::array::from_fn(|i| if i < count { block(i) } else { _mm256_setzero_si256() })
        };
        reduce(&sums)
    }

    /// Q4_1 blocks of 16 bytes to 32 bytes, low nibbles first (ggml's order).
    #[inline(always)]
    unsafe fn unpack_nibbles(packed: *const u8, out: &mut [u8]) {
        let low = _mm_set1_epi8(15);
        for (b, dst) in out.chunks_exact_mut(BLOCK).enumerate() {
            let v = _mm_loadu_si128(packed.add(b * BLOCK / 2) as *const __m128i);
            _mm_storeu_si128(dst.as_mut_ptr() as *mut __m128i, _mm_and_si128(v, low));
            _mm_storeu_si128(dst.as_mut_ptr().add(16) as *mut __m128i, _mm_and_si128(_mm_srli_epi16(v, 4), low));
        }
    }

    #[inline(always)]
    unsafe fn load(p: *const u8) -> __m256i {
        _mm256_loadu_si256(p as *const __m256i)
    }

    /// Lane i of the result is the sum of the 8 lanes of `v[i]`.
    #[inline(always)]
    unsafe fn reduce(v: &[__m256i; GROUP]) -> __m256i {
        let h01 = _mm256_hadd_epi32(v[0], v[1]);
        let h23 = _mm256_hadd_epi32(v[2], v[3]);
        let h45 = _mm256_hadd_epi32(v[4], v[5]);
        let h67 = _mm256_hadd_epi32(v[6], v[7]);
        // Per 128-bit half: the partial sums of v[0..4] and of v[4..8].
        let h0123 = _mm256_hadd_epi32(h01, h23);
        let h4567 = _mm256_hadd_epi32(h45, h67);
        let low_halves = _mm256_permute2x128_si256(h0123, h4567, 0x20);
        let high_halves = _mm256_permute2x128_si256(h0123, h4567, 0x31);
        _mm256_add_epi32(low_halves, high_halves)
    }

    #[inline(always)]
    unsafe fn horizontal_sum(v: __m256) -> f32 {
        let half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let quarter = _mm_add_ps(half, _mm_movehl_ps(half, half));
        _mm_cvtss_f32(_mm_add_ss(quarter, _mm_shuffle_ps(quarter, quarter, 1)))
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
    /// the same way) up to float summation order. k = 18 blocks leaves a
    /// partial group, as SmolLM2's 576 does.
    #[test]
    fn kernels_match_the_scalar_reference_and_candle() {
        let dev = Device::Cpu;
        for dtype in [GgmlDType::Q8_0, GgmlDType::Q4_1] {
            for (m, k, n) in [(1, 576, 40), (5, 96, 33), (16, 256, 24)] {
                let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
                let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
                let q = QTensor::quantize(&w, dtype).unwrap();
                let ours = QMatrix::from_qtensor(&q).unwrap().unwrap();
                let exact = x.matmul(&w.t().unwrap()).unwrap();
                let scale = max_abs(&exact);
                let acts = Activations::quantize(&x.flatten_all().unwrap().to_vec1().unwrap(), m, ours.kb, ours.kg);
                let run = |isa: Isa| {
                    let mut out = vec![0f32; m * n];
                    let ptr = SharedMut(out.as_mut_ptr());
                    // SAFETY: only ISAs this CPU has are run (below).
                    unsafe { isa.columns(&ours, &acts, 0..n, &ptr) };
                    Tensor::from_vec(out, (m, n), &dev).unwrap()
                };
                let reference = run(Isa::Scalar);
                let mut isas = vec![];
                #[cfg(target_arch = "x86_64")]
                {
                    use std::arch::is_x86_feature_detected as has;
                    if has!("avx2") && has!("fma") {
                        isas.push(("avx2", Isa::Avx2));
                        if has!("avxvnni") {
                            isas.push(("avxvnni", Isa::AvxVnni));
                        }
                        if has!("avx512vnni") && has!("avx512vl") {
                            isas.push(("avx512vnni", Isa::Avx512Vnni));
                        }
                    }
                }
                for (name, isa) in isas {
                    let err = max_abs(&(run(isa) - &reference).unwrap());
                    assert!(err <= 1e-5 * scale, "{dtype:?} {name} ({m}x{k}x{n}): {err} from the scalar kernel");
                }
                // ggml's Q8_1 activations (candle's for Q4_1) store Σq times the
                // scale as f16, so its offset term is rounded where ours is not.
                let tolerance = if dtype == GgmlDType::Q4_1 { 1e-3 } else { 1e-5 };
                let theirs = QMatMul::from_qtensor(q).unwrap().forward(&x).unwrap();
                let err = max_abs(&(ours.forward(&x).unwrap() - &theirs).unwrap());
                assert!(err <= tolerance * scale, "{dtype:?} ({m}x{k}x{n}): {err} from candle (values up to {scale})");
                // And near the exact f32 product: 4- or 8-bit weights, 8-bit activations.
                let err = max_abs(&(ours.forward(&x).unwrap() - &exact).unwrap());
                assert!(err < 0.1 * scale, "{dtype:?}: {err} from f32");
            }
        }
    }

    #[test]
    fn concatenated_rows_give_the_concatenated_outputs() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (3, 96), &dev).unwrap();
        let part = |n| QMatrix::from_qtensor(&QTensor::quantize(&Tensor::randn(0f32, 1.0, (n, 96), &dev).unwrap(), GgmlDType::Q4_1).unwrap()).unwrap().unwrap();
        let (a, b) = (part(8), part(5));
        let both = QMatrix::concat_rows(&[&a, &b]).unwrap();
        let want = Tensor::cat(&[a.forward(&x).unwrap(), b.forward(&x).unwrap()], 1).unwrap();
        assert_eq!(max_abs(&(both.forward(&x).unwrap() - want).unwrap()), 0.0);
        let q8 = QMatrix::from_qtensor(&QTensor::quantize(&Tensor::randn(0f32, 1.0, (4, 96), &dev).unwrap(), GgmlDType::Q8_0).unwrap()).unwrap().unwrap();
        assert!(QMatrix::concat_rows(&[&a, &q8]).is_none(), "different block types");
    }

    #[test]
    fn other_block_types_are_left_to_candle() {
        let w = Tensor::randn(0f32, 1.0, (8, 256), &Device::Cpu).unwrap();
        assert!(QMatrix::from_qtensor(&QTensor::quantize(&w, GgmlDType::Q4K).unwrap()).unwrap().is_none());
    }
}
