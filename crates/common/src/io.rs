//! Parquet I/O for [`Dataset`]s: atomic writes with provenance metadata,
//! sharded outputs, and validating reads.

use std::{
    collections::HashMap,
    fs::{self, File},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use arrow::{
    array::{Array, ArrayRef, AsArray, GenericListArray, ListArray, OffsetSizeTrait, RecordBatch, StructArray},
    datatypes::{DataType, FieldRef, Schema},
};
use parquet::{
    arrow::{arrow_reader::ParquetRecordBatchReaderBuilder, ArrowWriter, ProjectionMask},
    basic::{Compression, ZstdLevel},
    file::{metadata::KeyValue, properties::WriterProperties},
};
use serde::{Deserialize, Serialize};

use crate::{hash::content_sha256, Dataset};

/// Rows per Parquet row group: small enough to stream, large enough for ZSTD.
pub const ROW_GROUP_ROWS: usize = 8192;

/// Metadata keys written into every file's Parquet key-value metadata.
pub mod keys {
    pub const SCHEMA: &str = "wrpo.schema";
    pub const VERSION: &str = "wrpo.schema_version";
    pub const PRODUCER: &str = "wrpo.producer";
    pub const COMMAND: &str = "wrpo.command";
    pub const CONFIG: &str = "wrpo.config";
    pub const INPUTS: &str = "wrpo.inputs";
}

/// What made a file: the producing binary, its command line and full
/// configuration, and the content hashes of its inputs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    pub producer: String,
    pub command: Vec<String>,
    pub config: serde_json::Value,
    pub inputs: Vec<InputHash>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputHash {
    pub path: String,
    pub sha256: String,
}

impl Provenance {
    /// Provenance of this process: `producer` is e.g. `"wrpo-sample 0.1.0"`.
    pub fn new(producer: impl Into<String>, config: &impl Serialize) -> Result<Self> {
        Ok(Provenance {
            producer: producer.into(),
            // Lossy: a path that is not UTF-8 must not make the run panic.
            command: std::env::args_os().map(|a| a.to_string_lossy().into_owned()).collect(),
            config: serde_json::to_value(config).context("cannot serialise the configuration")?,
            inputs: Vec::new(),
        })
    }

    /// Record an input file or folder with its content hash.
    pub fn with_input(mut self, path: &Path) -> Result<Self> {
        let sha256 = content_sha256(path)?;
        self.inputs.push(InputHash { path: path.display().to_string(), sha256 });
        Ok(self)
    }

    fn key_values(&self, schema: &str, version: u32) -> Vec<KeyValue> {
        vec![
            KeyValue::new(keys::SCHEMA.into(), schema.to_string()),
            KeyValue::new(keys::VERSION.into(), version.to_string()),
            KeyValue::new(keys::PRODUCER.into(), self.producer.clone()),
            KeyValue::new(keys::COMMAND.into(), to_json(&self.command.iter().map(|a| redact_credentials(a)).collect::<Vec<_>>())),
            KeyValue::new(keys::CONFIG.into(), to_json(&redact_json(&self.config))),
            KeyValue::new(keys::INPUTS.into(), to_json(&self.inputs)),
        ]
    }
}

/// `text` with the credentials of every URL in it (`scheme://user:password@host`)
/// replaced by `[credentials]`: a dataset's metadata keeps the command and the
/// settings, which name the servers, and a secret must reach no file.
pub fn redact_credentials(text: &str) -> String {
    map_authorities(text, |authority| match authority.rfind('@') {
        Some(at) => format!("[credentials]{}", &authority[at..]),
        None => authority.to_string(),
    })
}

/// `text` with the authority (`user:password@host:port`) of every URL in it
/// passed through `rewrite`.
fn map_authorities(text: &str, rewrite: impl Fn(&str) -> String) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail.find(|c: char| matches!(c, '/' | '?' | '#' | '"') || c.is_whitespace()).unwrap_or(tail.len());
        out.push_str(&rewrite(&tail[..end]));
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// `v` with `rewrite` applied to every string in it.
fn map_strings(v: &serde_json::Value, rewrite: &impl Fn(&str) -> String) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::String(s) => Value::String(rewrite(s)),
        Value::Array(a) => Value::Array(a.iter().map(|v| map_strings(v, rewrite)).collect()),
        Value::Object(o) => Value::Object(o.iter().map(|(k, v)| (k.clone(), map_strings(v, rewrite))).collect()),
        other => other.clone(),
    }
}

