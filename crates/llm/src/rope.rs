//! Rotary position embeddings in the HF layout (rotate_half over the two
//! halves of the rotated dimensions), computed for the positions at hand.

use candle_core::{DType, Device, Result, Tensor, D};

use crate::config::{Rope, RopeScaling};

pub struct RotaryEmbedding {
    /// (1, 1, rot_dim / 2) inverse frequencies.
    inv_freq: Tensor,
    inv_freq_values: Vec<f32>,
    /// The leading dimensions of a head that rotate; the rest pass through.
    pub rot_dim: usize,
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
        let inv_freq_values = inv_freq.clone();
        let inv_freq = Tensor::from_vec(inv_freq, (1, 1, rot_dim / 2), device)?;
        Ok(RotaryEmbedding { inv_freq, inv_freq_values, rot_dim })
    }

    /// cos and sin of each of `positions` at every frequency, rot_dim / 2
    /// per position, computed in f32 as `tables` does: for the KV-cache path.
    pub fn cos_sin(&self, positions: &[usize]) -> (Vec<f32>, Vec<f32>) {
        let angles: Vec<f32> = positions.iter().flat_map(|&p| self.inv_freq_values.iter().map(move |f| p as f32 * f)).collect();
        (angles.iter().map(|a| a.cos()).collect(), angles.iter().map(|a| a.sin()).collect())
    }

    /// cos and sin of `positions` (B, T) in `dtype`, (B, 1, T, rot_dim) with
    /// the halves repeated: rotate_half written out in differentiable ops.
    pub fn tables(&self, positions: &Tensor, dtype: DType) -> Result<RopeTables> {
        let freqs = positions.to_dtype(DType::F32)?.unsqueeze(D::Minus1)?.broadcast_mul(&self.inv_freq)?; // (B, T, rot/2)
        let emb = Tensor::cat(&[&freqs, &freqs], D::Minus1)?.unsqueeze(1)?;
        Ok(RopeTables { cos: emb.cos()?.to_dtype(dtype)?, sin: emb.sin()?.to_dtype(dtype)? })
    }

    /// Rotate x (B, H, T, head_dim).
    pub fn apply(&self, x: &Tensor, tables: &RopeTables) -> Result<Tensor> {
        let head_dim = x.dim(D::Minus1)?;
        let x_rot = x.narrow(D::Minus1, 0, self.rot_dim)?;
        let half = self.rot_dim / 2;
        let x1 = x_rot.narrow(D::Minus1, 0, half)?;
        let x2 = x_rot.narrow(D::Minus1, half, half)?;
        let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
        let out = (x_rot.broadcast_mul(&tables.cos)? + rotated.broadcast_mul(&tables.sin)?)?;
        if self.rot_dim == head_dim {
            Ok(out)
        } else {
            Tensor::cat(&[&out, &x.narrow(D::Minus1, self.rot_dim, head_dim - self.rot_dim)?], D::Minus1)
        }
    }
}

/// (B, 1, T, rot_dim), halves repeated.
pub struct RopeTables {
    cos: Tensor,
    sin: Tensor,
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
