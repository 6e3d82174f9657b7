//! Tasks on top of the models: `wgdit forward` (one DiT call from an inputs file), `wgdit vae
//! encode|decode` (`vae.rs`) and the sampling pipeline of `wgdit generate`: diffusers pipeline
//! folders (`folder`), prompt embeddings (`embeds`), noise, schedule, CFG, image sizes (`noise`,
//! `scheduler`, `cfg`, `dims`), the denoising loop (`sample`) and prompt text → embeddings
//! (`prompt`, `wgdit encode-prompt`); `wgdit bench generate` (`bench`), `wgdit bench kernels`
//! (`kernel_bench`) and `wgdit plan` (`plan`).

pub mod bench;
pub mod cfg;
pub mod dims;
pub mod embeds;
pub mod folder;
pub mod forward;
pub mod generate;
pub mod inputs;
pub mod kernel_bench;
pub mod noise;
pub mod plan;
pub mod prompt;
pub mod sample;
pub mod scheduler;
pub mod vae;
