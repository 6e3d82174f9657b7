//! `cargo fuzz run vae_config` (docs/fuzzing.md): see `wgdit::fuzzing::vae_config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wgdit::fuzzing::vae_config(data));