/// `v` with [`redact_credentials`] applied to every string in it: what the
/// metadata stores of a configuration.
fn redact_json(v: &serde_json::Value) -> serde_json::Value {
    map_strings(v, &redact_credentials)
}

/// `v` as a resume compares it: credentials blanked, as the metadata stores
/// them, and a loopback host written one way, since `localhost`, `127.0.0.1`
/// and `[::1]` name the same server.
fn resume_form(v: &serde_json::Value) -> serde_json::Value {
    map_strings(v, &|s: &str| one_loopback_name(&redact_credentials(s)))
}

/// `text` with every URL's loopback host (`localhost`, `[::1]`) written `127.0.0.1`.
fn one_loopback_name(text: &str) -> String {
    map_authorities(text, |authority| {
        let host_at = authority.rfind('@').map_or(0, |at| at + 1);
        let host = &authority[host_at..];
        let name_end = if host.starts_with('[') { host.find(']').map_or(host.len(), |e| e + 1) } else { host.find(':').unwrap_or(host.len()) };
        match &host[..name_end] {
            "localhost" | "[::1]" => format!("{}127.0.0.1{}", &authority[..host_at], &host[name_end..]),
            _ => authority.to_string(),
        }
    })
}

/// Where the settings a dataset was made with (`then`, from its metadata)
/// differ from this run's (`now`), as a resume compares them (see
/// `resume_form`): None if nowhere, else each differing key with both values
/// ("shard: [1,2] there, [2,2] here").
pub fn settings_differ(then: &serde_json::Value, now: &serde_json::Value) -> Option<String> {
    fn walk(path: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
        match (a, b) {
            (serde_json::Value::Object(x), serde_json::Value::Object(y)) => {
                let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
                for k in keys {
                    let null = serde_json::Value::Null;
                    let sub = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                    walk(&sub, x.get(k).unwrap_or(&null), y.get(k).unwrap_or(&null), out);
                }
            }
            _ if a != b => {
                // A long value (the judge's instructions) is named, not printed whole.
                let short = |v: &serde_json::Value| {
                    let text = v.to_string();
                    if text.chars().count() > 120 {
                        format!("{}...", text.chars().take(117).collect::<String>())
                    } else {
                        text
                    }
                };
                out.push(format!("{}: {} there, {} here", if path.is_empty() { "settings" } else { path }, short(a), short(b)));
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk("", &resume_form(then), &resume_form(now), &mut out);
    (!out.is_empty()).then(|| out.join("; "))
}

fn to_json(v: &impl Serialize) -> String {
    serde_json::to_string(v).expect("provenance is plain JSON")
}

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
    fn take(&mut self) -> File {
        self.file.take().expect("file present until commit")
    }

    pub fn commit(mut self) -> Result<()> {
        let f = self.take();
        self.commit_file(f)
    }

    fn commit_file(mut self, file: File) -> Result<()> {
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

/// Refuse to replace a file that is not a dataset of kind `T` (another
/// kind, an input such as a JSON-lines file, anything not ours): a rerun
/// replaces its own output, never something else that sits at that path.
fn check_replaceable<T: Dataset>(path: &Path) -> Result<()> {
    if !path.is_file() {
        return Ok(());
    }
    let kind = File::open(path).ok().and_then(|f| ParquetRecordBatchReaderBuilder::try_new(f).ok()).and_then(|b| {
        b.metadata().file_metadata().key_value_metadata().and_then(|kv| kv.iter().find(|e| e.key == keys::SCHEMA)).and_then(|e| e.value.clone())
    });
    match kind {
        Some(k) if k == T::NAME => Ok(()),
        Some(k) => {
            bail!("{} holds a '{k}' dataset; this would replace it with a '{}' dataset: give another path, or delete it", path.display(), T::NAME)
        }
        None => bail!("{} exists and is not a '{}' dataset written by wrpo: give another path, or delete it", path.display(), T::NAME),
    }
}

/// Write `rows` to the Parquet file `path`, atomically, with ZSTD compression
/// and the dataset's schema name, version and `prov` in the key-value metadata.
pub fn write_dataset<T: Dataset>(path: &Path, rows: &[T], prov: &Provenance) -> Result<()> {
    // What a reader would refuse is never written.
    for (i, row) in rows.iter().enumerate() {
        row.check().map_err(|e| anyhow!("{}: row {i} (0-based) of {} is invalid, nothing was written: {e}", path.display(), T::NAME))?;
    }
    check_replaceable::<T>(path)?;
    let fields = T::fields();
    let schema = Arc::new(Schema::new(fields.clone()));
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_key_value_metadata(Some(prov.key_values(T::NAME, T::VERSION)))
        .build();
    let mut out = AtomicFile::create(path)?;
    let mut writer =
        ArrowWriter::try_new(out.take(), schema, Some(props)).with_context(|| format!("cannot start Parquet file {}", path.display()))?;
    for chunk in rows.chunks(ROW_GROUP_ROWS) {
        let batch =
            serde_arrow::to_record_batch(&fields, &chunk).with_context(|| format!("cannot encode {} rows for {}", T::NAME, path.display()))?;
        writer.write(&batch).with_context(|| format!("cannot write {}", path.display()))?;
    }
    let file = writer.into_inner().with_context(|| format!("cannot finish {}", path.display()))?;
    out.commit_file(file)
}

/// Write `rows` as Parquet (with provenance, as [`write_dataset`]) or as
/// JSON lines, chosen by the extension of `path` (`.parquet`, `.jsonl`).
pub fn write_rows<T: Dataset>(path: &Path, rows: &[T], prov: &Provenance) -> Result<()> {
    use std::io::Write;
    match path.extension().and_then(|e| e.to_str()) {
        Some("parquet") => write_dataset(path, rows, prov),
        Some("jsonl") => {
            let mut out = AtomicFile::create(path)?;
            let mut writer = std::io::BufWriter::new(out.file());
            for row in rows {
                serde_json::to_writer(&mut writer, row)?;
                writer.write_all(b"\n")?;
            }
            writer.flush().with_context(|| format!("cannot write {}", path.display()))?;
            drop(writer);
            out.commit()
        }
        _ => bail!("{}: the output's extension must be .parquet or .jsonl", path.display()),
    }
}

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

/// N of `part-N-TAG.parquet` (or of `part-N.parquet`, as earlier versions named shards).
fn shard_number(path: &Path) -> Option<usize> {
    let rest = path.file_name()?.to_str()?.strip_prefix("part-")?.strip_suffix(".parquet")?;
    rest.split('-').next()?.parse().ok()
}

/// The Parquet files of a dataset: `path` itself, or every visible `*.parquet`
/// under the folder `path` (recursively, sorted by path).
pub fn dataset_files(path: &Path) -> Result<Vec<PathBuf>> {
    if !path.exists() {
        bail!("{} does not exist", path.display());
    }
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let files = shard_files(path)?;
    if files.is_empty() {
        bail!("{} holds no .parquet files", path.display());
    }
    Ok(files)
}

fn shard_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).with_context(|| format!("cannot list {}", d.display()))? {
            let p = entry?.path();
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            if name.starts_with('.') {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
            } else if name.ends_with(".parquet") {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// One file of a dataset, read and validated.
pub struct DatasetFile<T> {
    pub path: PathBuf,
    pub version: u32,
    pub provenance: Provenance,
    pub rows: Vec<T>,
}

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

/// Read every row of the dataset at `path` (a file or a folder of shards),
/// refusing two rows with the same key ([`Dataset::KEY`]).
pub fn read_dataset<T: Dataset>(path: &Path) -> Result<Vec<T>> {
    let files = dataset_files(path)?.iter().map(|f| read_file::<T>(f)).collect::<Result<Vec<_>>>()?;
    check_keys(&files)?;
    Ok(files.into_iter().flat_map(|f| f.rows).collect())
}

/// Refuse a key ([`Dataset::KEY`]) held by two rows of these files, naming both.
pub fn check_keys<T: Dataset>(files: &[DatasetFile<T>]) -> Result<()> {
    let mut seen: HashMap<String, (&Path, usize)> = HashMap::new();
    for f in files {
        for (i, row) in f.rows.iter().enumerate() {
            let Some(key) = row.key() else { return Ok(()) };
            if let Some((path, j)) = seen.insert(key.clone(), (&f.path, i)) {
                bail!(
                    "{}: row {i} (0-based) has {} = {key}, as row {j} of {} has; a '{}' dataset holds each once",
                    f.path.display(),
                    T::KEY,
                    path.display(),
                    T::NAME
                );
            }
        }
    }
    Ok(())
}

/// Read one Parquet file of dataset `T`, rejecting a file of another schema, an
/// unknown newer version, a missing or mistyped column, a null where none is
/// allowed, or a row that fails [`Dataset::check`].
pub fn read_file<T: Dataset>(path: &Path) -> Result<DatasetFile<T>> {
    let shown = path.display();
    let file = File::open(path).with_context(|| format!("cannot open {shown}"))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).with_context(|| format!("{shown} is not a readable Parquet file"))?;
    let (version, provenance) = read_metadata::<T>(path, builder.metadata().file_metadata().key_value_metadata())?;

    let expected = T::fields();
    let found = builder.schema().clone();
    let mut roots = Vec::with_capacity(expected.len());
    for want in &expected {
        let Some((i, have)) = found.column_with_name(want.name()) else {
            // A nullable column added by a later schema version reads as null from an older file.
            if want.is_nullable() && version < T::VERSION {
                continue;
            }
            bail!("{shown}: column '{}' is missing (expected {})", want.name(), want.data_type());
        };
        if !compatible(have.data_type(), want.data_type()) {
            bail!("{shown}: column '{}' has type {}, expected {}", want.name(), have.data_type(), want.data_type());
        }
        roots.push(i);
    }
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
    let reader = builder.with_projection(mask).build().with_context(|| format!("cannot read {shown}"))?;

    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.with_context(|| format!("cannot decode {shown}"))?;
        check_nulls(path, &batch, &expected, rows.len())?;
        let batch = conform(path, &batch, &expected)?;
        let decoded: Vec<T> = match serde_arrow::from_record_batch(&batch) {
            Ok(rows) => rows,
            // Name the first row that fails (an unknown enum value, say), decoding them one by one.
            Err(e) => {
                let bad = (0..batch.num_rows()).find_map(|i| serde_arrow::from_record_batch::<Vec<T>>(&batch.slice(i, 1)).err().map(|e| (i, e)));
                let (row, e) = bad.map_or((None, e), |(i, e)| (Some(rows.len() + i), e));
                let at = row.map_or(String::new(), |r| format!(" row {r} (0-based):"));
                bail!("{shown}:{at} cannot decode it as a '{}' row: {e}", T::NAME);
            }
        };
        for (i, row) in decoded.iter().enumerate() {
            row.check().map_err(|e| anyhow!("{shown}: row {} (0-based): {e}", rows.len() + i))?;
        }
        rows.extend(decoded);
    }
    Ok(DatasetFile { path: path.to_path_buf(), version, provenance, rows })
}

/// Whether a column written by another tool holds what `want` does: the same
/// types up to nullability (values are checked), the names of list items
/// (`item`, `element`) and the string encoding (`Utf8`, `LargeUtf8`, `Utf8View`).
fn compatible(have: &DataType, want: &DataType) -> bool {
    let string = |t: &DataType| matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View);
    match (have, want) {
        (h, w) if string(h) && string(w) => true,
        (DataType::List(h) | DataType::LargeList(h), DataType::List(w)) => compatible(h.data_type(), w.data_type()),
        (DataType::Struct(h), DataType::Struct(w)) => {
            h.len() == w.len() && w.iter().all(|wf| h.iter().any(|hf| hf.name() == wf.name() && compatible(hf.data_type(), wf.data_type())))
        }
        (h, w) => h == w,
    }
}

/// The batch with exactly the expected columns and types (a no-op for files
/// this crate wrote): nulls were checked, so casting only renames list items,
/// reorders struct fields and re-encodes strings; a nullable column an older
/// version of the schema lacked is all nulls.
fn conform(path: &Path, batch: &RecordBatch, expected: &[FieldRef]) -> Result<RecordBatch> {
    let columns = expected
        .iter()
        .map(|want| {
            let Some(column) = batch.column_by_name(want.name()) else {
                return Ok(arrow::array::new_null_array(want.data_type(), batch.num_rows()));
            };
            if column.data_type() == want.data_type() {
                return Ok(column.clone());
            }
            // A large list as a list of the same items first, so that its struct fields are matched by name below.
            let column = match column.data_type() {
                DataType::LargeList(h) => arrow::compute::cast(column, &DataType::List(h.clone()))?,
                _ => column.clone(),
            };
            let column = match (column.data_type(), want.data_type()) {
                // Struct fields by name, whatever order the writer used.
                (DataType::List(h), DataType::List(w)) => match (h.data_type(), w.data_type()) {
                    (DataType::Struct(_), DataType::Struct(wf)) => {
                        let list = column.as_list::<i32>();
                        let items = list.values().as_struct();
                        let fields = wf.iter().map(|f| arrow::compute::cast(items.column_by_name(f.name()).expect("checked"), f.data_type()));
                        let items = StructArray::try_new(wf.clone(), fields.collect::<Result<_, _>>()?, items.nulls().cloned())?;
                        Arc::new(ListArray::try_new(w.clone(), list.offsets().clone(), Arc::new(items), list.nulls().cloned())?) as ArrayRef
                    }
                    _ => column.clone(),
                },
                _ => column.clone(),
            };
            arrow::compute::cast(&column, want.data_type()).map_err(anyhow::Error::from)
        })
        .collect::<Result<Vec<_>>>()
        .with_context(|| format!("{}: cannot read its columns as the expected types", path.display()))?;
    Ok(RecordBatch::try_new(Arc::new(Schema::new(expected.to_vec())), columns)?)
}

fn read_metadata<T: Dataset>(path: &Path, kv: Option<&Vec<KeyValue>>) -> Result<(u32, Provenance)> {
    let shown = path.display();
    let get = |key: &str| kv.and_then(|kv| kv.iter().find(|e| e.key == key)).and_then(|e| e.value.clone());
    let Some(schema) = get(keys::SCHEMA) else {
        // Rewritten by DuckDB, pyarrow or polars (which drop our metadata):
        // read it if its columns match, saying that its provenance is unknown.
        eprintln!("{shown}: no WRPO metadata (written by another tool?); reading it as a '{}' dataset, provenance unknown", T::NAME);
        return Ok((T::VERSION, Provenance { producer: String::new(), command: vec![], config: serde_json::Value::Null, inputs: vec![] }));
    };
    if schema != T::NAME {
        bail!("{shown}: is a '{schema}' dataset, expected a '{}' dataset", T::NAME);
    }
    let version: u32 =
        get(keys::VERSION).and_then(|v| v.parse().ok()).ok_or_else(|| anyhow!("{shown}: '{}' is missing or not a number", keys::VERSION))?;
    if version > T::VERSION {
        bail!("{shown}: '{}' schema version {version} is newer than this build reads (up to {}); upgrade wrpo", T::NAME, T::VERSION);
    }
    let json = |key: &str| -> Result<serde_json::Value> {
        let text = get(key).ok_or_else(|| anyhow!("{shown}: metadata key '{key}' is missing"))?;
        serde_json::from_str(&text).with_context(|| format!("{shown}: metadata key '{key}' is not valid JSON"))
    };
    let provenance = Provenance {
        producer: get(keys::PRODUCER).unwrap_or_default(),
        command: serde_json::from_value(json(keys::COMMAND)?).with_context(|| format!("{shown}: '{}' is not a list of strings", keys::COMMAND))?,
        config: json(keys::CONFIG)?,
        inputs: serde_json::from_value(json(keys::INPUTS)?).with_context(|| format!("{shown}: '{}' is not a list of inputs", keys::INPUTS))?,
    };
    Ok((version, provenance))
}

fn check_nulls(path: &Path, batch: &RecordBatch, expected: &[FieldRef], first_row: usize) -> Result<()> {
    for want in expected.iter().filter(|f| !f.is_nullable()) {
        let column = batch.column_by_name(want.name()).expect("non-nullable columns are never left out");
        if column.null_count() > 0 {
            let row = (0..column.len()).find(|&i| column.is_null(i)).unwrap_or(0);
            bail!("{}: column '{}' is null at row {} (0-based); it may not be null", path.display(), want.name(), first_row + row);
        }
        // Inside a list of turns (files of other writers allow nulls there).
        let row = match (column.as_list_opt::<i32>(), column.as_list_opt::<i64>()) {
            (Some(list), _) => row_with_null_item(list),
            (_, Some(list)) => row_with_null_item(list),
            _ => None,
        };
        if let Some(row) = row {
            bail!("{}: column '{}' holds a null at row {} (0-based); it may not", path.display(), want.name(), first_row + row);
        }
    }
    Ok(())
}

/// The first row of `list` with a null item, or a null field of a struct item.
fn row_with_null_item<O: OffsetSizeTrait>(list: &GenericListArray<O>) -> Option<usize> {
    let items = list.values();
    let mut nulls: Vec<&dyn Array> = vec![items.as_ref()];
    if let Some(s) = items.as_struct_opt() {
        nulls.extend(s.columns().iter().map(|c| c.as_ref()));
    }
    let item = nulls.iter().find_map(|a| (0..a.len()).find(|&i| a.is_null(i)))?;
    Some(list.offsets().windows(2).position(|w| (w[0].as_usize()..w[1].as_usize()).contains(&item)).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn settings_differ_names_each_key_and_takes_loopback_names_as_one_server() {
        let then = json!({"reward": {"url": "http://[credentials]@localhost:8000/v1"}, "shard": [0, 2], "dtype": "f32"});
        // The same server by another loopback name, and the same credentials (blanked in the metadata): no difference.
        let now = json!({"reward": {"url": "http://user:secret@127.0.0.1:8000/v1"}, "shard": [0, 2], "dtype": "f32"});
        assert_eq!(settings_differ(&then, &now), None);
        assert_eq!(settings_differ(&json!({"u": "http://[::1]:80/"}), &json!({"u": "http://localhost:80/"})), None);
        // Another host is another server; each differing key is named with both values.
        let other = json!({"reward": {"url": "http://localhost.example.com:8000/v1"}, "shard": [1, 2], "dtype": "f32"});
        let d = settings_differ(&then, &other).unwrap();
        assert!(d.contains("reward.url: \"http://[credentials]@127.0.0.1:8000/v1\" there, \"http://localhost.example.com:8000/v1\" here"), "{d}");
        assert!(d.contains("shard: [0,2] there, [1,2] here") && !d.contains("dtype"), "{d}");
        assert!(!d.contains("secret"));
        // A key only one side has.
        assert_eq!(settings_differ(&json!({}), &json!({"precision": "bf16"})).unwrap(), "precision: null there, \"bf16\" here");
    }
}
