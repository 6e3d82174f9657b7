//! Tasks on top of the models: `wgdit forward` (one DiT call from an inputs file) and
//! `wgdit vae encode|decode` (`vae.rs`).

pub mod forward;
pub mod inputs;
pub mod vae;
