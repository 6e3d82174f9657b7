//! `AutoencoderKLQwenImage` (the Qwen-Image VAE, a Wan 2.1 video VAE) for single images:
//! config (`config.rs`), the module walk and names table (`names.rs`), loading (`load.rs`), the
//! encoder and decoder graphs (`vae.rs`), spatial tiling of the decode (`tiling.rs`) and the
//! runtime that plans and runs them ([`Vae`], `runtime.rs`). docs/vae.md describes the layout,
//! the ops, the attention path, tiling and memory.

pub mod config;
pub mod load;
pub mod names;
pub mod runtime;
pub mod tiling;
pub mod vae;

pub use config::{denormalize_latents, normalize_latents, VaeConfig};
pub use runtime::{planned_memory, resolve_dir, Pass, PlannedMemory, RunInfo, Tiling, Vae};
pub use tiling::TileSpec;

#[cfg(test)]
mod tests;
