//! Next-token sampling: temperature (0 = greedy), top-k, top-p and min-p,
//! with a small seeded generator of our own so that a seed gives the same
//! stream whatever crate versions are in the lock file.

use serde::{Deserialize, Serialize};

use crate::vmath;

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    /// 0 picks the most likely token.
    pub temperature: f32,
    /// Keep the most likely tokens whose probabilities sum to top_p (1 = off).
    pub top_p: f32,
    /// Keep the k most likely tokens (0 = off).
    pub top_k: usize,
    /// Drop tokens less likely than min_p times the most likely one (0 = off).
    pub min_p: f32,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams { temperature: 1.0, top_p: 1.0, top_k: 0, min_p: 0.0 }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        SamplingParams { temperature: 0.0, ..Self::default() }
    }

    pub fn check(&self) -> Result<(), String> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(format!("temperature must be >= 0, got {}", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top-p must be in (0, 1], got {}", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(format!("min-p must be in [0, 1], got {}", self.min_p));
        }
        Ok(())
    }
}

/// xoshiro256** seeded through SplitMix64.
#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut split_mix = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Rng { s: [split_mix(), split_mix(), split_mix(), split_mix()] }
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The index of the largest logit; the first one on ties, as torch.argmax.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Draw the next token from `logits` (one row of the vocabulary).
pub fn sample(logits: &[f32], params: &SamplingParams, rng: &mut Rng) -> u32 {
    if params.temperature == 0.0 {
        return argmax(logits);
    }
    let inv_t = 1.0 / params.temperature;
    let max = logits[argmax(logits) as usize];
    // Unnormalised probabilities relative to the top token (which has 1),
    // once per row and vectorised: a 262k vocabulary's e^x in f64, three
    // times over, was a fifth of Gemma-3's sampling time.
    let mut weights = logits.to_vec();
    vmath::exp_in_place(&mut weights, max, inv_t, 1.0);
    let weight = |i: usize| weights[i] as f64;
    let total = vmath::sum(&weights) as f64;

    // Highest weight first, ties by token id: one total order, so the same
    // logits always give the same candidates.
    let order = |a: &(u32, f64), b: &(u32, f64)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    let (mut candidates, mass) = if params.top_k > 0 && params.top_k < logits.len() {
        // top-k first; top-p then counts within the k kept (as transformers
        // and llama.cpp renormalise after top-k).
        let mut all: Vec<(u32, f64)> = (0..logits.len()).map(|i| (i as u32, weight(i))).collect();
        all.select_nth_unstable_by(params.top_k - 1, order);
        all.truncate(params.top_k);
        let mass = all.iter().map(|c| c.1).sum();
        (all, mass)
    } else {
        // Sorting a 262k vocabulary per token is slow, and only the head
        // matters: take the tokens above a threshold whose mass already
        // covers top_p (the nucleus then lies inside them), lowering the
        // threshold until it does.
        // Without top-p every token above min-p takes part.
        let min_p = params.min_p as f64;
        let mut threshold = if params.top_p < 1.0 { min_p.max(1e-4) } else { min_p };
        loop {
            let head: Vec<(u32, f64)> = (0..logits.len()).map(|i| (i as u32, weight(i))).filter(|&(_, w)| w >= threshold).collect();
            let covered = head.iter().map(|c| c.1).sum::<f64>() / total;
            if covered >= params.top_p as f64 || threshold <= min_p {
                break (head, total);
            }
            threshold = if threshold < 1e-30 { min_p } else { (threshold * 1e-4).max(min_p) };
        }
    };
    // min-p: weights are relative to the top token's.
    candidates.retain(|c| c.1 >= params.min_p as f64);
    if params.top_p < 1.0 {
        candidates.sort_by(order);
        let mut cumulative = 0.0;
        let keep = candidates
            .iter()
            .position(|c| {
                cumulative += c.1 / mass;
                cumulative >= params.top_p as f64
            })
            .map_or(candidates.len(), |i| i + 1);
        candidates.truncate(keep);
    }
    let kept: f64 = candidates.iter().map(|c| c.1).sum();
    let mut u = rng.next_f64() * kept;
    for &(token, w) in &candidates {
        if u < w {
            return token;
        }
        u -= w;
    }
    candidates.last().map_or(0, |c| c.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frequencies(logits: &[f32], params: SamplingParams, draws: usize) -> Vec<f64> {
        let mut rng = Rng::new(7);
        let mut counts = vec![0usize; logits.len()];
        for _ in 0..draws {
            counts[sample(logits, &params, &mut rng) as usize] += 1;
        }
        counts.iter().map(|&c| c as f64 / draws as f64).collect()
    }

    // probabilities 0.5, 0.25, 0.125, 0.0625, 0.0625
    const LOGITS: [f32; 5] = [3.0, 2.306_853, 1.613_706, 0.920_558_9, 0.920_558_9];

    #[test]
    fn plain_sampling_follows_the_softmax() {
        let f = frequencies(&LOGITS, SamplingParams::default(), 200_000);
        for (got, want) in f.iter().zip([0.5, 0.25, 0.125, 0.0625, 0.0625]) {
            assert!((got - want).abs() < 0.005, "{f:?}");
        }
    }

    #[test]
    fn filters_cut_the_tail() {
        let top_k = frequencies(&LOGITS, SamplingParams { top_k: 2, ..Default::default() }, 60_000);
        assert!(top_k[2..].iter().all(|&p| p == 0.0) && (top_k[0] - 2.0 / 3.0).abs() < 0.01, "{top_k:?}");
        // 0.5 + 0.25 reaches 0.7: two tokens.
        let top_p = frequencies(&LOGITS, SamplingParams { top_p: 0.7, ..Default::default() }, 60_000);
        assert!(top_p[2..].iter().all(|&p| p == 0.0), "{top_p:?}");
        // top-k 2 keeps 0.5 and 0.25; within them top-p 0.6 is reached by
        // the first alone (0.5 / 0.75 = 0.67).
        let both = frequencies(&LOGITS, SamplingParams { top_k: 2, top_p: 0.6, ..Default::default() }, 20_000);
        assert!(both[0] == 1.0, "{both:?}");
        // min_p 0.2: 0.125 / 0.5 = 0.25 stays, 0.0625 / 0.5 goes.
        let min_p = frequencies(&LOGITS, SamplingParams { min_p: 0.2, ..Default::default() }, 60_000);
        assert!(min_p[2] > 0.1 && min_p[3..].iter().all(|&p| p == 0.0), "{min_p:?}");
    }

    #[test]
    fn temperature_zero_is_argmax_and_low_temperature_sharpens() {
        let mut rng = Rng::new(1);
        assert_eq!(sample(&[0.1, 2.0, 2.0, -1.0], &SamplingParams::greedy(), &mut rng), 1);
        let cold = frequencies(&LOGITS, SamplingParams { temperature: 0.25, ..Default::default() }, 20_000);
        assert!(cold[0] > 0.9, "{cold:?}");
    }

    #[test]
    fn the_nucleus_is_exact_on_a_long_flat_tail() {
        // One strong token and a large flat tail holding most of the mass:
        // the threshold search must go down into the tail.
        let mut logits = vec![0f32; 20_000];
        logits[0] = 10.0;
        let f = frequencies(&logits, SamplingParams { top_p: 0.95, ..Default::default() }, 2_000);
        let p0 = 1.0 / (1.0 + 19_999.0 * (-10f64).exp());
        assert!((f[0] - p0 / 0.95).abs() < 0.04, "{} vs {}", f[0], p0 / 0.95);
    }

    #[test]
    fn a_seed_gives_one_stream() {
        let a: Vec<u64> = {
            let mut r = Rng::new(42);
            (0..4).map(|_| r.next_u64()).collect()
        };
        let b: Vec<u64> = {
            let mut r = Rng::new(42);
            (0..4).map(|_| r.next_u64()).collect()
        };
        let c: Vec<u64> = {
            let mut r = Rng::new(43);
            (0..4).map(|_| r.next_u64()).collect()
        };
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
