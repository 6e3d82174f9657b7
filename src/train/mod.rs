//! Host-side LoRA training infrastructure (spec qwen-image-dit.md §7; docs/training.md):
//! - [`cache`]: `wgdit cache`, pictures and captions → that dataset (buckets, crops, resume);
//! - [`data`]: the `metadata.jsonl` + safetensors dataset, validation, latent packing, batching;
//!   the picture datasets `cache` reads (DiffSynth, kohya) and the bucket rules;
//! - [`schedule`]: DiffSynth's training timesteps, the bf16 snap and the loss weights;
//! - [`lora`]: LoRA targets (PEFT rule), PEFT init, export in every LoRA format;
//! - [`optim`]: lr schedules and AdamW over many GPU tensors, bound once;
//! - [`checkpoint`]: atomic `checkpoint-<step>/` folders and `loss.csv`;
//! - [`preset`]: `--preset-lora`, LoRAs folded into the frozen base's weights;
//! - [`plot`]: `loss.svg`, the loss curve (raw and smoothed) rewritten at each save;
//! - [`samples`]: `--sample-every`, pictures with the LoRA of a step (`pipeline::generate`);
//! - [`checks`]: flag ranges, outputs against inputs, a resume against its checkpoint, finite results;
//! - [`run`]: `Trainer::{new, step, finish}`, the run of `wgdit train` step by step, and `train`.

pub mod cache;
pub mod checkpoint;
pub mod checks;
pub mod data;
pub mod lora;
pub mod optim;
pub mod plot;
pub mod preset;
pub mod run;
pub mod samples;
pub mod schedule;
