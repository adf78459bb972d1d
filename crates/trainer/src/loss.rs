//! The preference objectives of docs/method.md, written as the paper writes
//! them. For each example, policy log-probs log pi_theta(y|x) summed over
//! response tokens, their token counts |y|, and the frozen reference's
//! log pi_ref(y|x); h(y) = log pi_theta(y|x) - log pi_ref(y|x) and the
//! implicit reward r(y) = beta * h(y).
//!
//!   WRPO:  L = -log sig( alpha * r(y_ws) + (1 - alpha) * r(y_wt) - r(y_l) )
//!   DPO:   L = -log sig( r(y_w) - r(y_l) )
//!   SimPO: L = -log sig( beta/|y_w| log pi(y_w) - beta/|y_l| log pi(y_l) - gamma )
//!   IPO:   L = ( h(y_w) - h(y_l) - 1/(2 beta) )^2      (tau = beta)
//!   WRPO forms of SimPO and IPO mix the chosen terms as WRPO does;
//!   sigmoid-mix: the mean of DPO on (y_ws, y_l) and on (y_wt, y_l).
//! With label smoothing eps, -log sig(z) becomes
//! -(1 - eps) log sig(z) - eps log sig(-z).

use candle_core::{backend::BackendStorage, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use num_traits::Float;
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LossKind {
    /// The paper's: y_l against y_ws and y_wt, whose rewards alpha mixes.
    Wrpo,
    /// One chosen response (--dpo-chosen) against y_l.
    Dpo,
    /// Length-normalised log-probs, no reference, a target margin gamma.
    Simpo,
    /// The squared loss, tau = beta.
    Ipo,
    /// SimPO with WRPO's alpha mix of the chosen responses.
    WrpoSimpo,
    /// IPO with WRPO's alpha mix of the chosen responses.
    WrpoIpo,
    /// The mean of DPO on (y_ws, y_l) and on (y_wt, y_l).
    SigmoidMix,
}

impl LossKind {
    /// beta when the user gives none, from each method's source: the WRPO
    /// recipe's 0.01 for WRPO, its DPO baseline and the sigmoid mix (so that
    /// they differ in the objective only); SimPO's 2.0 (its repository's
    /// configs; the paper sweeps 2.0-10); 0.1 as tau for IPO (TRL's default
    /// for its IPO loss; the IPO paper fixes none).
    pub fn default_beta(self) -> f64 {
        match self {
            LossKind::Wrpo | LossKind::Dpo | LossKind::SigmoidMix => 0.01,
            LossKind::Simpo | LossKind::WrpoSimpo => 2.0,
            LossKind::Ipo | LossKind::WrpoIpo => 0.1,
        }
    }
}

/// SimPO's gamma / beta when the user gives no gamma: 0.5, its repository's configs.
pub const SIMPO_GAMMA_BETA_RATIO: f64 = 0.5;

/// Which response a pairwise loss (DPO, SimPO, IPO) prefers to y_l.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Chosen {
    /// y_ws, the best source response.
    Source,
    /// y_wt, the best Target-SFT response.
    Target,
}

/// The three responses of an example.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Y {
    Ws,
    Wt,
    L,
}

impl Y {
    /// The three, in the order of (y_ws, y_wt, y_l) triples.
    pub const ALL: [Y; 3] = [Y::Ws, Y::Wt, Y::L];

