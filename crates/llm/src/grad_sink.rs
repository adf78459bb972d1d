//! Weight gradients added straight into an optimizer's buffers.
//!
//! candle's autograd sums every gradient into its store as a fresh
//! `zeros + gradient`: for each weight, every step, a zeroed tensor and an
//! add into a third, which the optimizer then adds into its own buffer. For
//! Gemma-3's tied (262k, 640) embedding that is 671 MB a few times over.
//! An optimizer registers one [`GradBuffer`] per trainable variable here;
//! the training ops that take a weight (linear, RMSNorm, the LM head, the
//! embedding) then add its gradient into that buffer in place and give
//! candle none. With no buffer registered (the gradient checks, a model
//! without an optimizer) they return the gradient to candle as before.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, MutexGuard, OnceLock, RwLock,
    },
};

use candle_core::{DType, Result, Tensor, TensorId, WithDType};

use crate::grad_ops::tensor;

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

/// `weight`'s gradient, which `add` adds into the buffer it is given: the
/// buffer registered for `weight` when there is one and the op computes in
/// f32 (then None: candle gets no gradient for `weight`), else a zeroed one,
/// returned as a tensor of `weight`'s shape and dtype.
pub(crate) fn gradient<T: WithDType>(weight: &Tensor, add: impl FnOnce(&mut [T]) -> Result<()>) -> Result<Option<Tensor>> {
    let registered = if T::DTYPE == DType::F32 { sinks().read().unwrap_or_else(|e| e.into_inner()).get(&weight.id()).cloned() } else { None };
    let Some(buffer) = registered else {
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
