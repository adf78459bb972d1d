//! Sharded outputs of long jobs: the writer, its folder lock, and what a
//! resumed run finds.

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::{dataset_files, read_file, shard_files, shard_number, write_dataset, DatasetFile, Provenance};
use crate::Dataset;

/// Writes a large dataset as `dir/part-00000-TAG.parquet`,
/// `dir/part-00001-TAG.parquet`, ...: every shard is committed atomically as
/// soon as it is full, so finished work survives a crash, and DuckDB reads
/// `dir/*.parquet` as one table. New shards are numbered after those already
/// in `dir` (a resumed run adds to them); TAG differs for every writer
/// (machine, process, start time), so the folders of several machines'
/// `--shard` runs can be copied into one without overwriting each other. A
/// lock file in `dir` refuses a second writer while one is at work.
///
/// The commit contract every long job shares (sampling, scoring): rows come
/// in units of work (a sample, a batch) that are never split across shards;
/// after a unit, the buffer is committed once it holds `rows_per_shard` rows
/// or [`COMMIT_EVERY`] has passed since the last commit; a resumed run reads
/// what is there through [`resume_files`].
pub struct ShardWriter<T: Dataset> {
    dir: PathBuf,
    prov: Provenance,
    rows_per_shard: usize,
    rows: Vec<T>,
    next: usize,
    tag: String,
    last_commit: Instant,
    /// Shards committed after a unit of work, and after how many of them to abort.
    committed: usize,
    abort_after: Option<usize>,
    /// Held, not read: dropping the writer releases it.
    _lock: DirLock,
}

/// `dir/.lock`, holding "HOST PID" of the process writing `dir`; removed when dropped.
struct DirLock(PathBuf);

impl DirLock {
    fn acquire(dir: &Path) -> Result<Self> {
        use std::io::Write;
        let path = dir.join(".lock");
        let me = format!("{} {}", hostname(), std::process::id());
        for _ in 0..2 {
            match fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut f) => {
                    f.write_all(me.as_bytes()).with_context(|| format!("cannot write {}", path.display()))?;
                    return Ok(DirLock(path));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    check_unlocked(dir)?;
                    match fs::remove_file(&path) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                            return Err(e).with_context(|| format!("cannot remove the stale lock {}", path.display()))
                        }
                        _ => {}
                    }
                }
                Err(e) => return Err(e).with_context(|| format!("cannot create {}", path.display())),
            }
        }
        bail!("cannot take the lock {}", path.display())
    }
}

/// Refuse a folder that a live process is writing (its `.lock`), before any
/// work; a lock whose process of this machine is gone (killed, crashed) is stale.
pub fn check_unlocked(dir: &Path) -> Result<()> {
    let path = dir.join(".lock");
    let Ok(holder) = fs::read_to_string(&path) else { return Ok(()) };
    let (host, pid) = holder.trim().split_once(' ').unwrap_or(("?", "?"));
    let gone = host == hostname() && pid.parse::<u32>().is_ok_and(|p| !Path::new(&format!("/proc/{p}")).exists());
    if !gone {
        bail!(
            "{} is being written by process {pid} on {host} ({}); wait for it to finish, or delete that file if the process is gone",
            dir.display(),
            path.display()
        );
    }
    Ok(())
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "localhost".into())
}

impl<T: Dataset> ShardWriter<T> {
    pub fn new(dir: &Path, prov: Provenance, rows_per_shard: usize) -> Result<Self> {
        fs::create_dir_all(dir).with_context(|| format!("cannot create folder {}", dir.display()))?;
        let lock = DirLock::acquire(dir)?;
        let next = shard_files(dir)?.iter().filter_map(|p| shard_number(p)).max().map_or(0, |n| n + 1);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let tag = crate::hash::short_hash(&format!("{} {} {nanos}", hostname(), std::process::id()));
        Ok(ShardWriter {
            dir: dir.to_path_buf(),
            prov,
            rows_per_shard: rows_per_shard.max(1),
            rows: Vec::new(),
            next,
            tag,
            last_commit: Instant::now(),
            committed: 0,
            abort_after: None,
            _lock: lock,
        })
    }

    /// For crash tests: abort the process, as a crash would, once this many
    /// shards have been committed after units of work.
    pub fn abort_after_shards(mut self, shards: Option<usize>) -> Self {
        self.abort_after = shards;
        self
    }

    /// One unit of work of one row.
    pub fn push(&mut self, row: T) -> Result<()> {
        self.push_unit([row])
    }

    /// The rows of one unit of work, committed together (see the type).
    pub fn push_unit(&mut self, rows: impl IntoIterator<Item = T>) -> Result<()> {
        self.rows.extend(rows);
        if self.rows.is_empty() || (self.rows.len() < self.rows_per_shard && self.last_commit.elapsed() < COMMIT_EVERY) {
            return Ok(());
        }
        self.flush()?;
        self.committed += 1;
        if self.abort_after.is_some_and(|k| self.committed >= k) {
            std::process::abort();
        }
        Ok(())
    }

    /// Rows pushed but not yet committed.
    pub fn pending(&self) -> usize {
        self.rows.len()
    }

    /// Commit the buffered rows as a shard now, even if it is not full.
    pub fn flush(&mut self) -> Result<()> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let path = self.dir.join(format!("part-{:05}-{}.parquet", self.next, self.tag));
        write_dataset(&path, &self.rows, &self.prov)?;
        self.rows.clear();
        self.next += 1;
        self.last_commit = Instant::now();
        Ok(())
    }

    /// Commit what is left; the lock is released with the writer.
    pub fn finish(mut self) -> Result<()> {
        self.flush()
    }
}

/// A shard is committed at least this often, so a crash loses little work.
pub const COMMIT_EVERY: Duration = Duration::from_secs(60);

/// The shards a resumed run finds in `dir` (none if it holds none). Each is
/// checked by `differs`, which says how the run that made it differs from
/// this one, if it does: then this run is refused, naming the shard.
pub fn resume_files<T: Dataset>(dir: &Path, differs: impl Fn(&Provenance) -> Option<String>) -> Result<Vec<DatasetFile<T>>> {
    if !dir.exists() || dataset_files(dir).is_err() {
        return Ok(vec![]);
    }
    dataset_files(dir)?
        .iter()
        .map(|path| {
            let file = read_file::<T>(path)?;
            if let Some(why) = differs(&file.provenance) {
                bail!("{} was made {why}; give this run another --out, or delete that folder to start over", path.display());
            }
            Ok(file)
        })
        .collect()
}
