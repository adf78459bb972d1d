//! Rotary position embeddings in the HF layout (rotate_half over the two
//! halves of the rotated dimensions), computed for the positions at hand:
//! one rotation, which the KV cache applies as keys arrive and the training
//! forward applies as a differentiable op (`kernels::rope`).

use std::sync::Arc;

use num_traits::Float;

use crate::config::{Rope, RopeScaling};

pub struct RotaryEmbedding {
    /// rot_dim / 2 inverse frequencies.
    inv_freq: Vec<f32>,
    /// The leading dimensions of a head that rotate; the rest pass through.
    pub rot_dim: usize,
}

/// cos and sin of the rotation angles of a run of tokens: rot_dim / 2 of
/// each per token, computed once per forward and shared by every layer.
#[derive(Clone)]
pub struct CosSin {
    pub cos: Arc<[f32]>,
    pub sin: Arc<[f32]>,
    pub rot_dim: usize,
}

impl RotaryEmbedding {
    pub fn new(rope: &Rope, head_dim: usize) -> Self {
        let rot_dim = ((head_dim as f64 * rope.partial_factor) as usize) & !1;
        let inv_freq = (0..rot_dim / 2)
            .map(|i| {
                let f = 1.0 / rope.theta.powf((2 * i) as f64 / rot_dim as f64);
                scale_frequency(f, &rope.scaling) as f32
            })
            .collect();
        RotaryEmbedding { inv_freq, rot_dim }
    }

    /// The angles' cos and sin at each of `positions`, in f32 (as transformers
    /// computes them).
    pub fn cos_sin(&self, positions: &[usize]) -> CosSin {
        let angles: Vec<f32> = positions.iter().flat_map(|&p| self.inv_freq.iter().map(move |f| p as f32 * f)).collect();
        CosSin { cos: angles.iter().map(|a| a.cos()).collect(), sin: angles.iter().map(|a| a.sin()).collect(), rot_dim: self.rot_dim }
    }
}

/// Rotate one head's vector `x` into `out` by the angles of one token (`cos`,
/// `sin`: rot_dim / 2 each), in the HF layout: dimension d pairs with d +
/// rot_dim / 2 (rotate_half), and the dimensions after rot_dim pass through.
/// `inverse` rotates the other way: the transpose, which is the backward.
pub fn rotate<T: Float>(x: &[T], cos: &[f32], sin: &[f32], rot_dim: usize, inverse: bool, out: &mut [T]) {
    let half = rot_dim / 2;
    for d in 0..half {
        let (c, s) = (T::from(cos[d]).unwrap(), T::from(sin[d]).unwrap());
        let s = if inverse { -s } else { s };
        let (x1, x2) = (x[d], x[d + half]);
        out[d] = x1 * c - x2 * s;
        out[d + half] = x2 * c + x1 * s;
    }
    out[rot_dim..].copy_from_slice(&x[rot_dim..]);
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
