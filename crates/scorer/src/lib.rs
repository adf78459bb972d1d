//! Library side of `wrpo-score`: reward scoring, and choosing y_ws, y_wt
//! and y_l from scored samples; rewards and judges behind servers.

pub mod dose;
pub mod head_to_head;
pub mod judge;
pub mod report;
pub mod reward;
pub mod score;
pub mod select;
pub mod served;
pub mod spec;
pub mod stats;

mod seed_pool;
