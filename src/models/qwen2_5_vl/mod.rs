//! The Qwen2.5-VL text encoder of the Qwen-Image pipelines (`Qwen2_5_VLForConditionalGeneration`,
//! transformers; spec vae-and-text-encoder.md PART 2): config ([`config`]), checkpoint names in
//! both key layouts ([`names`]), the weights ([`weights`]), the M-RoPE position table
//! ([`rope`]), the Qwen2-VL image processor ([`processor`]), the image path's index tables ([`positions`]), the language model's graph ([`lm`]) and the vision tower's ([`vision`]) and its runs, resident or streamed ([`runtime`]).

pub mod config;
pub mod lm;
pub mod names;
pub mod positions;
pub mod processor;
pub mod rope;
pub mod runtime;
pub mod vision;
pub mod weights;

pub use config::EncoderConfig;
