//! `cargo fuzz run sharded_index` (docs/fuzzing.md): see `wgdit::fuzzing::sharded_index`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wgdit::fuzzing::sharded_index(data));
