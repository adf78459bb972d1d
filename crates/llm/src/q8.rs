//! Q8_0 weights times f32 activations for batched decoding.
//!
//! candle's quantized matmul streams the whole weight matrix once per batch
//! row, and its fast repacked kernels need the inner size to be a multiple
//! of 256 (SmolLM2's 576 is not). This one reads each weight block once for
//! every row of the batch, so decoding 8 or 16 sequences costs little more
//! weight traffic than decoding one. Activations are quantized to Q8_0 per
//! row, as ggml does, and each block's dot product is exact in i32.

use candle_core::{quantized::GgmlDType, quantized::QTensor, Tensor};
use rayon::prelude::*;

const BLOCK: usize = 32;
/// ggml's Q8_0 block: an f16 scale, then 32 signed bytes.
const BLOCK_BYTES: usize = 2 + BLOCK;

pub struct Q8Matrix {
    /// Output features (weight rows).
    n: usize,
    /// Input features.
    k: usize,
    /// Per weight row, k / 32 scales.
    scales: Vec<f32>,
    /// Per weight row, k quants.
    quants: Vec<i8>,
}

impl Q8Matrix {
    /// The weight of a Q8_0 tensor (out, in); None for other block types.
    pub fn from_qtensor(q: &QTensor) -> candle_core::Result<Option<Self>> {
        if q.dtype() != GgmlDType::Q8_0 {
            return Ok(None);
        }
        let (n, k) = q.shape().dims2()?;
        let data = q.data()?;
        let blocks = n * k / BLOCK;
        let (mut scales, mut quants) = (Vec::with_capacity(blocks), Vec::with_capacity(n * k));
        for b in data.chunks_exact(BLOCK_BYTES).take(blocks) {
            scales.push(half::f16::from_le_bytes([b[0], b[1]]).to_f32());
            quants.extend(b[2..].iter().map(|&v| v as i8));
        }
        Ok(Some(Q8Matrix { n, k, scales, quants }))
    }

    /// (out, in)
    pub fn dims(&self) -> [usize; 2] {
        [self.n, self.k]
    }

    /// x (m, k) f32 → x · Wᵀ (m, n) f32.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (m, k) = x.dims2()?;
        if k != self.k {
            candle_core::bail!("Q8 matmul: input has {k} features, the weight {}", self.k);
        }
        let xs = x.flatten_all()?.to_vec1::<f32>()?;
        let (x_scales, x_quants) = quantize_rows(&xs, k);
        let kb = k / BLOCK;
        // Columns (output features) in parallel chunks, all m rows at once;
        // the result comes out transposed, (n, m).
        const COLS: usize = 16;
        let mut out_t = vec![0f32; self.n * m];
        out_t.par_chunks_mut(COLS * m).enumerate().for_each(|(c, chunk)| {
            for (jj, out) in chunk.chunks_mut(m).enumerate() {
                let j = c * COLS + jj;
                let w_q = &self.quants[j * k..(j + 1) * k];
                let w_s = &self.scales[j * kb..(j + 1) * kb];
                for (r, o) in out.iter_mut().enumerate() {
                    *o = dot_row(w_q, w_s, &x_quants[r * k..(r + 1) * k], &x_scales[r * kb..(r + 1) * kb]);
                }
            }
        });
        let mut out = vec![0f32; m * self.n];
        for (j, col) in out_t.chunks(m).enumerate() {
            for (r, &v) in col.iter().enumerate() {
                out[r * self.n + j] = v;
            }
        }
        Tensor::from_vec(out, (m, self.n), x.device())
    }
}

/// Q8_0 quantization of each row: per block of 32, scale = max |x| / 127.
fn quantize_rows(xs: &[f32], k: usize) -> (Vec<f32>, Vec<i8>) {
    let mut scales = Vec::with_capacity(xs.len() / BLOCK);
    let mut quants = Vec::with_capacity(xs.len());
    for block in xs.chunks_exact(BLOCK) {
        let amax = block.iter().fold(0f32, |a, v| a.max(v.abs()));
        // As ggml does: quantize with the f32 scale, keep it as f16.
        let d = amax / 127.0;
        let inv = if d == 0.0 { 0.0 } else { 1.0 / d };
        scales.push(half::f16::from_f32(d).to_f32());
        quants.extend(block.iter().map(|v| (v * inv).round() as i8));
    }
    debug_assert_eq!(quants.len(), xs.len() / k * k);
    (scales, quants)
}

/// Σ over blocks of (w_q · x_q) * w_s * x_s.
fn dot_row(w_q: &[i8], w_s: &[f32], x_q: &[i8], x_s: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA, checked just above.
            return unsafe { dot_row_avx2(w_q, w_s, x_q, x_s) };
        }
    }
    w_q.chunks_exact(BLOCK)
        .zip(x_q.chunks_exact(BLOCK))
        .zip(w_s.iter().zip(x_s))
        .map(|((w, x), (ws, xs))| w.iter().zip(x).map(|(&a, &b)| a as i32 * b as i32).sum::<i32>() as f32 * ws * xs)
        .sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_row_avx2(w_q: &[i8], w_s: &[f32], x_q: &[i8], x_s: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let ones = _mm256_set1_epi16(1);
    let mut acc = _mm256_setzero_ps();
    for b in 0..w_s.len() {
        let w = _mm256_loadu_si256(w_q.as_ptr().add(b * BLOCK) as *const __m256i);
        let x = _mm256_loadu_si256(x_q.as_ptr().add(b * BLOCK) as *const __m256i);
        // maddubs multiplies unsigned by signed bytes: move w's sign onto x.
        let products = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
        let sums = _mm256_cvtepi32_ps(_mm256_madd_epi16(products, ones));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(w_s[b] * x_s[b]), sums, acc);
    }
    let half = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    let half = _mm_add_ps(half, _mm_movehl_ps(half, half));
    let one = _mm_add_ss(half, _mm_shuffle_ps(half, half, 1));
    _mm_cvtss_f32(one)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{quantized::QMatMul, Device, Module};

    /// Same numbers as candle's own Q8_0 matmul (which quantizes the
    /// activations the same way), up to float summation order.
    #[test]
    fn matches_candle_q8_0_matmul() {
        let dev = Device::Cpu;
        let (m, k, n) = (5, 96, 40);
        let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
        let ours = Q8Matrix::from_qtensor(&q).unwrap().unwrap().forward(&x).unwrap();
        let theirs = QMatMul::from_qtensor(q).unwrap().forward(&x).unwrap();
        let exact = x.matmul(&w.t().unwrap()).unwrap();
        let max_abs = |t: Tensor| t.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        let scale = max_abs(exact.clone());
        let err = max_abs((&ours - &theirs).unwrap());
        assert!(err <= 1e-5 * scale, "max abs error {err} against candle (values up to {scale})");
        // And near the exact f32 product: 8-bit weights and activations.
        let err = max_abs((&ours - &exact).unwrap());
        assert!(err < 0.05 * scale, "max abs error {err} against f32");
    }

    #[test]
    fn other_block_types_are_left_to_candle() {
        let w = Tensor::randn(0f32, 1.0, (8, 256), &Device::Cpu).unwrap();
        assert!(Q8Matrix::from_qtensor(&QTensor::quantize(&w, GgmlDType::Q4K).unwrap()).unwrap().is_none());
    }
}
