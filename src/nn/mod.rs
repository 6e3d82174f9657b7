//! Graph-building blocks that any model uses, above `graph` and below `models`: they add ops to a
//! [`Graph`](crate::graph::Graph) and know nothing of a GPU (the layering check in `.ci/run` keeps
//! `gpu`, `kernels` and `tensor` out) nor of one model's names.
//!
//! - [`linear`]: Linear layers as grouped GEMMs over checkpoint weights in their stored dtype,
//!   with runtime LoRAs (the GEMM's side path) and trainable LoRAs.

pub mod linear;

pub use linear::{Emit, Linears, LoraPart, LoraParts, ParamSource, TrainLora};
