//! Named weight tensors loaded from HF safetensors checkpoints (single or
//! sharded; f32, bf16 or f16 on disk) or converted from GGUF, held as
//! trainable variables.

use std::{collections::HashMap, path::Path, sync::Arc};

use anyhow::{anyhow, bail, Context, Result};

use crate::{
    grad::{GradBuffer, GradSlot},
    qmatmul::QMatrix,
};
use candle_core::{
    quantized::{GgmlDType, QMatMul, QTensor},
    safetensors::MmapedSafetensors,
    DType, Device, Tensor, Var,
};

pub struct Weights {
    vars: HashMap<String, Variable>,
    /// Projections kept quantized for inference (GGUF), by HF name.
    quantized: HashMap<String, QuantizedWeight>,
    /// Where they came from, for error messages.
    origin: String,
    /// Hand out detached tensors: a frozen model (the reference) records no
    /// autograd graph.
    frozen: bool,
}

/// A trainable tensor and its gradient destination, which the layer using
/// it shares.
struct Variable {
    var: Var,
    grad: GradSlot,
}

/// A trainable variable as an optimizer takes it: its HF name, its values,
/// and the slot to attach its gradient buffer to.
pub struct Trainable {
    pub name: String,
    pub var: Var,
    pub grad: GradSlot,
}

/// A dense weight as a layer holds it: the tensor the forward reads and the
/// gradient destination it hands the kernel.
#[derive(Clone)]
pub(crate) struct Dense {
    pub(crate) tensor: Tensor,
    grad: GradSlot,
}

impl Dense {
    /// The buffer this forward's backward adds the weight's gradient into,
    /// if an optimizer attached one.
    pub(crate) fn grad(&self) -> Option<Arc<GradBuffer>> {
        self.grad.for_forward(&self.tensor)
    }
}

impl Weights {
    /// Load `model.safetensors`, or the shards listed by
    /// `model.safetensors.index.json`, from an HF model folder, as `dtype`.
    pub fn from_hf_dir(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let index = dir.join("model.safetensors.index.json");
        let files = if index.exists() {
            let text = std::fs::read_to_string(&index).with_context(|| format!("cannot read {}", index.display()))?;
            let json: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", index.display()))?;
            let map = json["weight_map"].as_object().ok_or_else(|| anyhow!("{}: no 'weight_map'", index.display()))?;
            let mut files: Vec<_> = map.values().filter_map(|v| v.as_str()).map(|f| dir.join(f)).collect();
            files.sort();
            files.dedup();
            files
        } else {
            vec![dir.join("model.safetensors")]
        };
        for f in &files {
            if !f.exists() {
                bail!("{} is missing (an HF model folder needs model.safetensors or its shards)", f.display());
            }
        }
        // SAFETY: the files are mapped read-only; modifying them while loading is not supported.
        let st = unsafe { MmapedSafetensors::multi(&files) }.with_context(|| format!("cannot read safetensors in {}", dir.display()))?;
        let mut tensors = HashMap::new();
        for (name, _) in st.tensors() {
            let t = st.load(&name, device).with_context(|| format!("cannot load tensor '{name}'"))?;
            tensors.insert(name, t.to_dtype(dtype)?);
        }
        Self::from_tensors(tensors, dir.display().to_string())
    }

    /// Variables holding `tensors` (HF names); `origin` names their source in errors.
    pub fn from_tensors(tensors: HashMap<String, Tensor>, origin: String) -> Result<Self> {
        let vars =
            tensors.into_iter().map(|(k, t)| Ok((k, Variable { var: Var::from_tensor(&t)?, grad: GradSlot::default() }))).collect::<Result<_>>()?;
        Ok(Weights { vars, quantized: HashMap::new(), origin, frozen: false })
    }

