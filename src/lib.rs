//! wgdit: the Qwen-Image diffusion transformer on any GPU through wgpu and WGSL.
//!
//! The model is a graph ([`graph`]) that the executor ([`exec`]) plans once (activation buffers
//! reused by liveness, bind groups built once) and replays in one submission, counting every
//! dispatch. Layers, bottom up (dependencies point down; docs/architecture.md has the details):
//! - [`gpu`]: the only module that names wgpu types: adapter choice, buffers, pipelines built
//!   from [`shaders`] with reflected layouts, dispatch binding/encoding, timestamps.
//! - [`tensor`]: shape + storage dtype (f32, f16, bf16) over a GPU buffer; host dtype codecs.
//! - [`kernels`]: one file per op: `Params`, launchers returning `gpu::Launch`, and a naive CPU
//!   reference (`<op>::cpu`); the WGSL is `shaders/<op>.wgsl`.
//! - [`graph`]: an IR with no wgpu types: tensors, typed ops, a builder, saved-for-backward
//!   declarations and checkpoint segments.
//! - [`exec`]: graph → plan (buffers by liveness, bind groups built once, a dispatch list with
//!   labels) → run; dispatch counts per op and per layer, GPU time per label.
//! - [`model`]: the Qwen-Image DiT (`QwenImageTransformer2DModel`): config, the forward graph in
//!   three modes (`--qkv standard|merged|fused`, docs/dispatches.md), loading, runtime LoRA,
//!   `wgdit forward` and the dispatch bench.
//! - [`weights`]: memory-mapped safetensors checkpoints (files, diffusers folders, ComfyUI
//!   prefixes, merged q/k/v layout) and LoRA files in every common format.
//! - [`convert`]: streaming standard ↔ merged conversion of checkpoints and LoRAs (`wgdit convert`).
//! - [`testing`]: scale-aware tolerances shared by the tests; [`rng`]: the seeded generator.
//! - [`train`]: host side of LoRA training: dataset, noise schedule, LoRA parameters, AdamW
//!   bookkeeping, checkpoints (docs/training.md).
//! - `main.rs`: the `wgdit` CLI; it only parses, calls the library and prints.

pub mod convert;
pub mod dtype;
pub mod error;
pub mod exec;
pub mod gpu;
pub mod graph;
pub mod kernels;
pub mod layout;
pub mod models;
pub mod pipeline;
pub mod rng;
pub mod shaders;
pub mod tensor;
pub mod testing;
pub mod train;
pub mod weights;

pub use error::{Error, Result};
