//! The binaries' check of their input and output paths.

use std::{
    fs::{self, File},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};

/// `path` made absolute with its symbolic links resolved, so that two
/// spellings of one place compare equal; the part that does not exist yet
/// is appended to its nearest existing ancestor, resolved.
fn resolved(path: &Path) -> PathBuf {
    let mut rest = Vec::new();
    let mut at = path;
    loop {
        let here = if at.as_os_str().is_empty() { Path::new(".") } else { at };
        if let Ok(real) = here.canonicalize() {
            return rest.iter().rev().fold(real, |p, part| p.join(part));
        }
        match (at.parent(), at.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                at = parent;
            }
            _ => return path.to_path_buf(),
        }
    }
}

/// Refuse, before any work, outputs of one command that would destroy data:
/// two outputs at one path, or an output at (or inside) one of the
/// command's inputs. `outputs` and `inputs` are (flag, path) pairs.
pub fn check_paths(outputs: &[(&str, &Path)], inputs: &[(&str, &Path)]) -> Result<()> {
    let outs: Vec<(&str, PathBuf)> = outputs.iter().map(|(f, p)| (*f, resolved(p))).collect();
    for (i, (flag, out)) in outs.iter().enumerate() {
        if let Some((other, _)) = outs[..i].iter().find(|(_, o)| o == out) {
            bail!("{other} and {flag} are both {}: one output would overwrite the other; give them different paths", out.display());
        }
        for (input_flag, input) in inputs {
            let input = resolved(input);
            if out.starts_with(&input) {
                bail!("{flag} {} is (or lies inside) the input {input_flag} {}: writing it would destroy that input", out.display(), input.display());
            }
        }
    }
    // Writable, found out now rather than after the work: a probe file in
    // the nearest folder that exists, removed at once (no folder is made).
    for (flag, out) in outputs {
        let mut dir = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        while !dir.is_dir() {
            dir = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        }
        let probe = dir.join(format!(".wrpo-probe.{}.tmp", std::process::id()));
        File::create(&probe).with_context(|| format!("{flag} {}: cannot write in {}", out.display(), dir.display()))?;
        let _ = fs::remove_file(&probe);
    }
    Ok(())
}
