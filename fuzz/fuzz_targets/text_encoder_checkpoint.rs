//! `cargo fuzz run text_encoder_checkpoint` (docs/fuzzing.md): see `wgdit::fuzzing::text_encoder_checkpoint`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wgdit::fuzzing::text_encoder_checkpoint(data));
