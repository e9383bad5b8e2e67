//! The goalloc code under fuzzing: `binary` (ELF, build info, pclntab),
//! `prologue` and `plan`.
//!
//! By default their source files are compiled here directly (`#[path]`), with
//! only the dependencies they use: the `goalloc` crate as a whole pulls in
//! kube, tokio, aya and a build script that compiles the eBPF programs, which
//! makes a cold sanitizer build several times slower. `--features crate`
//! fuzzes the real `goalloc` crate instead (same code, slower build; CI
//! builds only the default). If these modules start using another module of
//! the agent, add it below or build with `--features crate`.

#[cfg(feature = "crate")]
pub use goalloc::{binary, plan, prologue};

#[cfg(not(feature = "crate"))]
#[path = "../../agent/src/binary/mod.rs"]
pub mod binary;

#[cfg(not(feature = "crate"))]
#[path = "../../agent/src/prologue.rs"]
pub mod prologue;

#[cfg(not(feature = "crate"))]
#[path = "../../agent/src/plan.rs"]
pub mod plan;

pub mod targets;
