//! Reading and writing weights: memory-mapped safetensors and GGUF files, diffusers model folders
//! (single or sharded), ComfyUI key prefixes, standard vs merged q/k/v layout, and LoRA files in
//! the diffusers/PEFT, DiffSynth, kohya/musubi and ComfyUI formats.
//!
//! The DiT loader uploads tensors straight from [`TensorView::bytes`] (a slice of the map): no
//! widening and no host copy of the weights.

pub mod checkpoint;
pub mod gguf;
pub mod gguf_write;
pub mod lora;
mod lora_write;
pub mod safetensors;
pub mod writer;

pub use checkpoint::Checkpoint;
pub use lora::{read_lora, write_lora, HostTensor, Lora, LoraFormat, LoraModule, ModulePaths};
pub use safetensors::{SafeFile, TensorView};
