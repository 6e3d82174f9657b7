//! Checkpoint and LoRA files: reading every format, and `wgdit convert`.

#[path = "../support/synthetic_checkpoint.rs"]
mod synthetic_checkpoint;

mod convert;
mod lora_formats;
mod quant_formats;
