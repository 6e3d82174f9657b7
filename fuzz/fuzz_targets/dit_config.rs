//! `cargo fuzz run dit_config` (docs/fuzzing.md): see `wgdit::fuzzing::dit_config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wgdit::fuzzing::dit_config(data));
