//! `cargo fuzz run tokenizer_json` (docs/fuzzing.md): see `wgdit::fuzzing::tokenizer_json`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wgdit::fuzzing::tokenizer_json(data));
