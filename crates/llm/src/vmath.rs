//! e^x and the reductions of a softmax over f32 slices, written so that the
//! compiler vectorises them, and compiled for the CPU's widest vector
//! extension at run time (`pulp`'s dispatch: AVX-512, AVX2, else scalar).
//!
//! libm's `expf` is a call per element that nothing vectorises: the softmax
//! of the LM head's log-probs (Gemma-3's 262k logits per row, forward and
//! backward), attention's softmaxes and the gated activations spent a tenth
//! of a training step in it. f64 (the finite-difference checks) keeps std's.

use num_traits::Float;

/// Lanes of the reductions: one AVX-512 register of f32.
const LANES: usize = 16;

/// e^x in straight-line f32 code: x = n ln2 + r with |r| <= ln2 / 2 (ln2
/// split in two so that r is exact), e^r by Cephes' degree-7 polynomial,
/// 2^n from the exponent bits. Relative error below 2e-7 (the test checks
/// it against f64) up to 88.37; 0 below -87.3 (where expf turns
/// subnormal), e^88.37 up to 88.72 and inf above, NaN stays NaN.
#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const LOWEST: f32 = -87.336_54;
    let (underflow, overflow) = (x < LOWEST, x > 88.722_84);
    let x = x.clamp(LOWEST, 88.376_26);
    // n = round(x / ln2) by the 1.5 * 2^23 trick: plain adds, which vectorise
    // on any x86-64 (floor needs SSE4.1, else it is a libm call per element).
    const ROUND: f32 = 12_582_912.0;
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let e_r = p * r * r + r + 1.0;
    let e_x = e_r * f32::from_bits(((n as i32 + 127) << 23) as u32);
    if underflow {
        0.0
    } else if overflow {
        f32::INFINITY
    } else {
        e_x
    }
}

/// e^x and tanh x: from [`exp_f32`] for f32, std's for f64.
pub(crate) trait Exp: Float {
    fn exp_fast(self) -> Self;
    fn tanh_fast(self) -> Self;
}

impl Exp for f32 {
    #[inline(always)]
    fn exp_fast(self) -> f32 {
        exp_f32(self)
    }

    /// 1 - 2 / (e^2x + 1): within 3e-7 of tanh (absolute), ±1 at the ends.
    #[inline(always)]
    fn tanh_fast(self) -> f32 {
        1.0 - 2.0 / (exp_f32(2.0 * self) + 1.0)
    }
}

impl Exp for f64 {
    #[inline(always)]
    fn exp_fast(self) -> f64 {
        self.exp()
    }

    #[inline(always)]
    fn tanh_fast(self) -> f64 {
        self.tanh()
    }
}

/// `f`, compiled for the widest vector extension this CPU has. Only code
/// inlined into pulp's dispatched function gets its target features: the
/// closure must be `#[inline(always)]` and loop with `for` over slices,
/// whose iterators inline (a `collect` or `for_each` left out of line ran
/// on SSE2, partly scalar). The helpers below are written so.
#[inline(always)]
pub fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    pulp::Arch::new().dispatch(f)
}

/// `combine` over `map(x)` of every x in `xs`, from `init`: in LANES
/// independent lanes, which vectorise (a single running fold of floats does
/// not), then the lanes combined in order.
#[inline(always)]
fn reduce<X: Copy, T: Float>(xs: &[X], init: T, map: impl Fn(X) -> T, combine: impl Fn(T, T) -> T) -> T {
    vectorized(
        #[inline(always)]
        || {
            let mut lanes = [init; LANES];
            let chunks = xs.chunks_exact(LANES);
            let tail = chunks.remainder();
            for c in chunks {
                for (lane, &x) in lanes.iter_mut().zip(c) {
                    *lane = combine(*lane, map(x));
                }
            }
            let mut total = init;
            for &x in tail {
                total = combine(total, map(x));
            }
            for lane in lanes {
                total = combine(total, lane);
            }
            total
        },
    )
}

