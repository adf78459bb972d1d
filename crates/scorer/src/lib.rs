//! Library side of `wrpo-score`: reward scoring, and choosing y_ws, y_wt
//! and y_l from scored samples.

pub mod report;
pub mod reward;
pub mod score;
pub mod select;
