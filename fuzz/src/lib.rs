//! The goalloc code under fuzzing: the `gobinary` crate's readers (ELF,
//! build info, pclntab, prologues) and the probe planner. The targets live in
//! [`targets`] so `examples/replay.rs` can run them without libFuzzer.

pub use gobinary::{binary, plan, prologue};

pub mod targets;
