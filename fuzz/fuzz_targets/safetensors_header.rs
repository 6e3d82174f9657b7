//! `cargo fuzz run safetensors_header` (docs/fuzzing.md): see `wgdit::fuzzing::safetensors_header`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wgdit::fuzzing::safetensors_header(data));
