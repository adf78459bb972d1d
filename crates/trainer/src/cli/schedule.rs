use anyhow::Result;
use clap::Args;
use wrpo_trainer::schedule::{Schedule, Settings};

use super::training::Steps;

#[derive(Args)]
pub struct ScheduleArgs {
    /// Training examples (rows of the pairs or SFT set).
    #[arg(long)]
    examples: u64,
    #[command(flatten)]
    steps: Steps,
    /// Peak learning rate.
    #[arg(long, default_value = "3e-7")]
    lr: f64,
    /// Final fusion coefficient alpha (recipe: 0.1).
    #[arg(long, default_value_t = 0.1)]
    alpha_max: f64,
    /// Keep alpha at alpha_max from the first step.
    #[arg(long)]
    static_alpha: bool,
}

impl ScheduleArgs {
    /// Every optimizer step's learning rate and alpha, as CSV.
    pub fn run(self) -> Result<()> {
        let s = &self.steps;
        let schedule = Schedule::new(&Settings {
            examples: self.examples,
            micro_batch: s.micro_batch,
            grad_accum: s.grad_accum,
            epochs: s.epochs,
            warmup_ratio: s.warmup_ratio,
            lr: self.lr,
            lr_schedule: s.lr_schedule,
            alpha_max: self.alpha_max,
            static_alpha: self.static_alpha,
        });
        println!("step,lr,alpha");
        for step in 0..schedule.total_steps {
            println!("{step},{:e},{}", schedule.lr(step), schedule.alpha(step));
        }
        Ok(())
    }
}
