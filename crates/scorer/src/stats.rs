//! The statistics of every comparison the scorer makes (the report, the
//! judge's head-to-head, the dose-response): means with 95% percentile-
//! bootstrap intervals over prompts, the paired sign-flip test, and a paired
//! comparison's row.

use std::cmp::Ordering;

use wrpo_common::eval::PairedComparison;
use wrpo_llm::Rng;

/// The mean of `values` and its 95% percentile-bootstrap interval.
pub fn bootstrap(values: &[f64], resamples: usize, seed: u64) -> (f64, f64, f64) {
    let n = values.len();
    let mean = values.iter().sum::<f64>() / n.max(1) as f64;
    if n < 2 {
        return (mean, mean, mean);
    }
    let mut rng = Rng::new(seed);
    let means: Vec<f64> = (0..resamples).map(|_| resample(&mut rng, n).map(|i| values[i]).sum::<f64>() / n as f64).collect();
    let (low, high) = interval_95(means);
    (mean, low, high)
}

/// One bootstrap resample of `n` items: `n` indices into them, drawn with replacement.
pub(crate) fn resample(rng: &mut Rng, n: usize) -> impl Iterator<Item = usize> + '_ {
    (0..n).map(move |_| (rng.next_u64() % n as u64) as usize)
}

/// The 2.5% and 97.5% points of bootstrap `draws` (at least one): a 95% percentile interval.
pub(crate) fn interval_95(mut draws: Vec<f64>) -> (f64, f64) {
    draws.sort_by(f64::total_cmp);
    let last = draws.len() - 1;
    let at = |q: f64| draws[((q * last as f64).round() as usize).min(last)];
    (at(0.025), at(0.975))
}

/// Two-sided p-value of the paired sign-flip permutation test of "the mean
/// per-prompt difference is 0": the share of sign patterns (each prompt's
/// difference kept or negated) whose |sum| reaches the observed one. Every
/// pattern when there are at most 16 prompts; else `resamples` random ones,
/// counted with the observed pattern so that p is never 0.
pub fn sign_flip_p_value(d: &[f64], resamples: usize, seed: u64) -> f64 {
    let n = d.len();
    let observed = d.iter().sum::<f64>().abs();
    // Rounding must not make the observed pattern (or its mirror) less extreme than itself.
    let reaches = |sum: f64| sum.abs() >= observed - 1e-9 * observed.max(1.0);
    if n <= 16 {
        let patterns = 1u32 << n;
        let hits = (0..patterns).filter(|bits| reaches(d.iter().enumerate().map(|(i, x)| if bits >> i & 1 == 1 { -x } else { *x }).sum())).count();
        return hits as f64 / patterns as f64;
    }
    let mut rng = Rng::new(seed);
    let hits = (0..resamples).filter(|_| reaches(d.iter().map(|x| if rng.next_u64() & 1 == 1 { -x } else { *x }).sum())).count();
    (1 + hits) as f64 / (1 + resamples) as f64
}

/// 1 where `a` is higher, 1/2 on a tie, 0 below.
pub(crate) fn win(a: f64, b: f64) -> f64 {
    match a.total_cmp(&b) {
        Ordering::Greater => 1.0,
        Ordering::Equal => 0.5,
        Ordering::Less => 0.0,
    }
}

/// `model` against `against` on one measure, from each prompt's (model's, against's) values.
pub fn paired_row(model: &str, against: &str, measure: &str, pairs: &[(f64, f64)], seed: u64) -> PairedComparison {
    let diffs: Vec<f64> = pairs.iter().map(|(x, y)| x - y).collect();
    let wins: Vec<f64> = pairs.iter().map(|&(x, y)| win(x, y)).collect();
    let ((mean_diff, diff_low, diff_high), (win_rate, win_low, win_high)) = (bootstrap(&diffs, 2000, seed), bootstrap(&wins, 2000, seed));
    PairedComparison {
        model: model.into(),
        against: against.into(),
        measure: measure.into(),
        prompts: pairs.len() as u32,
        mean_diff,
        diff_low,
        diff_high,
        win_rate,
        win_low,
        win_high,
        p_value: sign_flip_p_value(&diffs, 20_000, seed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Exact enumeration on a small case, and the Monte Carlo estimate
    /// against a brute-force enumeration of all 2^18 patterns on a larger one.
    #[test]
    fn sign_flip_p_values_match_exact_enumeration() {
        // (1, 2, 3, -1): |sum| 5 is reached by +-(1+2+3+1) and the two patterns flipping a single 1.
        assert_eq!(sign_flip_p_value(&[1.0, 2.0, 3.0, -1.0], 0, 1), 6.0 / 16.0);
        assert_eq!(sign_flip_p_value(&[1.0; 10], 0, 1), 2.0 / 1024.0);
        let d: Vec<f64> = (0..18).map(|i| ((i * 7 % 11) as f64 - 4.0) / 10.0).collect();
        let observed = d.iter().sum::<f64>().abs();
        let exact = (0..1u32 << 18)
            .filter(|bits| d.iter().enumerate().map(|(i, x)| if bits >> i & 1 == 1 { -x } else { *x }).sum::<f64>().abs() >= observed - 1e-9)
            .count() as f64
            / (1u32 << 18) as f64;
        let estimate = sign_flip_p_value(&d, 20_000, 3);
        assert!((estimate - exact).abs() < 0.01, "Monte Carlo {estimate} vs exact {exact}");
        assert!(exact > 0.01 && exact < 0.99, "a case that tests something: {exact}");
    }

    #[test]
    fn bootstrap_intervals_bracket_the_mean_and_shrink_with_data() {
        let few: Vec<f64> = (0..10).map(|i| (i % 2) as f64).collect();
        let many: Vec<f64> = (0..1000).map(|i| (i % 2) as f64).collect();
        let (m1, l1, h1) = bootstrap(&few, 2000, 1);
        let (m2, l2, h2) = bootstrap(&many, 2000, 1);
        assert!(l1 < m1 && m1 < h1 && (m1 - 0.5).abs() < 1e-12);
        assert!(h2 - l2 < (h1 - l1) / 3.0, "{l2}..{h2} vs {l1}..{h1}");
        assert_eq!(bootstrap(&few, 2000, 1), (m1, l1, h1), "seeded");
        assert!((m2 - 0.5).abs() < 1e-12);
    }
}
