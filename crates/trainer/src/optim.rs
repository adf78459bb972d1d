//! AdamW over flat f32 buffers, updated in place: gradients of the
//! micro-batches of a step are summed into one buffer per variable (attached
//! to the variable's gradient slot, so the training ops add into it directly:
//! `wrpo_llm::grad`), clipped by
//! their global norm, and each variable's storage is rewritten in place (no
//! new tensors per step), in chunks across the thread pool. The update is
//! torch.optim.AdamW's.

use std::{cell::RefCell, collections::HashMap, path::Path, sync::Arc};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{backprop::GradStore, CpuStorage, DType, Device, InplaceOp1, Layout, Tensor, Var};
use serde::Serialize;
use wrpo_llm::{
    grad::{GradBuffer, GradSlot},
    with_values, Trainable,
};

#[derive(Clone, Debug, Serialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Decay norms and biases (1-D tensors) too.
    pub decay_norms_and_biases: bool,
}

struct Param {
    name: String,
    var: Var,
    /// The gradient sum, attached to `slot`: the training ops add into it directly.
    grad: Arc<GradBuffer>,
    slot: GradSlot,
    m: Vec<f32>,
    v: Vec<f32>,
    decay: bool,
}

/// Values per task when a buffer is split across the pool.
const CHUNK: usize = 1 << 16;

pub struct AdamW {
    config: AdamWConfig,
    params: Vec<Param>,
    /// Optimizer steps taken.
    pub t: u64,
}

/// An update of a variable's f32 values in place.
type Update<'a> = &'a mut dyn FnMut(&mut [f32]);

/// Run an [`Update`] on a tensor's f32 storage.
struct InPlace<'a>(RefCell<Update<'a>>);

impl InplaceOp1 for InPlace<'_> {
    fn name(&self) -> &'static str {
        "adamw-update"
    }
    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let CpuStorage::F32(data) = storage else { candle_core::bail!("AdamW updates f32 variables only") };
        let start = layout.start_offset();
        (self.0.borrow_mut())(&mut data[start..start + layout.shape().elem_count()]);
        Ok(())
    }
}

impl AdamW {
    /// An optimizer of `params` (a model's [`Trainable`] variables, all f32),
    /// which attaches a gradient buffer to each one's slot until dropped.
    pub fn new(params: Vec<Trainable>, config: AdamWConfig) -> Result<Self> {
        // Checked before any buffer is attached, so a refusal leaves none behind.
        if let Some(p) = params.iter().find(|p| p.var.dtype() != DType::F32) {
            bail!("variable {} is {:?}; training keeps f32 weights", p.name, p.var.dtype());
        }
        let params = params
            .into_iter()
            .map(|Trainable { name, var, grad: slot }| {
                let n = var.elem_count();
                let decay = config.decay_norms_and_biases || var.rank() >= 2;
                let grad = GradBuffer::new(n);
                slot.attach(grad.clone());
                Param { name, var, grad, slot, m: vec![0.0; n], v: vec![0.0; n], decay }
            })
            .collect();
        Ok(AdamW { config, params, t: 0 })
    }

    /// Add a backward pass's gradients to the step's sums: those candle
    /// holds, for the weights of ops without a gradient buffer (the training
    /// ops added theirs already). Every trainable variable must have one: a
    /// missing gradient is a bug (a fused op without backward) that would
    /// otherwise train silently wrong.
    pub fn accumulate(&mut self, grads: &GradStore) -> Result<()> {
        for p in &mut self.params {
            let added = p.grad.take_received();
            let Some(g) = grads.get(p.var.as_tensor()) else {
                if added {
                    continue;
                }
                bail!("variable {} received no gradient", p.name);
            };
            let mut sum = p.grad.lock();
            with_values(g, |g: &[f32]| {
                let mut parts: Vec<(&mut [f32], &[f32])> = sum.chunks_mut(CHUNK).zip(g.chunks(CHUNK)).collect();
                wrpo_llm::for_each_mut(&mut parts, &|(sum, g)| sum.iter_mut().zip(g.iter()).for_each(|(a, b)| *a += b));
            })?;
        }
        Ok(())
    }

    /// The summed gradient of the variable `name`, as the next step will apply it (before clipping).
    pub fn gradient(&self, name: &str) -> Option<Vec<f32>> {
        self.params.iter().find(|p| p.name == name).map(|p| p.grad.lock().clone())
    }

