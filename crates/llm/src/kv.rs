//! The KV cache of inference and the attention that reads it.
//!
//! Keys and values live in plain buffers rather than candle tensors: a step
//! writes each row's new positions in place and attends over exactly the
//! positions each row has, with no mask tensor, no per-row tensor copies and
//! no small-matmul dispatch, which cost more than the arithmetic when
//! decoding one token per row. Training never comes here; it keeps the
//! differentiable path in `model.rs`.

use anyhow::{bail, Result};

use crate::pool::{Pool, SharedMut};

/// Preallocated keys and values: `slots` sequences of up to `capacity`
/// positions each, every slot with its own length, so sequences of
/// different lengths decode in one batch.
pub struct KvCache {
    /// Per layer, keys (already rotated) and values, laid out
    /// (slot, kv_head, capacity, head_dim).
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    lens: Vec<usize>,
    capacity: usize,
    kv_heads: usize,
    head_dim: usize,
}

/// What a layer's attention needs besides the cache.
pub(crate) struct Attend<'a> {
    pub layer: usize,
    /// The step extends slots first..first + batch.
    pub first: usize,
    pub heads: usize,
    pub scale: f32,
    pub softcap: Option<f32>,
    pub window: Option<usize>,
    /// Rotary tables per (row, new position): rot_dim / 2 cosines and sines.
    pub cos: &'a [f32],
    pub sin: &'a [f32],
    pub rot_dim: usize,
}

impl KvCache {
    pub fn new(model: &crate::Model, slots: usize, capacity: usize) -> Result<Self> {
        let c = &model.config;
        let size = slots * c.num_kv_heads * capacity * c.head_dim;
        Ok(KvCache {
            k: (0..c.num_layers).map(|_| vec![0f32; size]).collect(),
            v: (0..c.num_layers).map(|_| vec![0f32; size]).collect(),
            lens: vec![0; slots],
            capacity,
            kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
        })
    }

