//! `cargo fuzz run train_metadata` (docs/fuzzing.md): see `wgdit::fuzzing::train_metadata`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wgdit::fuzzing::train_metadata(data));