    /// The global L2 norm of the summed gradients.
    pub fn grad_norm(&self) -> f64 {
        let sums: Vec<_> = self.params.iter().map(|p| p.grad.lock()).collect();
        let mut parts: Vec<(&[f32], f64)> = sums.iter().flat_map(|g| g.chunks(CHUNK)).map(|c| (c, 0.0)).collect();
        wrpo_llm::for_each_mut(&mut parts, &|(g, sum)| *sum = wrpo_llm::sum_squares(g));
        parts.iter().map(|(_, s)| s).sum::<f64>().sqrt()
    }

    /// Clip the summed gradients to `max_norm` (as torch's clip_grad_norm_),
    /// take one AdamW step at `lr`, and zero the sums. Returns the norm
    /// before clipping.
    pub fn step(&mut self, lr: f64, max_norm: Option<f64>) -> Result<f64> {
        let norm = self.grad_norm();
        let clip = max_norm.map_or(1.0, |m| (m / (norm + 1e-6)).min(1.0)) as f32;
        self.t += 1;
        let c = &self.config;
        let (b1, b2) = (c.beta1 as f32, c.beta2 as f32);
        let bias1 = 1.0 - c.beta1.powi(self.t as i32);
        let bias2_sqrt = (1.0 - c.beta2.powi(self.t as i32)).sqrt() as f32;
        let step_size = (lr / bias1) as f32;
        let eps = c.eps as f32;
        for p in &mut self.params {
            let decay = if p.decay { (1.0 - lr * c.weight_decay) as f32 } else { 1.0 };
            let (mut grad, m, v) = (p.grad.lock(), &mut p.m, &mut p.v);
            let mut update = |w: &mut [f32]| {
                let mut parts: Vec<_> = w.chunks_mut(CHUNK).zip(grad.chunks_mut(CHUNK)).zip(m.chunks_mut(CHUNK)).zip(v.chunks_mut(CHUNK)).collect();
                wrpo_llm::for_each_mut(&mut parts, &|(((w, grad), m), v)| {
                    // Compiled for the CPU's widest vectors: on SSE2 (the default target)
                    // the divides and square roots made it a quarter slower.
                    wrpo_llm::vectorized(
                        #[inline(always)]
                        || {
                            for (((w, g), m), v) in w.iter_mut().zip(grad.iter_mut()).zip(m.iter_mut()).zip(v.iter_mut()) {
                                let clipped = *g * clip;
                                *m = b1 * *m + (1.0 - b1) * clipped;
                                *v = b2 * *v + (1.0 - b2) * clipped * clipped;
                                *w = *w * decay - step_size * *m / (v.sqrt() / bias2_sqrt + eps);
                                *g = 0.0;
                            }
                        },
                    );
                });
            };
            p.var.as_tensor().inplace_op1(&InPlace(RefCell::new(&mut update)))?;
        }
        Ok(norm)
    }

    /// Save the moments (m.NAME, v.NAME) to a safetensors file.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut tensors = HashMap::new();
        for p in &self.params {
            let shape = p.var.shape();
            tensors.insert(format!("m.{}", p.name), Tensor::from_slice(&p.m, shape, &Device::Cpu)?);
            tensors.insert(format!("v.{}", p.name), Tensor::from_slice(&p.v, shape, &Device::Cpu)?);
        }
        candle_core::safetensors::save(&tensors, path).with_context(|| format!("cannot write {}", path.display()))
    }

    pub fn load(&mut self, path: &Path, t: u64) -> Result<()> {
        let tensors = candle_core::safetensors::load(path, &Device::Cpu).with_context(|| format!("cannot read {}", path.display()))?;
        for p in &mut self.params {
            for (key, buf) in [("m", &mut p.m), ("v", &mut p.v)] {
                let name = format!("{key}.{}", p.name);
                let t = tensors.get(&name).ok_or_else(|| anyhow!("{}: '{name}' is missing", path.display()))?;
                *buf = t.flatten_all()?.to_vec1::<f32>()?;
                if buf.len() != p.var.elem_count() {
                    bail!("{}: '{name}' has {} values, expected {}", path.display(), buf.len(), p.var.elem_count());
                }
            }
        }
        self.t = t;
        Ok(())
    }
}

impl Drop for AdamW {
    /// The ops give candle these variables' gradients again.
    fn drop(&mut self) {
        for p in &self.params {
            p.slot.detach();
        }
    }
}
