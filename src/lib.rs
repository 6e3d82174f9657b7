//! wgdit: the Qwen-Image diffusion transformer on any GPU through wgpu and WGSL.
//!
//! Layers, bottom up (dependencies point down):
//! - [`gpu`]: the only module that names wgpu types: adapter choice, buffers, pipelines built
//!   from [`shaders`] with reflected layouts, dispatch binding/encoding, timestamps.
//! - [`tensor`]: shape + storage dtype (f32, f16, bf16) over a GPU buffer; host dtype codecs.
//! - [`kernels`]: one file per op: `Params`, launchers returning `gpu::Launch`, and a naive CPU
//!   reference (`<op>::cpu`).
//! - [`graph`]: an IR with no wgpu types: tensors, typed ops, a builder, saved-for-backward
//!   declarations and checkpoint segments.
//! - [`exec`]: graph → plan (buffers by liveness, bind groups built once, a dispatch list with
//!   labels) → run; dispatch counts per op and per layer, GPU time per label.
//! - [`weights`]: memory-mapped safetensors checkpoints (files, diffusers folders, ComfyUI
//!   prefixes, merged q/k/v layout) and LoRA files in every common format.
//! - [`convert`]: streaming standard ↔ merged conversion of checkpoints and LoRAs (`wgdit convert`).
//! - [`train`]: host side of LoRA training: dataset, noise schedule, LoRA parameters, AdamW
//!   bookkeeping, checkpoints (docs/training.md).
//! - `main.rs`: the `wgdit` CLI; it only parses, calls the library and prints.

pub mod convert;
pub mod error;
pub mod exec;
pub mod gpu;
pub mod graph;
pub mod kernels;
pub mod model;
pub mod rng;
pub mod shaders;
pub mod tensor;
pub mod testing;
pub mod train;
pub mod weights;

pub use error::{Error, Result};
