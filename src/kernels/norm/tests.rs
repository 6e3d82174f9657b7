//! GPU-vs-CPU tests of the norm family.

mod layer_norm_mod;
mod reduce_rows;
mod rms_norm;
