//! Build info target: the `.go.buildinfo` blob parser (both layouts), the
//! module info text parser and Go version strings. For the pre-1.18 layout,
//! which holds pointers, addresses are offsets into the input itself.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| goalloc_fuzz::targets::build_info(data));
