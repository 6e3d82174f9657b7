//! `cargo fuzz run vae_latents` (docs/fuzzing.md): see `wgdit::fuzzing::vae_latents`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wgdit::fuzzing::vae_latents(data));
