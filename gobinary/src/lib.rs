//! Reading Go executables without running them: ELF layout, build info,
//! the Go function table (pclntab), moduledata, function prologues, and the
//! plan of where goalloc's probes go.
//!
//! Pure parsing: no eBPF, no async runtime. Every reader is bounds-checked and
//! reports malformed input as a typed error; the fuzz targets build on this
//! crate alone.

pub mod binary;
pub mod plan;
pub mod prologue;
pub mod runtime;
/// Synthetic function tables for tests and fuzz seeds (feature `synth`).
#[cfg(any(test, feature = "synth"))]
pub mod synth;

pub use binary::{Arch, BinaryError, Function, GoBinary, GoVersion};
