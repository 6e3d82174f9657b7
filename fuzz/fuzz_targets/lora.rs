//! `cargo fuzz run lora` (docs/fuzzing.md): see `wgdit::fuzzing::lora`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wgdit::fuzzing::lora(data));
