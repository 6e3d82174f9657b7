//! `cargo fuzz run lora_keys` (docs/fuzzing.md): see `wgdit::fuzzing::lora_keys`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wgdit::fuzzing::lora_keys(data));
