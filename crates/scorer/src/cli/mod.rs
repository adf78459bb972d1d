//! One module per subcommand of `wrpo-score`: its flags, their checks
//! (`check`, before anything is read), and `run`, which turns them into
//! the library's settings and calls it.

pub mod dose;
pub mod export;
pub mod pairs;
pub mod reference_set;
pub mod report;
pub mod score;
pub mod sft_set;

use std::path::{Path, PathBuf};

/// `OUT.parquet` -> `OUT.summary.json`: where a single-file output's summary goes.
fn summary_path(out: &Path) -> PathBuf {
    out.with_extension("summary.json")
}

/// A model with more than this share of its samples cut off is warned about.
const TRUNCATED_WARNING: f64 = 0.2;
