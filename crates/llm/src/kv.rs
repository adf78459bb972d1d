//! The KV cache of inference and the attention that reads it.
//!
//! Keys and values live in plain buffers rather than candle tensors: a step
//! writes each row's new positions in place and attends over exactly the
//! positions each row has, with no mask tensor, no per-row tensor copies and
//! no small-matmul dispatch, which cost more than the arithmetic when
//! decoding one token per row. Training never comes here; it keeps the
//! differentiable path in `model.rs`.

use anyhow::{bail, Result};

use crate::{
    pool::{Pool, SharedMut},
    vmath,
};

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
    /// The step's rows, packed one after another: (cache slot, new positions).
    pub rows: &'a [(usize, usize)],
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

    /// Check that each (slot, new positions) row fits, and that no slot
    /// appears twice in one step.
    pub(crate) fn reserve(&self, rows: &[(usize, usize)]) -> Result<()> {
        for (r, &(slot, more)) in rows.iter().enumerate() {
            if slot >= self.slots() {
                bail!("the cache has {} slots, slot {slot} was asked for", self.slots());
            }
            if rows[..r].iter().any(|&(s, _)| s == slot) {
                bail!("slot {slot} is extended twice in one step");
            }
            if self.lens[slot] + more > self.capacity {
                bail!("slot {slot} would hold {} positions, more than the cache capacity {}", self.lens[slot] + more, self.capacity);
            }
        }
        Ok(())
    }

    pub(crate) fn advance(&mut self, rows: &[(usize, usize)]) {
        for &(slot, by) in rows {
            self.lens[slot] += by;
        }
    }

    /// One layer's attention for the rows of `a.rows`, row r bringing t_r new
    /// positions to its slot; their tokens are packed one row after another,
    /// q as (tokens, heads, head_dim), k and v as (tokens, kv_heads,
    /// head_dim), all before rotation. The rotated k and v are written at
    /// each slot's length (which `advance` moves on after the last layer).
    /// Query i of a row whose slot holds L positions sits at position p = L + i
    /// and sees key positions j <= p (and p - j < window on sliding layers).
    /// Returns (tokens, heads * head_dim).
    pub(crate) fn attend(&mut self, a: &Attend, q: &[f32], k: &[f32], v: &[f32]) -> Vec<f32> {
        let (nkv, hd, cap) = (self.kv_heads, self.head_dim, self.capacity);
        let (nh, half) = (a.heads, a.rot_dim / 2);
        let rotate = |x: &[f32], token: usize, out: &mut [f32]| {
            let (cos, sin) = (&a.cos[token * half..(token + 1) * half], &a.sin[token * half..(token + 1) * half]);
            crate::rope::rotate(x, cos, sin, a.rot_dim, false, out);
        };
        // Where each row's tokens start in the packed layout.
        let starts: Vec<usize> = a.rows.iter().scan(0, |at, &(_, t)| Some(std::mem::replace(at, *at + t))).collect();
        for (&(slot, t), &start) in a.rows.iter().zip(&starts) {
            let len = self.lens[slot];
            for i in 0..t {
                for h in 0..nkv {
                    let src = ((start + i) * nkv + h) * hd;
                    let dst = ((slot * nkv + h) * cap + len + i) * hd;
                    rotate(&k[src..src + hd], start + i, &mut self.k[a.layer][dst..dst + hd]);
                    self.v[a.layer][dst..dst + hd].copy_from_slice(&v[src..src + hd]);
                }
            }
        }
        let mut q_rot = vec![0f32; q.len()];
        for (token_head, (x, out)) in q.chunks_exact(hd).zip(q_rot.chunks_exact_mut(hd)).enumerate() {
            rotate(x, token_head / nh, out);
        }

        let mut out = vec![0f32; q.len()];
        let out_ptr = SharedMut(out.as_mut_ptr());
        let (keys, values, lens) = (&self.k[a.layer], &self.v[a.layer], &self.lens);
        // A task: one row, one kv head, up to 16 queries (prefill has many).
        const QUERIES: usize = 16;
        let tasks: Vec<(usize, usize, usize)> =
            (0..a.rows.len()).flat_map(|r| (0..nkv).flat_map(move |h| (0..a.rows[r].1.div_ceil(QUERIES)).map(move |c| (r, h, c)))).collect();
        let groups = nh / nkv;
        Pool::global().run(tasks.len(), &|task| {
            let (r, h, c) = tasks[task];
            let ((slot, t), start) = (a.rows[r], starts[r]);
            let len = lens[slot];
            let base = (slot * nkv + h) * cap * hd;
            let mut scores = Vec::with_capacity(len + t);
            for i in c * QUERIES..((c + 1) * QUERIES).min(t) {
                let p = len + i;
                let first = a.window.map_or(0, |w| (p + 1).saturating_sub(w));
                for g in 0..groups {
                    let qh = h * groups + g;
                    let at = ((start + i) * nh + qh) * hd;
                    let query = &q_rot[at..at + hd];
                    scores.clear();
                    scores.extend((first..=p).map(|j| {
                        let s = dot(query, &keys[base + j * hd..base + (j + 1) * hd]) * a.scale;
                        a.softcap.map_or(s, |cap| (s / cap).tanh() * cap)
                    }));
                    let max = vmath::max(&scores);
                    vmath::exp_in_place(&mut scores, max, 1.0, 1.0);
                    let total = vmath::sum(&scores);
                    let mut acc = vec![0f32; hd];
                    for (s, j) in scores.iter().zip(first..=p) {
                        let weight = s / total;
                        for (o, &x) in acc.iter_mut().zip(&values[base + j * hd..base + (j + 1) * hd]) {
                            *o += weight * x;
                        }
                    }
                    // SAFETY: (token, head) is written by this task only,
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
