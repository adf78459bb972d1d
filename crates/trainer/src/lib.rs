//! Library side of `wrpo-train`: SFT, reference log-probs and preference
//! training (WRPO and its baselines) of the target model.

pub mod checkpoint;
pub mod data;
pub mod loss;
pub mod metrics;
pub mod optim;
pub mod plot;
pub mod reference;
pub mod schedule;
pub mod train;
pub mod trainer_state;