/// The largest of `xs` (-inf for none; NaN is passed over).
pub(crate) fn max<T: Float>(xs: &[T]) -> T {
    reduce(xs, T::neg_infinity(), |x| x, |m, x| if x > m { x } else { m })
}

/// Σ xs.
pub(crate) fn sum<T: Float>(xs: &[T]) -> T {
    reduce(xs, T::zero(), |x| x, |a, b| a + b)
}

/// Σ x² over `xs`, summed in f64: a gradient's squared norm. (The plain
/// fold of f64s it replaced ran one dependent add per value: 3.5% of a
/// Gemma-3 training step for 268M gradients.)
pub fn sum_squares(xs: &[f32]) -> f64 {
    reduce(xs, 0.0, |x| x as f64 * x as f64, |a, b| a + b)
}

/// Σ e^(x - shift) over `xs`.
pub(crate) fn sum_exp<T: Exp>(xs: &[T], shift: T) -> T {
    reduce(xs, T::zero(), |x| (x - shift).exp_fast(), |a, b| a + b)
}

/// x <- scale · e^((x - shift) · factor) for every x of `xs`: a softmax's
/// probabilities (factor and scale 1), at a temperature, or their multiple.
pub(crate) fn exp_in_place<T: Exp>(xs: &mut [T], shift: T, factor: T, scale: T) {
    vectorized(
        #[inline(always)]
        || {
            for x in xs {
                *x = scale * ((*x - shift) * factor).exp_fast();
            }
        },
    )
}

/// out[i] = f(a[i], b[i]). `f` is taken by reference and called as itself
/// (a call through `&F as Fn` stayed out of line, on SSE2).
#[inline(always)]
pub(crate) fn map2<T: Float, F: Fn(T, T) -> T>(out: &mut [T], a: &[T], b: &[T], f: &F) {
    vectorized(
        #[inline(always)]
        || {
            for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
                *o = f(a, b);
            }
        },
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn exp_is_within_two_tenths_of_a_millionth_of_f64s() {
        let mut worst = 0f64;
        for i in 0..=2_000_000 {
            let x = -87.0 + 175.0 * i as f64 / 2_000_000.0;
            let (got, want) = (super::exp_f32(x as f32) as f64, (x as f32 as f64).exp());
            worst = worst.max((got - want).abs() / want);
        }
        assert!(worst < 2e-7, "relative error {worst}");
        assert_eq!(super::exp_f32(-100.0), 0.0);
        assert_eq!(super::exp_f32(0.0), 1.0);
        assert!(super::exp_f32(f32::NAN).is_nan());
        assert!(super::exp_f32(100.0).is_infinite());
        use super::Exp;
        let tanh_err = (-2000..=2000).map(|i| i as f32 / 100.0).map(|x| (x.tanh_fast() as f64 - (x as f64).tanh()).abs()).fold(0.0, f64::max);
        assert!(tanh_err < 3e-7, "tanh differs by {tanh_err}");
    }

    #[test]
    fn reductions_equal_the_plain_folds() {
        let xs: Vec<f32> = (0..1000).map(|i| ((i * 7919) % 1000) as f32 / 100.0 - 5.0).collect();
        for n in [0, 1, 15, 16, 17, 1000] {
            let xs = &xs[..n];
            let want_max = xs.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            assert_eq!(super::max(xs), want_max);
            let want_total: f64 = xs.iter().map(|&x| x as f64).sum();
            assert!((super::sum(xs) as f64 - want_total).abs() <= 1e-4, "n = {n}");
            let want_squares: f64 = xs.iter().map(|&x| (x as f64).powi(2)).sum();
            assert!((super::sum_squares(xs) - want_squares).abs() <= 1e-9 * want_squares.max(1.0), "n = {n}");
            let want_sum: f64 = xs.iter().map(|&x| ((x - 1.0) as f64).exp()).sum();
            assert!((super::sum_exp(xs, 1.0) as f64 - want_sum).abs() <= 1e-6 * want_sum.max(1.0), "n = {n}");
        }
    }
}