    /// Position in (y_ws, y_wt, y_l) triples such as the reference log-probs.
    pub fn index(self) -> usize {
        match self {
            Y::Ws => 0,
            Y::Wt => 1,
            Y::L => 2,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Objective {
    pub loss: LossKind,
    pub chosen: Chosen,
    pub beta: f64,
    pub label_smoothing: f64,
    /// SimPO's target margin.
    pub gamma: f64,
}

/// Per-response tensors (B,) of an example batch.
pub struct PerY<T> {
    pub y_ws: Option<T>,
    pub y_wt: Option<T>,
    pub y_l: T,
}

impl<T> PerY<T> {
    /// The value of `y`: none for a y_ws or y_wt the objective does not read.
    pub fn get(&self, y: Y) -> Option<&T> {
        match y {
            Y::Ws => self.y_ws.as_ref(),
            Y::Wt => self.y_wt.as_ref(),
            Y::L => Some(&self.y_l),
        }
    }
}

/// What a micro-batch's forward gives the loss.
pub struct Inputs {
    pub policy: PerY<Tensor>,
    pub reference: Option<PerY<Tensor>>,
    /// Response tokens |y|, as a tensor of the policy's dtype.
    pub lengths: PerY<Tensor>,
}

/// Per-example losses (B,) and the implicit rewards behind them (beta-scaled;
/// SimPO's length-normalised ones for its forms).
pub struct Output {
    pub losses: Tensor,
    pub rewards: PerY<Tensor>,
}

/// log sig(z), element by element, with the exact gradient sig(-z).
///
/// Written out of candle's primitives as min(z, 0) - log(1 + exp(-|z|)), its
/// gradient at z = 0 is 1 instead of 1/2 (candle gives |z| the slope +1 and
/// splits min's tie), and z = 0 is exactly where every preference run starts:
/// the policy equals its reference at step 0, so the first steps' gradients
/// came out twice too large.
pub fn log_sigmoid(z: &Tensor) -> Result<Tensor> {
    z.contiguous()?.apply_op1(LogSigmoid)
}

struct LogSigmoid;

impl CustomOp1 for LogSigmoid {
    fn name(&self) -> &'static str {
        "log-sigmoid"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        fn map<T: Float>(z: &[T]) -> Vec<T> {
            z.iter().map(|&z| z.min(T::zero()) - (-z.abs()).exp().ln_1p()).collect()
        }
        let Some((start, end)) = l.contiguous_offsets() else { candle_core::bail!("log-sigmoid: a non-contiguous input") };
        let out = match s {
            CpuStorage::F32(z) => CpuStorage::F32(map(&z[start..end])),
            CpuStorage::F64(z) => CpuStorage::F64(map(&z[start..end])),
            other => candle_core::bail!("log-sigmoid: {:?} values; the loss runs in f32 or f64", other.dtype()),
        };
        Ok((out, l.shape().clone()))
    }

    /// d log sig(z) / dz = sig(-z) = 1 / (1 + exp(z)): 0 for large z, 1 for very negative z.
    fn bwd(&self, z: &Tensor, _: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some((grad / (z.exp()? + 1.0)?)?))
    }
}

impl Objective {
    pub fn needs_reference(&self) -> bool {
        !matches!(self.loss, LossKind::Simpo | LossKind::WrpoSimpo)
    }

    /// Does alpha weigh y_ws against y_wt? (Not for the pairwise DPO, SimPO, IPO.)
    pub fn uses_alpha(&self) -> bool {
        !matches!(self.loss, LossKind::Dpo | LossKind::Simpo | LossKind::Ipo)
    }

    /// The weight of y_ws on the chosen side, y_wt's being 1 minus it: alpha
    /// for the WRPO forms; 1 or 0 for the pairwise DPO, SimPO and IPO (by
    /// `chosen`: their one chosen response); 1/2 for the sigmoid mix, the
    /// mean of its DPO terms on y_ws and on y_wt. The loss mixes by it, and
    /// the metrics' `rewards_chosen` (and the accuracy against y_l) too.
    pub fn chosen_weight(&self, alpha: f64) -> f64 {
        match self.loss {
            LossKind::Wrpo | LossKind::WrpoSimpo | LossKind::WrpoIpo => alpha,
            LossKind::Dpo | LossKind::Simpo | LossKind::Ipo => f64::from(self.chosen == Chosen::Source),
            LossKind::SigmoidMix => 0.5,
        }
    }

    /// The responses this objective reads: pairwise forms skip the unchosen one.
    pub fn responses(&self) -> Vec<Y> {
        match (self.loss, self.chosen) {
            (LossKind::Dpo | LossKind::Simpo | LossKind::Ipo, Chosen::Source) => vec![Y::Ws, Y::L],
            (LossKind::Dpo | LossKind::Simpo | LossKind::Ipo, Chosen::Target) => vec![Y::Wt, Y::L],
            _ => vec![Y::Ws, Y::Wt, Y::L],
        }
    }

