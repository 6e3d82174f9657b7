//! GPU-vs-CPU tests of the norm family.

mod channel;
mod layer_norm_mod;
mod reduce_rows;
mod rms_norm;
