//! Decoder-only LLMs for the WRPO pipeline, one config-driven implementation
//! for every supported family, so sampling, scoring and training run the same
//! forward pass (and match HF transformers).

mod attention;
pub mod bf16;
mod chat;
mod config;
mod family;
pub mod gguf;
pub mod grad;
mod kernels;
mod kv;
mod logprob;
mod matmul;
mod model;
mod pool;
mod qmatmul;
mod rope;
pub mod sampling;
pub mod save;
mod tiers;
#[cfg(feature = "tiny")]
pub mod tiny;
mod tokenizer;
mod vmath;
mod weights;

pub use chat::{ChatMessage, ChatTemplate};
pub use config::Config;
pub use family::{supported, Family, FAMILIES};
pub use kernels::{linear, with_values};
pub use kv::KvCache;
pub use model::{LoadOptions, Model};
pub use pool::for_each_mut;
pub use sampling::{Rng, SamplingParams};
pub use save::save_hf_checkpoint;
pub use tokenizer::Tokenizer;
pub use vmath::{sum_squares, vectorized};
pub use weights::{Trainable, Weights};

/// Size the compute threads (`--threads`; default every core): our pool and
/// candle's are both sized from `RAYON_NUM_THREADS` when first used, so call
/// this before any compute.
pub fn set_threads(threads: Option<usize>) {
    if let Some(t) = threads {
        std::env::set_var("RAYON_NUM_THREADS", t.max(1).to_string());
    }
}

/// The CPU this process computes on, as logs and benchmarks name it: its
/// model, the threads our pool uses, the vector extensions the f32 matmul
/// (`gemm`) and the int8 kernels pick from, and the int8 kernels' tier.
pub fn cpu_summary() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| info.lines().find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())))
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    #[allow(unused_mut)]
    let mut features: Vec<&str> = vec![];
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        let known = [
            ("avx2", has!("avx2")),
            ("fma", has!("fma")),
            ("avx512f", has!("avx512f")),
            ("avx512bw", has!("avx512bw")),
            ("avx512vnni", has!("avx512vnni")),
            ("avxvnni", has!("avxvnni")),
        ];
        features.extend(known.iter().filter(|(_, on)| *on).map(|(name, _)| *name));
    }
    let tier = qmatmul::kernel_tier().unwrap_or("?");
    format!("{model}, {} threads; {}; int8 kernels: {tier}", pool::Pool::global().threads(), features.join(" "))
}

/// Set the process up for our compute; call first thing in `main`, before
/// any thread is started.
///
/// Freed memory is kept for reuse instead of being returned to the OS. A
/// training step (and a batch of inference) allocates and frees the same
/// large activation and gradient buffers again and again; with glibc's
/// defaults each comes back as fresh pages that the kernel zeroes on first
/// touch, which took a fifth of a WRPO step. Elsewhere than glibc this part
/// does nothing.
///
/// candle's own worker threads (its element-wise ops) park as soon as they
/// are idle instead of spinning 25,000 times first. Our matmuls and kernels
/// run on `pool::Pool`, whose workers already fill the cores; a candle worker
/// spinning beside them took its core's time away from them, a fifth of a
/// WRPO step on 2 cores. `CANDLE_BARRIER_POOL_SPIN_LIMIT`, if set, wins.
///
/// A `WRPO_ISA` that this CPU cannot run ends the process here, with the
/// tiers it can.
pub fn setup_process() {
    if let Err(e) = qmatmul::kernel_tier() {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        // Before any thread exists, so nothing reads the environment meanwhile.
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "0");
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; it is called before
    // any thread that allocates is started.
    unsafe {
        // Every buffer comes from the heap, never from its own mmap: a freed
        // mmap goes back to the OS, and the next step's buffer of that size
        // (Gemma's 671 MB embedding gradient, the LM head's kept logits)
        // came back as fresh pages, zeroed on first touch, a fifth of its
        // WRPO step. Threads' arenas fall back to the main heap for buffers
        // beyond their 64 MB. The heap is never trimmed (-1: mallopt's int
        // cannot say more than 2 GB, and Gemma's step frees 2.5 GB at once,
        // so a 2 GB threshold still gave 1.5 GB back and faulted it in again
        // every step), and grows 1 GB at a time (address space only: pages
        // are touched as they are used).
        libc::mallopt(libc::M_TRIM_THRESHOLD, -1);
        libc::mallopt(libc::M_TOP_PAD, 1 << 30);
        libc::mallopt(libc::M_MMAP_MAX, 0);
    }
}
