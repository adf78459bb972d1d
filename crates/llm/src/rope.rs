//! Rotary position embeddings in the HF layout (rotate_half over the two
//! halves of the rotated dimensions), computed for the positions at hand.

use candle_core::{DType, Device, Result, Tensor, D};

use crate::config::{Rope, RopeScaling};

pub struct RotaryEmbedding {
    /// (1, 1, rot_dim / 2) inverse frequencies.
    inv_freq: Tensor,
    rot_dim: usize,
}

impl RotaryEmbedding {
    pub fn new(rope: &Rope, head_dim: usize, device: &Device) -> Result<Self> {
        let rot_dim = ((head_dim as f64 * rope.partial_factor) as usize) & !1;
        let inv_freq: Vec<f32> = (0..rot_dim / 2)
            .map(|i| {
                let f = 1.0 / rope.theta.powf((2 * i) as f64 / rot_dim as f64);
                scale_frequency(f, &rope.scaling) as f32
            })
            .collect();
        let inv_freq = Tensor::from_vec(inv_freq, (1, 1, rot_dim / 2), device)?;
        Ok(RotaryEmbedding { inv_freq, rot_dim })
    }

    /// cos and sin of `positions` (B, T) in `dtype`: for the differentiable
    /// rotation, or (`fused`) for candle's rope kernel, which has no backward
    /// pass and so serves inference only.
    pub fn tables(&self, positions: &Tensor, dtype: DType, fused: bool) -> Result<RopeTables> {
        let freqs = positions.to_dtype(DType::F32)?.unsqueeze(D::Minus1)?.broadcast_mul(&self.inv_freq)?; // (B, T, rot/2)
        if fused {
            return Ok(RopeTables::Fused { cos: freqs.cos()?.to_dtype(dtype)?, sin: freqs.sin()?.to_dtype(dtype)? });
        }
        let emb = Tensor::cat(&[&freqs, &freqs], D::Minus1)?.unsqueeze(1)?;
        Ok(RopeTables::Full { cos: emb.cos()?.to_dtype(dtype)?, sin: emb.sin()?.to_dtype(dtype)? })
    }

    /// Rotate x (B, H, T, head_dim).
    pub fn apply(&self, x: &Tensor, tables: &RopeTables) -> Result<Tensor> {
        let head_dim = x.dim(D::Minus1)?;
        let x_rot = x.narrow(D::Minus1, 0, self.rot_dim)?;
        let out = match tables {
            RopeTables::Fused { cos, sin } => candle_nn::rotary_emb::rope(&x_rot.contiguous()?, cos, sin)?,
            RopeTables::Full { cos, sin } => {
                let half = self.rot_dim / 2;
                let x1 = x_rot.narrow(D::Minus1, 0, half)?;
                let x2 = x_rot.narrow(D::Minus1, half, half)?;
                let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
                (x_rot.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?)?
            }
        };
        if self.rot_dim == head_dim {
            Ok(out)
        } else {
            Tensor::cat(&[&out, &x.narrow(D::Minus1, self.rot_dim, head_dim - self.rot_dim)?], D::Minus1)
        }
    }
}

pub enum RopeTables {
    /// (B, 1, T, rot_dim), halves repeated: rotate_half written out.
    Full { cos: Tensor, sin: Tensor },
    /// (B, T, rot_dim / 2) for candle's fused kernel.
    Fused { cos: Tensor, sin: Tensor },
}

/// Frequency scaling as transformers' rope init functions compute it.
fn scale_frequency(f: f64, scaling: &RopeScaling) -> f64 {
    match *scaling {
        RopeScaling::None => f,
        RopeScaling::Linear { factor } => f / factor,
        RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position } => {
            let wavelen = 2.0 * std::f64::consts::PI / f;
            let low_freq_wavelen = original_max_position / low_freq_factor;
            let high_freq_wavelen = original_max_position / high_freq_factor;
            if wavelen < high_freq_wavelen {
                f
            } else if wavelen > low_freq_wavelen {
                f / factor
            } else {
                let smooth = (original_max_position / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                (1.0 - smooth) * f / factor + smooth * f
            }
        }
    }
}
