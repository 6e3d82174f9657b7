//! `cargo fuzz run dataset_csv` (docs/fuzzing.md): see `wgdit::fuzzing::dataset_csv`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wgdit::fuzzing::dataset_csv(data));
