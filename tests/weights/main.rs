//! Checkpoint and LoRA files: reading every format (safetensors, GGUF), `wgdit convert` and
//! `wgdit quantize`.

#[path = "../support/synthetic_checkpoint.rs"]
mod synthetic_checkpoint;

mod convert;
mod gguf;
mod lora_formats;
mod quant_formats;
mod quantize;
