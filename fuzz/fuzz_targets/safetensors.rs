//! `cargo fuzz run safetensors` (docs/fuzzing.md): see `wgdit::fuzzing::safetensors`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wgdit::fuzzing::safetensors(data));
