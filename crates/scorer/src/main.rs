//! `wrpo-score`: its subcommands, each in its own module under `cli/`.

mod cli;

use clap::{Parser, Subcommand};

/// Score samples with a reward model and build the SFT set and WRPO pairs.
#[derive(Parser)]
#[command(name = "wrpo-score", version, about)]
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
    /// Score every sample with a reward into `scored` shards under OUT/<model>/.
    /// Rerunning the same command continues an interrupted run.
    Score(cli::score::ScoreArgs),
    /// Compare models on held-out prompts from their scored samples: mean
    /// reward and win rate against a baseline (95% bootstrap intervals),
    /// numeric accuracy and ROUGE-L; OUT/report.md, report.png, report.parquet.
    Report(cli::report::ReportArgs),
    /// The dose-response: per level of source strength (a pairs file with its
    /// own y_ws) and arm (a recipe trained at that level), the held-out paired
    /// difference against a baseline (DPO on y_wt), by the level's mean training
    /// gap y_ws - y_wt, with slopes; OUT/dose.md, dose.png, dose-points.parquet,
    /// dose-slopes.parquet.
    Dose(cli::dose::DoseArgs),
    /// Split the train prompts into an SFT part and a preference part, and
    /// write the SFT set (x, y_ws) and the preference prompts.
    SftSet(cli::sft_set::SftSetArgs),
    /// Build preference pairs (x, y_ws, y_wt, y_l) for the preference prompts.
    Pairs(cli::pairs::PairsArgs),
    /// The training set of a stronger source: the SFT part's prompts with
    /// their reference answers, refused where a prompt is also a preference,
    /// validation or test prompt.
    ReferenceSet(cli::reference_set::ReferenceSetArgs),
    /// Write pairs in the shape a GPU trainer reads: the official WRPO
    /// recipe's (chosen = [y_ws, y_wt], rejected = [y_l]) or TRL's
    /// conversational preference data; Parquet or JSON lines by OUT's extension.
    Export(cli::export::ExportArgs),
}

fn main() {
    wrpo_llm::setup_process();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Score(args) => args.run(),
        Command::Report(args) => args.run(),
        Command::Dose(args) => args.run(),
        Command::SftSet(args) => args.run(),
        Command::Pairs(args) => args.run(),
        Command::ReferenceSet(args) => args.run(),
        Command::Export(args) => args.run(),
    };
    wrpo_common::exit_on_error("wrpo-score", cli.verbose, result);
}
