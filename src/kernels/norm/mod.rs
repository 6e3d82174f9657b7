//! Row-wise norms and reductions: LayerNorm + adaLN modulation, RMSNorm, the per-sample row
//! reductions their backwards use, the squared norm of gradient clipping, and the VAE's channel
//! RMS norm denominators and the row softmax of its mid-block attention.

pub mod channel_norm_denom;
pub mod layer_norm_mod;
pub mod reduce_rows;
pub mod rms_norm;
pub mod softmax_rows;
pub mod sq_norm;

#[cfg(test)]
mod tests;
