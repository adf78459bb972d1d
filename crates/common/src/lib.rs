//! Datasets shared by the WRPO pipeline binaries.
//!
//! The sampler, scorer and trainer hand work to each other only through the
//! Parquet datasets defined here. Each dataset is a Rust record type with an
//! explicit Arrow schema ([`Dataset`]); [`io`] writes them atomically with
//! provenance metadata and reads them back with validation that names the file,
//! the column or the row at fault.

pub mod dataset;
pub mod eval;
pub mod export;
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

/// A flag that the first Ctrl-C sets (the job then finishes its current unit
/// of work, commits it and exits) after printing `interrupted: {what}`; a
/// second Ctrl-C exits at once. When the work in flight is `paid` for (a
/// served reward's grades, a judge's verdicts), the second only says what
/// quitting now would lose, and a third exits.
pub fn interrupt_flag(what: &'static str, paid: bool) -> anyhow::Result<std::sync::Arc<std::sync::atomic::AtomicBool>> {
    use std::sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    };
    let interrupted = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = interrupted.clone();
    let presses = AtomicUsize::new(0);
    ctrlc::set_handler(move || {
        flag.store(true, Ordering::SeqCst);
        match (presses.fetch_add(1, Ordering::SeqCst), paid) {
            (0, _) => eprintln!("\ninterrupted: {what} (Ctrl-C again to quit at once)"),
            (1, true) => eprintln!("\nstill {what}: the answers in flight are paid for; Ctrl-C once more to quit at once and lose them"),
            _ => std::process::exit(130),
        }
    })
    .map_err(|e| anyhow::anyhow!("cannot install the Ctrl-C handler: {e}"))?;
    Ok(interrupted)
}

/// End a binary's `main`: on error print `BIN: error: ...` with the whole
/// chain of causes (file, column, row) and exit non-zero. Backtraces that a
/// library captured (candle does when RUST_BACKTRACE is set) are left out
/// unless `verbose` (the binaries' `-v`).
pub fn exit_on_error(bin: &str, verbose: bool, result: anyhow::Result<()>) {
    if let Err(e) = result {
        let text = format!("{e:#}");
        eprintln!("{bin}: error: {}", if verbose { text } else { without_backtraces(&text) });
        std::process::exit(1);
    }
}

/// `text` without the lines of a backtrace ("   3: path::fn" and "at file:line").
pub fn without_backtraces(text: &str) -> String {
    let frame = |line: &str| {
        let t = line.trim_start();
        let numbered = t.split_once(": ").is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        line.starts_with(' ') && (numbered || t.starts_with("at "))
    };
    text.lines().filter(|l| !frame(l)).collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    #[test]
    fn backtrace_lines_go_and_our_own_lines_stay() {
        let text =
            "x.gguf is not readable: cut short\n   0: candle_core::error::Error::bt\n             at /src/error.rs:260:25\n  p.jsonl:line 4: bad row";
        assert_eq!(super::without_backtraces(text), "x.gguf is not readable: cut short\n  p.jsonl:line 4: bad row");
    }
}
