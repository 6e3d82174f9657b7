//! `cargo fuzz run processor_config` (docs/fuzzing.md): see `wgdit::fuzzing::processor_config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wgdit::fuzzing::processor_config(data));
