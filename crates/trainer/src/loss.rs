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

use candle_core::{Result, Tensor};
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

    /// -(1 - eps) log sig(z) - eps log sig(-z), with log sig(z) = min(z, 0) - log(1 + exp(-|z|)).
    fn sigmoid_loss(&self, z: &Tensor) -> Result<Tensor> {
        let log_sig = |z: &Tensor| -> Result<Tensor> { z.minimum(0.0)? - (z.abs()?.neg()?.exp()? + 1.0)?.log()? };
        let eps = self.label_smoothing;
        let pos = (log_sig(z)? * -(1.0 - eps))?;
        if eps == 0.0 {
            return Ok(pos);
        }
        pos - (log_sig(&z.neg()?)? * eps)?
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
