//! Go function table target: header, function list (with and without exact
//! code sizes), and the candidate scan used when there is no section.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| goalloc_fuzz::targets::pclntab(data));
