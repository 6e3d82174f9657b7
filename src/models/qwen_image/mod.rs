//! The Qwen-Image diffusion transformer (diffusers `QwenImageTransformer2DModel`, spec
//! qwen-image-dit.md): configuration, the forward graph in three execution modes, and the
//! mapping from checkpoint tensors to the graph's packed parameters.

pub mod bench;
pub mod config;
pub mod dit;
pub mod latents;
pub mod load;
pub mod lora;
pub mod modulation;
pub mod names;
pub mod open;
pub mod precompute;
pub mod residency;
pub mod rope;
pub mod runtime;
pub mod stream;
pub mod training;

pub use config::DitConfig;
pub use dit::{build_forward, ForwardShape, QkvMode};
pub use modulation::Modulation;
