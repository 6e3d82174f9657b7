//! `cargo +nightly fuzz run prompt_embeds`: see `wgdit::fuzzing::prompt_embeds`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wgdit::fuzzing::prompt_embeds(data));
