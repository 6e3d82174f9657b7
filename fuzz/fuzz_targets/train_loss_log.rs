//! `cargo fuzz run train_loss_log` (docs/fuzzing.md): see `wgdit::fuzzing::train_loss_log`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wgdit::fuzzing::train_loss_log(data));
