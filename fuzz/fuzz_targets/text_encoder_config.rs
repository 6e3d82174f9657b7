//! `cargo fuzz run text_encoder_config` (docs/fuzzing.md): see `wgdit::fuzzing::text_encoder_config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wgdit::fuzzing::text_encoder_config(data));
