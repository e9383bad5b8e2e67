//! Prologue decoder target: the same bytes as amd64 and as arm64 code.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| goalloc_fuzz::targets::prologue(data));
