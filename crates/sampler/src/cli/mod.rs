//! One module per subcommand of `wrpo-sample`: its flags, their checks
//! (`check`, before anything is read), and `run`, which turns them into the
//! library's settings and calls it.

pub mod generate;
pub mod import;
pub mod import_scored;

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use wrpo_sampler::import::{write_rejected, Rejected};

/// Bad rows stop an import (naming the first ten) unless `skip_bad`.
fn check_rejected(input: &Path, bad: &[Rejected], skip_bad: bool) -> Result<()> {
    if !bad.is_empty() && !skip_bad {
        let shown: Vec<String> = bad.iter().take(10).map(|r| format!("  {}:{}: {}", input.display(), r.location, r.reason)).collect();
        bail!(
            "{} bad row(s) in {}; nothing was written. Fix them, or pass --skip-bad to import the rest:\n{}{}",
            bad.len(),
            input.display(),
            shown.join("\n"),
            if bad.len() > 10 { "\n  ..." } else { "" }
        );
    }
    Ok(())
}

/// With --skip-bad, the bad rows and their reasons go to `path`.
fn save_rejected(bad: &[Rejected], path: PathBuf) -> Result<()> {
    if !bad.is_empty() {
        write_rejected(&path, bad)?;
        eprintln!("wrote {} rejected row(s) with their reasons to {}", bad.len(), path.display());
    }
    Ok(())
}
