//! Tasks on top of the models: `wgdit forward` (one DiT call from an inputs file).

pub mod forward;
pub mod inputs;