    /// The tensor `name`, which must have `shape`.
    pub(crate) fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        Ok(self.dense(name, shape)?.tensor)
    }

    /// The weight `name`, which must have `shape`, with its gradient destination.
    pub(crate) fn dense(&self, name: &str, shape: &[usize]) -> Result<Dense> {
        let v = self.vars.get(name).ok_or_else(|| anyhow!("{}: tensor '{name}' is missing", self.origin))?;
        if v.var.dims() != shape {
            bail!("{}: tensor '{name}' has shape {:?}, expected {shape:?}", self.origin, v.var.dims());
        }
        let tensor = if self.frozen { v.var.as_tensor().detach() } else { v.var.as_tensor().clone() };
        Ok(Dense { tensor, grad: v.grad.clone() })
    }

    /// From now on, tensors handed out carry no autograd tracking.
    pub(crate) fn freeze(&mut self) {
        self.frozen = true;
    }

    pub(crate) fn contains(&self, name: &str) -> bool {
        self.vars.contains_key(name) || self.quantized.contains_key(name)
    }

    /// Drop a tensor (e.g. a stale `lm_head.weight` beside tied embeddings).
    pub(crate) fn remove(&mut self, name: &str) {
        self.vars.remove(name);
        self.quantized.remove(name);
    }

    /// Quantize the projections and the LM head of dense weights for
    /// inference (an HF checkpoint sampled as fast as a GGUF file): each
    /// `*_proj` and `lm_head` weight is replaced by its `dtype` blocks; the
    /// embeddings keep their dense table for lookups and gain a quantized copy
    /// for a tied head. Weights whose rows are not whole blocks stay dense.
    pub(crate) fn quantize_projections(&mut self, dtype: GgmlDType) -> Result<()> {
        let block = dtype.block_size();
        let mut quantized = HashMap::new();
        for (name, Variable { var, .. }) in &self.vars {
            let projection = name.ends_with("_proj.weight") || name == "lm_head.weight";
            let embeddings = name == "model.embed_tokens.weight";
            if (projection || embeddings) && var.rank() == 2 && var.dim(1)? % block == 0 {
                let q = QTensor::quantize(&var.as_tensor().to_dtype(DType::F32)?, dtype).with_context(|| format!("cannot quantize '{name}'"))?;
                quantized.insert(name.clone(), q);
            }
        }
        for name in quantized.keys().filter(|n| n.as_str() != "model.embed_tokens.weight") {
            self.vars.remove(name);
        }
        self.set_quantized(quantized)
    }

    /// Keep these projections quantized; Q8_0 and Q4_1 ones go to our batched kernel.
    pub(crate) fn set_quantized(&mut self, quantized: HashMap<String, QTensor>) -> Result<()> {
        self.quantized = quantized
            .into_iter()
            .map(|(k, q)| {
                let w = match QMatrix::from_qtensor(&q)? {
                    Some(m) => QuantizedWeight::Int8Dot(Arc::new(m)),
                    None => QuantizedWeight::Candle(Arc::new(q)),
                };
                Ok((k, w))
            })
            .collect::<Result<_>>()?;
        Ok(())
    }

    /// Replace the quantized projections `parts` (prefixes, e.g. q, k and v)
    /// by one, `fused`, holding their rows in order, with their biases
    /// concatenated: one pass over the activations then serves them all.
    /// Does nothing unless every part is in our kernel's format.
    pub(crate) fn fuse_quantized(&mut self, parts: &[String], fused: &str) -> Result<()> {
        let mats: Vec<&QMatrix> = parts
            .iter()
            .filter_map(|p| match self.quantized.get(&format!("{p}.weight")) {
                Some(QuantizedWeight::Int8Dot(m)) => Some(m.as_ref()),
                _ => None,
            })
            .collect();
        if mats.len() != parts.len() {
            return Ok(());
        }
        let Some(matrix) = QMatrix::concat_rows(&mats) else { return Ok(()) };
        let biases: Vec<&Var> = parts.iter().filter_map(|p| self.vars.get(&format!("{p}.bias"))).map(|v| &v.var).collect();
        if !biases.is_empty() {
            if biases.len() != parts.len() {
                return Ok(());
            }
            let bias = Tensor::cat(&biases.iter().map(|v| v.as_tensor()).collect::<Vec<_>>(), 0)?;
            self.vars.insert(format!("{fused}.bias"), Variable { var: Var::from_tensor(&bias)?, grad: GradSlot::default() });
        }
        for p in parts {
            self.quantized.remove(&format!("{p}.weight"));
            self.vars.remove(&format!("{p}.bias"));
        }
        self.quantized.insert(format!("{fused}.weight"), QuantizedWeight::Int8Dot(Arc::new(matrix)));
        Ok(())
    }

    /// Is `name` a projection kept quantized?
    pub(crate) fn is_quantized(&self, name: &str) -> bool {
        self.quantized.contains_key(name)
    }

    /// Were projections kept quantized (inference only)?
    pub(crate) fn has_quantized(&self) -> bool {
        !self.quantized.is_empty()
    }

    /// The weight of a projection with `shape` (out, in): quantized if it was
    /// loaded so, else the dense variable.
    pub(crate) fn linear(&self, name: &str, shape: &[usize]) -> Result<LinearWeight> {
        let q = match self.quantized.get(name) {
            None => return Ok(LinearWeight::Dense(self.dense(name, shape)?)),
            Some(q) => q,
        };
        if q.dims() != shape {
            bail!("{}: tensor '{name}' has shape {:?}, expected {shape:?}", self.origin, q.dims());
        }
        Ok(match q {
            QuantizedWeight::Int8Dot(m) => LinearWeight::Int8Dot(m.clone()),
            QuantizedWeight::Candle(t) => LinearWeight::CandleQuantized(QMatMul::from_arc(t.clone())?),
        })
    }

    /// Every variable by name, sorted: what training updates.
    pub(crate) fn vars(&self) -> Vec<(&str, &Var)> {
        let mut v: Vec<_> = self.vars.iter().map(|(k, v)| (k.as_str(), &v.var)).collect();
        v.sort_by_key(|(k, _)| *k);
        v
    }

    /// Every variable with its gradient slot, sorted by name.
    pub(crate) fn trainable(&self) -> Vec<Trainable> {
        let mut v: Vec<_> = self.vars.iter().map(|(k, v)| Trainable { name: k.clone(), var: v.var.clone(), grad: v.grad.clone() }).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }
}

pub(crate) enum LinearWeight {
    Dense(Dense),
    /// Q8_0 or Q4_1 blocks, through our batched int8 dot-product kernels (qmatmul).
    Int8Dot(Arc<QMatrix>),
    /// Other GGUF block types, through candle's quantized matmul.
    CandleQuantized(QMatMul),
}

enum QuantizedWeight {
    Int8Dot(Arc<QMatrix>),
    Candle(Arc<QTensor>),
}

impl QuantizedWeight {
    fn dims(&self) -> Vec<usize> {
        match self {
            QuantizedWeight::Int8Dot(m) => m.dims().to_vec(),
            QuantizedWeight::Candle(t) => t.shape().dims().to_vec(),
        }
    }
}
