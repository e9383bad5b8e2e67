//! Allocation profiles: samples of where (call stacks) and what (Go types)
//! a process allocates, written as pprof profiles that `go tool pprof`
//! reads like Go's own heap profiles.
//!
//! The probe side hands in [`AllocSample`]s aggregated per process; the
//! symbols (frames with inlining, type names) come from the executable
//! alone through `gobinary::symbolize` and `gobinary::types`, so stripped
//! and PIE binaries work, and no process memory is read.

pub mod pprof;
mod proto;

pub use pprof::{
    AllocSample, OtherMapping, ProcessImage, ProfileError, ProfileMeta, REFLECT_MADE, UNTYPED,
    build, scale_heap_sample, write_gzipped,
};
pub use proto::Profile;
