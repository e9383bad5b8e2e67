//! Symbolizer target: the pc-value table decoder and the inline tree
//! reader on raw bytes (the whole-binary symbolizer runs in `go_binary`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| goalloc_fuzz::targets::symbolize(data));
