//! Allocation profiles: samples of where (call stacks) and what (Go types)
//! a process allocates, written as pprof profiles that `go tool pprof`
//! reads like Go's own heap profiles.
//!
//! The probe side hands in [`AllocSample`]s aggregated per process; the
//! symbols (frames with inlining, type names) come from the executable
//! alone through `gobinary::symbolize` and `gobinary::types`, so stripped
//! and PIE binaries work, and no process memory is read.
//! Several processes can share one profile, labelled by `pid`; [`table`]
//! ranks a profile's call sites and types for the terminal.

pub mod collect;
pub mod command;
pub mod endpoint;
pub mod pprof;
mod proto;
pub mod session;
pub mod table;

pub use collect::Collector;

pub use pprof::{
    AllocSample, OtherMapping, PID_LABEL, ProcessImage, ProcessSamples, ProfileError, ProfileMeta,
    REFLECT_MADE, UNTYPED, build, build_many, scale_heap_sample, write_gzipped, write_gzipped_many,
};
pub use proto::Profile;
pub use table::{Ranked, TopTables, top_tables};
