//! Prints the CPU the benchmarks run on, as our binaries log it: model,
//! threads, vector extensions and the int8 kernels' tier (WRPO_ISA forces a
//! lower one).
fn main() {
    wrpo_llm::setup_process();
    println!("{}", wrpo_llm::cpu_summary());
}
