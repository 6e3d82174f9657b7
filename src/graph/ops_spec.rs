//! Parameter structs of the model ops (plain data, no wgpu). Row ranges follow the stream-major
//! joint layout: one buffer holds [text rows of every sample | image rows of every sample], and a
//! grouped op runs one problem per stream (`crate::layout`).

pub use crate::layout::{JointShape, PerSampleRef, QkvLayout};

/// One problem of a grouped GEMM: rows `row0 .. row0 + rows` of x produce the same rows of y
/// with the weight at element `w_offset` ([n, k] row-major).
#[derive(Clone, Debug, PartialEq)]
pub struct GemmProblem {
    pub row0: usize,
    pub rows: usize,
    pub rows_per_sample: usize,
    pub w_offset: usize,
    pub b_offset: usize,
    /// Gated residual `y = res + gate ⊙ (x·Wᵀ + b)` (res rows = y rows).
    pub gate: Option<PerSampleRef>,
    /// LoRA side path: `y += t·Bᵀ` (t rows = x rows) with B at element `lora_b_offset`
    /// ([n, lora_rank]).
    pub lora_b_offset: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    None,
    GeluTanh,
}

/// `y = act(x·Wᵀ + b)` with optional gated residual and LoRA, over up to 4 problems.
#[derive(Clone, Debug, PartialEq)]
pub struct GemmOp {
    pub n: usize,
    pub k: usize,
    pub problems: Vec<GemmProblem>,
    pub bias: bool,
    pub act: Activation,
    pub residual: bool,
    /// Total LoRA rank (columns of t); 0 = no LoRA.
    pub lora_rank: usize,
    /// First column of y written (y may be wider than n).
    pub y_col0: usize,
    /// `y += …` instead of `y = …` (y is read and written; not listed as an input).
    pub accumulate: bool,
}

/// One problem of a row-wise norm: rows `row0 .. row0 + rows` of x → the same rows of y.
#[derive(Clone, Debug, PartialEq)]
pub struct NormProblem {
    pub row0: usize,
    pub rows: usize,
    pub rows_per_sample: usize,
    pub shift: PerSampleRef,
    pub scale: PerSampleRef,
}

/// `y = LayerNorm(x)·(1 + scale) + shift` (no affine, eps 1e-6), grouped.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerNormModOp {
    pub cols: usize,
    pub problems: Vec<NormProblem>,
}

/// One problem of a gated residual `out = res + gate ⊙ branch` (rows `row0 ..`).
#[derive(Clone, Debug, PartialEq)]
pub struct GateProblem {
    pub row0: usize,
    pub rows: usize,
    pub rows_per_sample: usize,
    pub gate: PerSampleRef,
}

/// A trainable LoRA on columns `y_col0 .. y_col0 + n` of a GEMM output, for the rows of each
/// problem `(row0, rows)`: `t = scale·x·Aᵀ`, `y += t·Bᵀ`.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraApplyOp {
    pub k: usize,
    pub n: usize,
    pub rank: usize,
    pub scale: f32,
    pub y_col0: usize,
    pub problems: Vec<(usize, usize)>,
}

/// Element-wise f32 ops of the graph (lowered to `kernels::elementwise`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ew {
    Add,
    Mul,
    Silu,
    GeluTanh,
}

impl Ew {
    pub fn is_unary(self) -> bool {
        matches!(self, Ew::Silu | Ew::GeluTanh)
    }
}
