//! Weight gradients added straight into an optimizer's buffers.
//!
//! candle's autograd sums every gradient into its store as a fresh
//! `zeros + gradient`: for each weight, every step, a zeroed tensor and an
//! add into a third, which the optimizer then adds into its own buffer. For
//! Gemma-3's tied (262k, 640) embedding that is 671 MB a few times over.
//! An optimizer registers one [`GradBuffer`] per trainable variable here.
//! The kernels that take a weight (`kernels::linear`, `rms_norm`,
//! `embedding`, and the LM head's `logprob::label_logprobs`) look the buffer
//! up when they record their forward ([`buffer_of`]), keep it in the op, and
//! their backward adds the weight's gradient into it in place and gives
//! candle none ([`gradient`]). With no buffer registered (the gradient
//! checks, a model without an optimizer) they return the gradient to candle
//! as any op does.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, MutexGuard, OnceLock, RwLock,
    },
};

use candle_core::{DType, Result, Tensor, TensorId, WithDType};

use crate::kernels::tensor;

/// The running sum of one variable's gradient, in f32.
pub struct GradBuffer {
    values: Mutex<Vec<f32>>,
    /// Whether an op added to it since [`GradBuffer::take_received`].
    received: AtomicBool,
}

impl GradBuffer {
    pub fn new(len: usize) -> Arc<GradBuffer> {
        Arc::new(GradBuffer { values: Mutex::new(vec![0.0; len]), received: AtomicBool::new(false) })
    }

    pub fn lock(&self) -> MutexGuard<'_, Vec<f32>> {
        self.values.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether an op added a gradient since the last call.
    pub fn take_received(&self) -> bool {
        self.received.swap(false, Ordering::Relaxed)
    }
}

fn sinks() -> &'static RwLock<HashMap<TensorId, Arc<GradBuffer>>> {
    static SINKS: OnceLock<RwLock<HashMap<TensorId, Arc<GradBuffer>>>> = OnceLock::new();
    SINKS.get_or_init(Default::default)
}

/// From now on, the training ops add `var`'s gradient into `buffer`.
pub fn register(var: &Tensor, buffer: Arc<GradBuffer>) {
    sinks().write().unwrap_or_else(|e| e.into_inner()).insert(var.id(), buffer);
}

/// The ops return `var`'s gradient to candle again.
pub fn unregister(var: &Tensor) {
    sinks().write().unwrap_or_else(|e| e.into_inner()).remove(&var.id());
}

/// The buffer registered for `weight`, if any: what a kernel keeps when it
/// records a forward that takes `weight`.
pub(crate) fn buffer_of(weight: &Tensor) -> Option<Arc<GradBuffer>> {
    if !weight.track_op() {
        return None;
    }
    sinks().read().unwrap_or_else(|e| e.into_inner()).get(&weight.id()).cloned()
}

/// `weight`'s gradient, which `add` adds into the buffer it is given: the
/// kernel's `buffer` (from [`buffer_of`]) when it has one and computes in f32
/// (then None: candle gets no gradient for `weight`), else a zeroed one,
/// returned as a tensor of `weight`'s shape and dtype.
pub(crate) fn gradient<T: WithDType>(
    weight: &Tensor,
    buffer: Option<&Arc<GradBuffer>>,
    add: impl FnOnce(&mut [T]) -> Result<()>,
) -> Result<Option<Tensor>> {
    let Some(buffer) = buffer.filter(|_| T::DTYPE == DType::F32) else {
        let mut values = vec![T::zero(); weight.elem_count()];
        add(&mut values)?;
        return Ok(Some(tensor(values, weight.shape(), weight)?));
    };
    let mut values = buffer.lock();
    assert_eq!(values.len(), weight.elem_count(), "a gradient buffer of another size than its variable");
    // SAFETY: T is f32 (checked above), so the buffer's values are T's.
    add(unsafe { std::slice::from_raw_parts_mut(values.as_mut_ptr() as *mut T, values.len()) })?;
    buffer.received.store(true, Ordering::Relaxed);
    Ok(None)
}
