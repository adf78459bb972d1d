//! Parquet I/O for [`Dataset`](crate::Dataset)s, one job a file:
//! provenance metadata (`provenance`) and its inputs' content hashes
//! (`content`), atomic files (`atomic`), single-file
//! writes (`write`), sharded outputs with their lock and resume
//! (`shards`), validating reads (`read`), and the binaries' path check
//! (`paths`).

mod atomic;
mod content;
mod paths;
mod provenance;
mod read;
mod shards;
mod write;

pub use atomic::*;
pub use content::*;
pub use paths::*;
pub use provenance::*;
pub use read::*;
pub use shards::*;
pub use write::*;

/// Metadata keys written into every file's Parquet key-value metadata.
pub mod keys {
    pub const SCHEMA: &str = "wrpo.schema";
    pub const VERSION: &str = "wrpo.schema_version";
    pub const PRODUCER: &str = "wrpo.producer";
    pub const COMMAND: &str = "wrpo.command";
    pub const CONFIG: &str = "wrpo.config";
    pub const INPUTS: &str = "wrpo.inputs";
}
