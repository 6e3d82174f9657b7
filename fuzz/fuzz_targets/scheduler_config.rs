//! `cargo +nightly fuzz run scheduler_config`: see `wgdit::fuzzing::scheduler_config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wgdit::fuzzing::scheduler_config(data));
