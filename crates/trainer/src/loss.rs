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
    Wrpo,
    Dpo,
    Simpo,
    Ipo,
    WrpoSimpo,
    WrpoIpo,
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
        let pick = |p: &PerY<Tensor>, y: Y| -> Tensor {
            match y {
                Y::Ws => p.y_ws.clone().expect("y_ws computed for this objective"),
                Y::Wt => p.y_wt.clone().expect("y_wt computed for this objective"),
                Y::L => p.y_l.clone(),
            }
        };
        // h(y) for the reference-based forms, log pi(y) / |y| for SimPO's.
        let h = |y: Y| -> Result<Tensor> {
            match &x.reference {
                Some(r) if self.needs_reference() => pick(&x.policy, y) - pick(r, y),
                _ => pick(&x.policy, y) / pick(&x.lengths, y),
            }
        };
        let chosen = match self.chosen {
            Chosen::Source => Y::Ws,
            Chosen::Target => Y::Wt,
        };
        let mix = |a: &Tensor, b: &Tensor| -> Result<Tensor> { (a * alpha)? + (b * (1.0 - alpha))? };
        let ys = self.responses();
        let r: Vec<Tensor> = ys.iter().map(|&y| h(y)? * beta).collect::<Result<_>>()?;
        let r_of = |y: Y| r[ys.iter().position(|&v| v == y).unwrap()].clone();
        let h_margin = |w: &Tensor| -> Result<Tensor> { (w - (r_of(Y::L) / beta)?)? - 1.0 / (2.0 * beta) };
        let losses = match self.loss {
            LossKind::Wrpo => self.sigmoid_loss(&(mix(&r_of(Y::Ws), &r_of(Y::Wt))? - r_of(Y::L))?)?,
            LossKind::Dpo => self.sigmoid_loss(&(r_of(chosen) - r_of(Y::L))?)?,
            LossKind::Simpo => self.sigmoid_loss(&((r_of(chosen) - r_of(Y::L))? - self.gamma)?)?,
            LossKind::WrpoSimpo => self.sigmoid_loss(&((mix(&r_of(Y::Ws), &r_of(Y::Wt))? - r_of(Y::L))? - self.gamma)?)?,
            LossKind::Ipo => h_margin(&(r_of(chosen) / beta)?)?.sqr()?,
            LossKind::WrpoIpo => h_margin(&(mix(&r_of(Y::Ws), &r_of(Y::Wt))? / beta)?)?.sqr()?,
            LossKind::SigmoidMix => {
                let a = self.sigmoid_loss(&(r_of(Y::Ws) - r_of(Y::L))?)?;
                let b = self.sigmoid_loss(&(r_of(Y::Wt) - r_of(Y::L))?)?;
                ((a + b)? * 0.5)?
            }
        };
        let has = |y: Y| ys.contains(&y);
        Ok(Output { losses, rewards: PerY { y_ws: has(Y::Ws).then(|| r_of(Y::Ws)), y_wt: has(Y::Wt).then(|| r_of(Y::Wt)), y_l: r_of(Y::L) } })
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
