//! The goalloc code under fuzzing: the `gobinary` crate's readers (ELF,
//! build info, pclntab, prologues) and the probe planner; and its synthetic
//! pclntab writer, for the seed generator. The targets live in
//! [`targets`] so `examples/replay.rs` can run them without libFuzzer.

pub use gobinary::{binary, plan, prologue, synth};

pub mod targets;
