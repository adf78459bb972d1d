//! Library side of `wrpo-sample`: prompt import, and N samples per prompt
//! from local models (continuous batching) or OpenAI-compatible servers.

pub mod backend;
pub mod generate;
pub mod import;
pub mod local;
pub mod served;
pub mod spec;
