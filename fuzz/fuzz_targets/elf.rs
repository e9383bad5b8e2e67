//! ELF reader target: `Elf::parse` and every accessor, with addresses taken
//! from the parsed headers (and just around them).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| goalloc_fuzz::targets::elf(data));
