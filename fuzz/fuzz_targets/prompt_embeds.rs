//! `cargo fuzz run prompt_embeds` (docs/fuzzing.md): see `wgdit::fuzzing::prompt_embeds`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wgdit::fuzzing::prompt_embeds(data));
