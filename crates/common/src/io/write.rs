//! Writing a dataset as one Parquet (or JSON-lines) file.

use std::{fs::File, path::Path, sync::Arc};

use anyhow::{anyhow, bail, Context, Result};
use arrow::datatypes::Schema;
use parquet::{
    arrow::{arrow_reader::ParquetRecordBatchReaderBuilder, ArrowWriter},
    basic::{Compression, ZstdLevel},
    file::properties::WriterProperties,
};

use super::{keys, AtomicFile, Provenance};
use crate::Dataset;

/// Rows per Parquet row group: small enough to stream, large enough for ZSTD.
pub const ROW_GROUP_ROWS: usize = 8192;

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
