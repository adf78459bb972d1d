//! Library side of `wrpo-train`: the schedules of a run (and, later, SFT and
//! WRPO training).

pub mod schedule;
