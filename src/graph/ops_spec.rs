//! Parameter structs of the model ops (plain data, no wgpu). Row ranges follow the stream-major
//! joint layout: one buffer holds [text rows of every sample | image rows of every sample], and a
//! grouped op runs one problem per stream (`crate::layout`).

pub use crate::layout::{AttnOptions, Conv2dShape, ConvOut, JointShape, PerSampleRef, QkvLayout};

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

impl GemmProblem {
    /// Rows `row0 .. row0 + rows` as one sample, weight and bias at offset 0, no gate.
    pub fn rows(row0: usize, rows: usize) -> GemmProblem {
        GemmProblem { row0, rows, rows_per_sample: rows, w_offset: 0, b_offset: 0, gate: None, lora_b_offset: 0 }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    None,
    GeluTanh,
}

/// The parameters of `y = act(x·Wᵀ + b)` over up to 4 problems (the operands, bias, gated
/// residual and LoRA side path included, are named by `Op::Gemm`).
#[derive(Clone, Debug, PartialEq)]
pub struct GemmOp {
    pub n: usize,
    pub k: usize,
    pub problems: Vec<GemmProblem>,
    pub act: Activation,
    /// First column of y written (y may be wider than n).
    pub y_col0: usize,
    /// `y += …` instead of `y = …` (y is read and written; listed as an output only).
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
    /// Exact GELU `x·Φ(x)` (torch `nn.GELU()` default).
    GeluErf,
}

impl Ew {
    pub fn is_unary(self) -> bool {
        matches!(self, Ew::Silu | Ew::GeluTanh | Ew::GeluErf)
    }
}

/// A 2-D convolution over a pixels-major image (`kernels::conv`): `y = alpha·conv(x, W) (+ b)
/// (+ res)`, the input image starting at pixel `x_pix0`, the output rows placed by `out`.
#[derive(Clone, Debug, PartialEq)]
pub struct ConvOp {
    pub shape: Conv2dShape,
    pub alpha: f32,
    pub x_pix0: usize,
    pub out: ConvOut,
    /// `y += …` (the residual is y itself: the VAE's resnets update their input in place).
    pub accumulate: bool,
}

impl ConvOp {
    /// A plain convolution of a whole image into a fresh `[pixels, co]` tensor.
    pub fn plain(shape: Conv2dShape) -> ConvOp {
        ConvOp { shape, alpha: 1.0, x_pix0: 0, out: ConvOut::Rows { row0: 0 }, accumulate: false }
    }
}
