use anyhow::Result;
use clap::{Parser, Subcommand};
use wrpo_trainer::schedule::Schedule;

/// Train the target model: SFT on y_ws, then WRPO on (x, y_ws, y_wt, y_l).
#[derive(Parser)]
#[command(name = "wrpo-train", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the learning-rate and alpha schedule of a run as CSV
    /// (step, lr, alpha), to check a configuration before training.
    Schedule {
        /// Training examples (rows of the pairs or SFT set).
        #[arg(long)]
        examples: u64,
        /// Examples per forward/backward pass.
        #[arg(long, default_value_t = 1)]
        micro_batch: u64,
        /// Micro-batches per optimizer step (global batch = micro_batch * grad_accum).
        #[arg(long, default_value_t = 128)]
        grad_accum: u64,
        #[arg(long, default_value_t = 1.0)]
        epochs: f64,
        /// Fraction of the steps spent warming the learning rate up.
        #[arg(long, default_value_t = 0.1)]
        warmup_ratio: f64,
        /// Peak learning rate (recipe: 3e-7 for WRPO, 7e-6 for SFT).
        #[arg(long, default_value_t = 3e-7)]
        lr: f64,
        /// Final fusion coefficient alpha (recipe: 0.1).
        #[arg(long, default_value_t = 0.1)]
        alpha_max: f64,
        /// Keep alpha at alpha_max from the first step.
        #[arg(long)]
        static_alpha: bool,
    },
}

fn main() {
    wrpo_common::exit_on_error("wrpo-train", run(Cli::parse()));
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Schedule { examples, micro_batch, grad_accum, epochs, warmup_ratio, lr, alpha_max, static_alpha } => {
            let s = Schedule::new(examples, micro_batch, grad_accum, epochs, warmup_ratio, lr, alpha_max, static_alpha);
            println!("step,lr,alpha");
            for step in 0..s.total_steps {
                println!("{step},{:e},{}", s.lr(step), s.alpha(step));
            }
        }
    }
    Ok(())
}
