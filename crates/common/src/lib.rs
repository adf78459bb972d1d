//! Datasets shared by the WRPO pipeline binaries.
//!
//! The sampler, scorer and trainer hand work to each other only through the
//! Parquet datasets defined here. Each dataset is a Rust record type with an
//! explicit Arrow schema ([`Dataset`]); [`io`] writes them atomically with
//! provenance metadata and reads them back with validation that names the file,
//! the column or the row at fault.

pub mod dataset;
pub mod hash;
pub mod io;
pub mod metrics;
pub mod pairs;
pub mod progress;
pub mod prompts;
pub mod samples;
pub mod scored;
pub mod sft;

pub use dataset::{Dataset, Message, Role};
pub use io::{read_dataset, write_dataset, DatasetFile, Provenance, ShardWriter};

/// End a binary's `main`: on error print `BIN: error: ...` with the whole
/// chain of causes (file, column, row) and exit non-zero.
pub fn exit_on_error(bin: &str, result: anyhow::Result<()>) {
    if let Err(e) = result {
        eprintln!("{bin}: error: {e:#}");
        std::process::exit(1);
    }
}
