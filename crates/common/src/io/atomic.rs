//! Files written under a temporary name and renamed into place.

use std::{
    fs::{self, File},
    path::{Path, PathBuf},
};

use anyhow::{anyhow, Context, Result};

/// A file being written under a temporary name in the destination folder.
/// [`AtomicFile::commit`] fsyncs it and renames it into place; dropping it
/// uncommitted removes it, so a crash or an error never leaves a partial file
/// under the final name.
pub struct AtomicFile {
    tmp: PathBuf,
    dest: PathBuf,
    file: Option<File>,
}

impl AtomicFile {
    pub fn create(dest: &Path) -> Result<Self> {
        let dir = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        fs::create_dir_all(&dir).with_context(|| format!("cannot create folder {}", dir.display()))?;
        let name = dest.file_name().ok_or_else(|| anyhow!("{} is not a file path", dest.display()))?.to_string_lossy();
        // Hidden and without the .parquet suffix: globs such as dir/*.parquet skip it.
        let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let file = File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        Ok(AtomicFile { tmp, dest: dest.to_path_buf(), file: Some(file) })
    }

    pub fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("file present until commit")
    }

    /// Take the open file out to hand to a writer that owns it; give it back
    /// with [`AtomicFile::commit_file`].
    pub(super) fn take(&mut self) -> File {
        self.file.take().expect("file present until commit")
    }

    pub fn commit(mut self) -> Result<()> {
        let f = self.take();
        self.commit_file(f)
    }

    pub(super) fn commit_file(mut self, file: File) -> Result<()> {
        file.sync_all().with_context(|| format!("cannot flush {}", self.tmp.display()))?;
        drop(file);
        fs::rename(&self.tmp, &self.dest).with_context(|| format!("cannot move {} to {}", self.tmp.display(), self.dest.display()))?;
        // The rename is durable only once the folder entry is.
        if let Some(dir) = self.dest.parent().filter(|p| !p.as_os_str().is_empty()) {
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        self.tmp = PathBuf::new();
        Ok(())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Write a text file (JSON, markdown, ...) atomically.
pub fn write_text(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    let mut file = AtomicFile::create(path)?;
    file.file().write_all(text.as_bytes()).with_context(|| format!("cannot write {}", path.display()))?;
    file.commit()
}
