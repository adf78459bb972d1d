//! Finding a dataset's files and reading them back with validation that
//! names the file, the column or the row at fault.

use std::{
    collections::HashMap,
    fs::{self, File},
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{anyhow, bail, Context, Result};
use arrow::{
    array::{Array, ArrayRef, AsArray, GenericListArray, ListArray, OffsetSizeTrait, RecordBatch, StructArray},
    datatypes::{DataType, FieldRef, Schema},
};
use parquet::{
    arrow::{arrow_reader::ParquetRecordBatchReaderBuilder, ProjectionMask},
    file::metadata::KeyValue,
};

use super::{keys, Provenance};
use crate::Dataset;

/// N of `part-N-TAG.parquet` (or of `part-N.parquet`, as earlier versions named shards).
pub(super) fn shard_number(path: &Path) -> Option<usize> {
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

pub(super) fn shard_files(dir: &Path) -> Result<Vec<PathBuf>> {
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
