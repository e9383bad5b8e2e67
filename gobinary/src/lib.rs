//! Reading Go executables without running them: ELF layout, build info,
//! the Go function table (pclntab), moduledata, function prologues, the
//! plan of where goalloc's probes go, and symbols for profiles: frames of a
//! pc with inlining ([`symbolize`]) and names of type descriptors
//! ([`types`]).
//!
//! Pure parsing: no eBPF, no async runtime. Every reader is bounds-checked and
//! reports malformed input as a typed error; the fuzz targets build on this
//! crate alone.

pub mod binary;
pub mod plan;
pub mod prologue;
pub mod runtime;
pub mod site;
pub mod symbolize;
/// Synthetic function tables for tests and fuzz seeds (feature `synth`).
#[cfg(any(test, feature = "synth"))]
pub mod synth;
pub mod types;

pub use binary::{Arch, BinaryError, Function, GoBinary, GoVersion};
