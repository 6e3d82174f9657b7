//! `cargo fuzz run dit_inputs` (docs/fuzzing.md): see `wgdit::fuzzing::dit_inputs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wgdit::fuzzing::dit_inputs(data));
