//! `cargo fuzz run train_sample` (docs/fuzzing.md): see `wgdit::fuzzing::train_sample`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wgdit::fuzzing::train_sample(data));
