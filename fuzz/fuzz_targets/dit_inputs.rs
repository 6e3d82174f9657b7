//! `cargo +nightly fuzz run dit_inputs`: see `wgdit::fuzzing::dit_inputs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wgdit::fuzzing::dit_inputs(data));
