//! Library side of `wrpo-score`: choosing y_ws, y_wt and y_l from scored
//! samples (and, later, scoring with a reward model).

pub mod select;
