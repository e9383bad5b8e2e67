//! The goalloc code under fuzzing: the `gobinary` crate's readers (ELF,
//! build info, pclntab, prologues), the probe planner, and the symbolizer
//! and type names of profiles; and its synthetic
//! pclntab writer, for the seed generator. The targets live in
//! [`targets`] so `examples/replay.rs` can run them without libFuzzer.

pub use gobinary::{binary, plan, prologue, symbolize, synth, types};

pub mod targets;