    /// -(1 - eps) log sig(z) - eps log sig(-z).
    fn sigmoid_loss(&self, z: &Tensor) -> Result<Tensor> {
        let eps = self.label_smoothing;
        let pos = (log_sigmoid(z)? * -(1.0 - eps))?;
        if eps == 0.0 {
            return Ok(pos);
        }
        pos - (log_sigmoid(&z.neg()?)? * eps)?
    }

    pub fn forward(&self, x: &Inputs, alpha: f64) -> Result<Output> {
        let beta = self.beta;
        let pick = |p: &PerY<Tensor>, y: Y| -> Tensor { p.get(y).unwrap_or_else(|| panic!("{y:?} computed for this objective")).clone() };
        // h(y) for the reference-based forms, log pi(y) / |y| for SimPO's.
        let h = |y: Y| -> Result<Tensor> {
            match &x.reference {
                Some(r) if self.needs_reference() => pick(&x.policy, y) - pick(r, y),
                _ => pick(&x.policy, y) / pick(&x.lengths, y),
            }
        };
        let ys = self.responses();
        let reward = |y: Y| ys.contains(&y).then(|| h(y).and_then(|h| h * beta)).transpose();
        let r = PerY { y_ws: reward(Y::Ws)?, y_wt: reward(Y::Wt)?, y_l: reward(Y::L)?.expect("y_l always") };
        // y_ws's term weighted w and y_wt's 1 - w, of those the objective reads.
        let w = self.chosen_weight(alpha);
        let mix = |ws: Option<&Tensor>, wt: Option<&Tensor>| -> Result<Tensor> {
            match (ws.map(|a| a * w).transpose()?, wt.map(|b| b * (1.0 - w)).transpose()?) {
                (Some(a), Some(b)) => a + b,
                (a, b) => Ok(a.or(b).expect("a chosen response")),
            }
        };
        let chosen = || mix(r.y_ws.as_ref(), r.y_wt.as_ref());
        let h_margin = |c: &Tensor| -> Result<Tensor> { (c - (&r.y_l / beta)?)? - 1.0 / (2.0 * beta) };
        let losses = match self.loss {
            LossKind::Wrpo | LossKind::Dpo => self.sigmoid_loss(&(chosen()? - &r.y_l)?)?,
            LossKind::Simpo | LossKind::WrpoSimpo => self.sigmoid_loss(&((chosen()? - &r.y_l)? - self.gamma)?)?,
            LossKind::Ipo | LossKind::WrpoIpo => h_margin(&(chosen()? / beta)?)?.sqr()?,
            LossKind::SigmoidMix => {
                let dpo = |y: Y| self.sigmoid_loss(&(pick(&r, y) - &r.y_l)?);
                mix(Some(&dpo(Y::Ws)?), Some(&dpo(Y::Wt)?))?
            }
        };
        Ok(Output { losses, rewards: r })
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor, Var};

    /// Values and gradients against log sig(z) and sig(-z) evaluated in f64,
    /// at z = 0 (where every run starts) and far out on both sides, where a
    /// naive exp overflows.
    #[test]
    fn log_sigmoid_and_its_gradient_are_exact_at_zero_and_in_the_tails() {
        let zs: [f64; 10] = [0.0, -0.0, 1e-7, -1e-7, 0.5, -2.0, 30.0, -30.0, 800.0, -800.0];
        let f64s = |t: &Tensor| t.to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap();
        for dtype in [DType::F64, DType::F32] {
            let z = Var::from_tensor(&Tensor::new(&zs[..], &Device::Cpu).unwrap().to_dtype(dtype).unwrap()).unwrap();
            let y = super::log_sigmoid(&z).unwrap();
            let g = f64s(y.sum_all().unwrap().backward().unwrap().get(&z).unwrap());
            for (i, (&z, y)) in zs.iter().zip(f64s(&y)).enumerate() {
                let want_y = if z >= 0.0 { -(-z).exp().ln_1p() } else { z - z.exp().ln_1p() };
                let want_g = 1.0 / (1.0 + z.exp());
                assert!((y - want_y).abs() <= 1e-6 * want_y.abs().max(1.0), "{dtype:?}: log sig({z}) = {y}, want {want_y}");
                assert!((g[i] - want_g).abs() <= 1e-7, "{dtype:?}: d log sig / dz at {z} = {}, want {want_g}", g[i]);
            }
        }
    }
}
