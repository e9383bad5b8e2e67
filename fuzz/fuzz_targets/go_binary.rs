//! Whole-file target: `GoBinary::parse` on arbitrary bytes, then every
//! accessor (address lookup included), the prologue decoder on every
//! function and the probe planner.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| goalloc_fuzz::targets::go_binary(data));
