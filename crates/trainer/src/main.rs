//! `wrpo-train`: its subcommands, each in its own module under `cli/`.

mod cli;

use clap::{Parser, Subcommand};

/// Train the target model: SFT on y_ws, then WRPO on (x, y_ws, y_wt, y_l).
#[derive(Parser)]
#[command(name = "wrpo-train", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// On an error, also print any backtrace a library captured (RUST_BACKTRACE).
    // Last in every subcommand's list, not wherever the count of its own flags puts it.
    #[arg(short, long, global = true, display_order = 1000)]
    verbose: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Supervised fine-tuning on (x, y_ws): Target-SFT, the model sampled on
    /// the preference prompts and the frozen reference of WRPO.
    Sft(cli::sft::SftArgs),
    /// Fill ref_logp_y_ws / _y_wt / _y_l of a pairs file with the frozen
    /// reference model (computed once: the reference never changes).
    RefLogps(cli::ref_logps::RefArgs),
    /// Preference training: WRPO, or a baseline (DPO, SimPO, IPO, ...) on the same pairs.
    Wrpo(cli::wrpo::WrpoArgs),
    /// Turn a Hugging Face Trainer run's log (TRL's, wrpo_trl's:
    /// trainer_state.json) into a `metrics` dataset and its plot, as
    /// `wrpo-train` writes them for its own runs.
    ImportMetrics(cli::import_metrics::ImportArgs),
    /// Print the learning-rate and alpha schedule of a run as CSV
    /// (step, lr, alpha), to check a configuration before training.
    Schedule(cli::schedule::ScheduleArgs),
}

fn main() {
    wrpo_llm::setup_process();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Sft(args) => args.run(),
        Command::RefLogps(args) => args.run(),
        Command::Wrpo(args) => args.run(),
        Command::ImportMetrics(args) => args.run(),
        Command::Schedule(args) => args.run(),
    };
    wrpo_common::exit_on_error("wrpo-train", cli.verbose, result);
}
