//! `cargo fuzz run noise` (docs/fuzzing.md): see `wgdit::fuzzing::noise`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wgdit::fuzzing::noise(data));
