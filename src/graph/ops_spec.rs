//! Parameter structs of the model ops (plain data, no wgpu). Row ranges follow the stream-major
//! joint layout: one buffer holds [text rows of every sample | image rows of every sample], and a
//! grouped op runs one problem per stream.

/// Where a per-sample modulation vector (shift, scale or gate) is read: element
/// `offset + row_of(b, j) * sample_stride + col`, where `row_of(b, j) = b`, or `b + alt_shift`
/// for tokens `j >= split` (Edit-2511 `zero_cond_t`: reference tokens use the t = 0 rows).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ModRef {
    pub offset: usize,
    pub sample_stride: usize,
    pub split: usize,
    pub alt_shift: usize,
}

impl ModRef {
    /// A plain per-sample row with no zero_cond_t split.
    pub fn rows(offset: usize, sample_stride: usize, rows_per_sample: usize) -> ModRef {
        ModRef { offset, sample_stride, split: rows_per_sample, alt_shift: 0 }
    }
    /// The element index of column `col` for token `j` of sample `b`.
    pub fn index(&self, b: usize, j: usize, col: usize) -> usize {
        let row = if j >= self.split { b + self.alt_shift } else { b };
        self.offset + row * self.sample_stride + col
    }
}

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
    pub gate: Option<ModRef>,
    /// LoRA side path: `y += t·Bᵀ` with t's columns `lora_col0 ..+ lora_rank` (t rows = x rows)
    /// and B at element `lora_b_offset` ([n, lora_rank]).
    pub lora_col0: usize,
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
    pub shift: ModRef,
    pub scale: ModRef,
}

/// `y = LayerNorm(x)·(1 + scale) + shift` (no affine, eps 1e-6), grouped.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerNormModOp {
    pub cols: usize,
    pub problems: Vec<NormProblem>,
}

/// Attention / QKV geometry of one joint sequence batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JointShape {
    pub batch: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub s_txt: usize,
    pub s_img: usize,
}

impl JointShape {
    pub fn rows(&self) -> usize {
        self.batch * (self.s_txt + self.s_img)
    }
    pub fn hidden(&self) -> usize {
        self.heads * self.head_dim
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QkvLayout {
    /// One [rows, 3D] tensor (columns q | k | v).
    Merged,
    /// Three [rows, D] tensors.
    Standard,
}

/// One problem of a gated residual `out = res + gate ⊙ branch` (rows `row0 ..`).
#[derive(Clone, Debug, PartialEq)]
pub struct GateProblem {
    pub row0: usize,
    pub rows: usize,
    pub rows_per_sample: usize,
    pub gate: ModRef,
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
