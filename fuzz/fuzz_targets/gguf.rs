//! `cargo fuzz run gguf` (docs/fuzzing.md): see `wgdit::fuzzing::gguf`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wgdit::fuzzing::gguf(data));
