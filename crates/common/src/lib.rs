//! Datasets shared by the WRPO pipeline binaries.
//!
//! The sampler, scorer and trainer hand work to each other only through the
//! Parquet datasets defined here. Each dataset is a Rust record type with an
//! explicit Arrow schema ([`Dataset`]); [`io`] writes them atomically with
//! provenance metadata and reads them back with validation that names the file,
//! the column or the row at fault.

pub mod dataset;
pub mod export;
pub mod hash;
pub mod io;
pub mod metrics;
pub mod pairs;
pub mod progress;
pub mod prompts;
pub mod report;
pub mod samples;
pub mod scored;
pub mod sft;

pub use dataset::{Dataset, Message, Role};
pub use io::{read_dataset, write_dataset, DatasetFile, Provenance, ShardWriter};

/// A flag that the first Ctrl-C sets (the job then finishes its current unit
/// of work, commits it and exits) after printing `interrupted: {what}`; a
/// second Ctrl-C exits at once.
pub fn interrupt_flag(what: &'static str) -> anyhow::Result<std::sync::Arc<std::sync::atomic::AtomicBool>> {
    use std::sync::{atomic::Ordering, Arc};
    let interrupted = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = interrupted.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\ninterrupted: {what} (Ctrl-C again to quit at once)");
    })
    .map_err(|e| anyhow::anyhow!("cannot install the Ctrl-C handler: {e}"))?;
    Ok(interrupted)
}

/// End a binary's `main`: on error print `BIN: error: ...` with the whole
/// chain of causes (file, column, row) and exit non-zero.
pub fn exit_on_error(bin: &str, result: anyhow::Result<()>) {
    if let Err(e) = result {
        eprintln!("{bin}: error: {e:#}");
        std::process::exit(1);
    }
}
