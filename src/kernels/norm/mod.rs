//! Row-wise norms and reductions: LayerNorm + adaLN modulation, RMSNorm, the per-sample row
//! reductions their backwards use, and the squared norm of gradient clipping.

pub mod layer_norm_mod;
pub mod reduce_rows;
pub mod rms_norm;
pub mod sq_norm;

#[cfg(test)]
mod tests;
