//! wgdit: the Qwen-Image diffusion transformer on any GPU through wgpu and WGSL.
//!
//! The model is a graph ([`graph`]) that the executor ([`exec`]) plans once (activation buffers
//! reused by liveness, bind groups built once) and replays in one submission, counting every
//! dispatch. Layers, bottom up (dependencies point down; docs/architecture.md has the details):
//! - [`dtype`], [`layout`]: plain vocabulary every layer shares (storage dtypes and block sizes;
//!   the joint row layout: `JointShape`, `PerSampleRef`, `SampleRows`; the VAE's conv geometry
//!   `Conv2dShape`). No wgpu.
//! - [`gpu`]: the only module that names wgpu types: adapter choice, buffers, pipelines built
//!   from [`shaders`] (kernels with their shared WGSL preludes) with reflected layouts, dispatch
//!   binding/encoding, timestamps.
//! - [`tensor`]: the GPU tensor, shape + dtype over a buffer.
//! - [`kernels`]: one folder per kernel family: `Params`, launchers returning `gpu::Launch`, a
//!   naive CPU reference (`cpu`) and GPU-vs-CPU unit tests; the WGSL is `shaders/<family>/`.
//! - [`graph`]: an IR with no wgpu types: tensors, typed ops that name their operands, a
//!   builder, reverse-mode autodiff, checkpoint segments and the recompute rewrite.
//! - [`nn`]: graph-building blocks any model composes: Linear layers (grouped GEMMs over
//!   weights in their stored dtype) with runtime and trainable LoRAs.
//! - [`exec`]: graph → plan (buffers by liveness, bind groups built once, a dispatch list with
//!   labels) → run; dispatch counts per op and per layer, GPU time per label.
//! - [`models`]: one folder per model; [`models::qwen_image`] is the Qwen-Image DiT
//!   (`QwenImageTransformer2DModel`): config, names, the forward graph in three modes
//!   (`--qkv standard|merged|fused`, docs/dispatches.md), RoPE table, loading, runtime LoRA,
//!   the modulation precompute, block residency, training graph, the dispatch bench; [`models::qwen_image_vae`] is the VAE
//!   (`AutoencoderKLQwenImage`) for single images: encoder/decoder graphs, loading, tiling (docs/vae.md);
//!   [`models::qwen2_5_vl`] is the text encoder (Qwen2.5-VL language model and vision tower, the image
//!   processor, M-RoPE; resident or streamed; docs/text-encoder.md).
//! - [`pipeline`]: tasks on the models (`wgdit forward`, `wgdit vae encode|decode`, `wgdit generate`,
//!   `wgdit encode-prompt`, `wgdit plan`).
//! - [`text`]: the Qwen2 tokenizer (tokenizer.json, or vocab.json + merges.txt) and the pipelines'
//!   prompt templates with their drop indices.
//! - [`weights`]: memory-mapped safetensors and GGUF checkpoints (files, diffusers folders, ComfyUI
//!   prefixes, merged q/k/v layout) and LoRA files in every common format.
//! - [`convert`]: streaming standard ↔ merged conversion of checkpoints and LoRAs (`wgdit convert`),
//!   and GGUF / fp8 quantization (`wgdit quantize`).
//! - [`train`]: LoRA training: dataset, noise schedule, LoRA parameters, AdamW, checkpoints and
//!   `Trainer::{new, step, finish}` (docs/training.md).
//! - [`fuzzing`]: byte-level entry points of every untrusted-input parser (fuzz/ targets, and a
//!   mutation sweep in the tests).
//! - [`outputs`]: output safety: outputs never replace inputs, stale temporaries are removed, a
//!   training folder is locked by its run; [`budget`]: host and device memory budgets, and the
//!   check that refuses a plan that does not fit before anything is allocated.
//! - [`testing`]: scale-aware tolerances shared by the tests; [`rng`]: the seeded generator.
//! - `main.rs`: the `wgdit` CLI; it only parses, calls the library and prints.

pub mod budget;
pub mod convert;
pub mod dtype;
pub mod error;
pub mod exec;
pub mod fuzzing;
pub mod gpu;
pub mod graph;
pub mod image;
pub mod kernels;
pub mod layout;
pub mod models;
pub mod nn;
pub mod outputs;
pub mod pipeline;
pub mod rng;
pub mod shaders;
pub mod tensor;
pub mod testing;
pub mod text;
pub mod train;
pub mod weights;

pub use error::{Error, Result};
