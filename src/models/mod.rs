//! The models, one folder each: config, the one names table, graph builders and the model's own
//! CPU pieces (RoPE tables, latent packing). They build graphs from [`crate::nn`] blocks and run
//! them through [`crate::exec`].

pub mod qwen2_5_vl;
pub mod qwen_image;
pub mod qwen_image_vae;
