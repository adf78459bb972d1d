//! One module per subcommand of `wrpo-train`: its flags, their checks
//! (`check`, before any model loads), and `run`, which turns them into the
//! library's settings and calls it. `training` holds what the training
//! subcommands share.

pub mod import_metrics;
pub mod ref_logps;
pub mod schedule;
pub mod sft;
mod training;
pub mod wrpo;
