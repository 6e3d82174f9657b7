//! `cargo fuzz run prompt` (docs/fuzzing.md): see `wgdit::fuzzing::prompt`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wgdit::fuzzing::prompt(data));
