//! `cargo fuzz run train_state` (docs/fuzzing.md): see `wgdit::fuzzing::train_state`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wgdit::fuzzing::train_state(data));
