//! `cargo fuzz run dit_checkpoint` (docs/fuzzing.md): see `wgdit::fuzzing::dit_checkpoint`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wgdit::fuzzing::dit_checkpoint(data));