    pub fn slots(&self) -> usize {
        self.lens.len()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Positions filled in `slot`.
    pub fn len(&self, slot: usize) -> usize {
        self.lens[slot]
    }

    /// Forget `slot`'s sequence.
    pub fn clear(&mut self, slot: usize) {
        self.lens[slot] = 0;
    }

    /// Make `dst` a copy of `src`'s sequence: N samples share one prefill.
    pub fn copy_slot(&mut self, src: usize, dst: usize) -> Result<()> {
        let len = self.lens[src];
        if src != dst && len > 0 {
            let (cap, hd) = (self.capacity, self.head_dim);
            for buf in self.k.iter_mut().chain(self.v.iter_mut()) {
                for h in 0..self.kv_heads {
                    let at = |slot: usize| ((slot * self.kv_heads + h) * cap) * hd;
                    buf.copy_within(at(src)..at(src) + len * hd, at(dst));
                }
            }
        }
        self.lens[dst] = len;
        Ok(())
    }

    /// Keep only the first `len` positions of `slot`: a copy of a slot that
    /// sampled further becomes the bare prompt again.
    pub fn truncate(&mut self, slot: usize, len: usize) {
        self.lens[slot] = self.lens[slot].min(len);
    }

    pub(crate) fn reserve(&self, slots: std::ops::Range<usize>, more: usize) -> Result<()> {
        if slots.end > self.slots() {
            bail!("the cache has {} slots, slot {} was asked for", self.slots(), slots.end - 1);
        }
        for s in slots {
            if self.lens[s] + more > self.capacity {
                bail!("slot {s} would hold {} positions, more than the cache capacity {}", self.lens[s] + more, self.capacity);
            }
        }
        Ok(())
    }

    pub(crate) fn lens(&self, slots: std::ops::Range<usize>) -> &[usize] {
        &self.lens[slots]
    }

    pub(crate) fn advance(&mut self, slots: std::ops::Range<usize>, by: usize) {
        for len in &mut self.lens[slots] {
            *len += by;
        }
    }

    /// One layer's attention for `t` new positions of each of `b` rows. q is
    /// (b, t, heads, head_dim), k and v (b, t, kv_heads, head_dim), all
    /// before rotation; the rotated k and v are written at each row's
    /// length (which `advance` moves on after the last layer). Query i of a
    /// row at length L sits at position p = L + i and sees key positions j
    /// <= p (and p - j < window on sliding layers). Returns (b, t, heads * head_dim).
    pub(crate) fn attend(&mut self, a: &Attend, b: usize, t: usize, q: &[f32], k: &[f32], v: &[f32]) -> Vec<f32> {
        let (nkv, hd, cap) = (self.kv_heads, self.head_dim, self.capacity);
        let (nh, half) = (a.heads, a.rot_dim / 2);
        let rotate = |x: &[f32], row: usize, out: &mut [f32]| {
            let (cos, sin) = (&a.cos[row * half..(row + 1) * half], &a.sin[row * half..(row + 1) * half]);
            for d in 0..half {
                let (x1, x2) = (x[d], x[d + half]);
                out[d] = x1 * cos[d] - x2 * sin[d];
                out[d + half] = x2 * cos[d] + x1 * sin[d];
            }
            out[a.rot_dim..].copy_from_slice(&x[a.rot_dim..]);
        };
        for r in 0..b {
            let (slot, len) = (a.first + r, self.lens[a.first + r]);
            for i in 0..t {
                for h in 0..nkv {
                    let src = ((r * t + i) * nkv + h) * hd;
                    let dst = ((slot * nkv + h) * cap + len + i) * hd;
                    rotate(&k[src..src + hd], r * t + i, &mut self.k[a.layer][dst..dst + hd]);
                    self.v[a.layer][dst..dst + hd].copy_from_slice(&v[src..src + hd]);
                }
            }
        }
        let mut q_rot = vec![0f32; q.len()];
        for (row_head, (x, out)) in q.chunks_exact(hd).zip(q_rot.chunks_exact_mut(hd)).enumerate() {
            rotate(x, row_head / nh, out);
        }

        let mut out = vec![0f32; b * t * nh * hd];
        let out_ptr = SharedMut(out.as_mut_ptr());
        let (keys, values, lens) = (&self.k[a.layer], &self.v[a.layer], &self.lens);
        // A task: one row, one kv head, up to 16 queries (prefill has many).
        const QUERIES: usize = 16;
        let query_chunks = t.div_ceil(QUERIES);
        let groups = nh / nkv;
        Pool::global().run(b * nkv * query_chunks, &|task| {
            let (r, h, c) = (task / (nkv * query_chunks), task / query_chunks % nkv, task % query_chunks);
            let (slot, len) = (a.first + r, lens[a.first + r]);
            let base = (slot * nkv + h) * cap * hd;
            let mut scores = Vec::with_capacity(len + t);
            for i in c * QUERIES..((c + 1) * QUERIES).min(t) {
                let p = len + i;
                let start = a.window.map_or(0, |w| (p + 1).saturating_sub(w));
                for g in 0..groups {
                    let qh = h * groups + g;
                    let at = ((r * t + i) * nh + qh) * hd;
                    let query = &q_rot[at..at + hd];
                    scores.clear();
                    scores.extend((start..=p).map(|j| {
                        let s = dot(query, &keys[base + j * hd..base + (j + 1) * hd]) * a.scale;
                        a.softcap.map_or(s, |cap| (s / cap).tanh() * cap)
                    }));
                    let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
                    let mut total = 0f32;
                    for s in scores.iter_mut() {
                        *s = (*s - max).exp();
                        total += *s;
                    }
                    let mut acc = vec![0f32; hd];
                    for (s, j) in scores.iter().zip(start..=p) {
                        let weight = s / total;
                        for (o, &x) in acc.iter_mut().zip(&values[base + j * hd..base + (j + 1) * hd]) {
                            *o += weight * x;
                        }
                    }
                    // SAFETY: (row, query, head) is written by this task only,
                    // and `out` outlives the pool's job.
                    unsafe { std::ptr::copy_nonoverlapping(acc.as_ptr(), out_ptr.add(at), hd) };
                }
            }
        });
        out
    }
}

/// Eight partial sums, so that the compiler vectorises the loop.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}
