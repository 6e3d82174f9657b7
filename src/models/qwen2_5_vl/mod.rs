//! The Qwen2.5-VL text encoder of the Qwen-Image pipelines (`Qwen2_5_VLForConditionalGeneration`,
//! transformers; spec vae-and-text-encoder.md PART 2): config ([`config`]), checkpoint names in
//! both key layouts ([`names`]), the weights ([`weights`]) and the M-RoPE position table
//! ([`rope`]).

pub mod config;
pub mod names;
pub mod rope;
pub mod weights;

pub use config::EncoderConfig;
