//! Where a weight's gradient goes: into an optimizer's buffer, in place.
//!
//! candle's autograd sums every gradient into its store as a fresh
//! `zeros + gradient`: for each weight, every step, a zeroed tensor and an
//! add into a third, which the optimizer then adds into its own buffer. For
//! Gemma-3's tied (262k, 640) embedding that is 671 MB a few times over.
//! So each dense weight of a model carries a [`GradSlot`], shared by the
//! layer that uses it and the model's list of trainable variables
//! (`Model::trainable`). An optimizer attaches one [`GradBuffer`] to each
//! slot once; a layer hands its slot's buffer to the kernel it calls
//! (`kernels::linear`, `rms_norm`, `embedding`, `logprob::label_logprobs`),
//! whose backward adds the weight's gradient into it and gives candle none.
//! With nothing attached (the gradient checks, a model without an optimizer)
//! the kernels return the gradient to candle as any op does.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc, Mutex, MutexGuard, RwLock,
};

use candle_core::Tensor;

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

    /// Note that an op added a gradient.
    pub(crate) fn mark_received(&self) {
        self.received.store(true, Ordering::Relaxed);
    }
}

/// One weight's gradient destination: empty (candle's store) or the buffer
/// an optimizer attached. Clones share it.
#[derive(Clone, Default)]
pub struct GradSlot(Arc<RwLock<Option<Arc<GradBuffer>>>>);

impl GradSlot {
    /// From now on, the ops that take this weight add its gradient into `buffer`.
    pub fn attach(&self, buffer: Arc<GradBuffer>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some(buffer);
    }

    /// The ops return the weight's gradient to candle again.
    pub fn detach(&self) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// The buffer a kernel recording a forward of `weight` hands its
    /// backward: none when `weight` tracks no gradient (a frozen model).
    pub(crate) fn for_forward(&self, weight: &Tensor) -> Option<Arc<GradBuffer>> {
        if !weight.track_op() {
            return None;
        }
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
