//! `cargo fuzz run scheduler_config` (docs/fuzzing.md): see `wgdit::fuzzing::scheduler_config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wgdit::fuzzing::scheduler_config(data));
