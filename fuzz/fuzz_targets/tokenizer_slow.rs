//! `cargo fuzz run tokenizer_slow` (docs/fuzzing.md): see `wgdit::fuzzing::tokenizer_slow`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wgdit::fuzzing::tokenizer_slow(data));
