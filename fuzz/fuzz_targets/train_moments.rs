//! `cargo fuzz run train_moments` (docs/fuzzing.md): see `wgdit::fuzzing::train_moments`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wgdit::fuzzing::train_moments(data));
