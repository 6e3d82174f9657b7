//! Tasks on top of the models: `wgdit forward` (one DiT call from an inputs file) and the
//! sampling pipeline (`folder`: diffusers pipeline folders).

pub mod cfg;
pub mod dims;
pub mod embeds;
pub mod folder;
pub mod forward;

pub mod inputs;
pub mod noise;
pub mod sample;
pub mod scheduler;
