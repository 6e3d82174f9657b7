//! `cargo fuzz run model_index` (docs/fuzzing.md): see `wgdit::fuzzing::model_index`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wgdit::fuzzing::model_index(data));
