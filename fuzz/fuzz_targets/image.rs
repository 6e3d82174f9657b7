//! `cargo fuzz run image` (docs/fuzzing.md): see `wgdit::fuzzing::image`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wgdit::fuzzing::image(data));
