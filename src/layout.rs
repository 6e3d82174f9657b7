//! The stream-major joint row layout and its vocabulary, shared by graph ops and kernel
//! arguments (plain data, no wgpu): one activation buffer of R = B·S_txt + B·S_img rows holds
//! the text rows of every sample first, then the image rows of every sample (target image, then
//! references). docs/architecture.md draws it.

/// The geometry of one joint text + image sequence batch (attention, QK-norm + RoPE).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JointShape {
    pub batch: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub s_txt: usize,
    pub s_img: usize,
}

impl JointShape {
    /// Joint sequence length S = s_txt + s_img.
    pub fn seq(&self) -> usize {
        self.s_txt + self.s_img
    }
    /// Joint rows R = B·S.
    pub fn rows(&self) -> usize {
        self.batch * self.seq()
    }
    /// D = H·Dh.
    pub fn hidden(&self) -> usize {
        self.heads * self.head_dim
    }
    /// (row, head) pairs.
    pub fn units(&self) -> usize {
        self.rows() * self.heads
    }
    /// Elements of one head-major `[B, H, S, Dh]` tensor (q, k, v, and O).
    pub fn head_major_len(&self) -> usize {
        self.batch * self.heads * self.seq() * self.head_dim
    }
    /// Elements of lse / delta `[B, H, S]`.
    pub fn lse_len(&self) -> usize {
        self.batch * self.heads * self.seq()
    }
    /// Row of joint position `s` (text first) of sample `b`.
    pub fn joint_row(&self, b: usize, s: usize) -> usize {
        if s < self.s_txt {
            b * self.s_txt + s
        } else {
            self.batch * self.s_txt + b * self.s_img + (s - self.s_txt)
        }
    }
    /// (sample, joint position, is text) of row `row`: the inverse of [`joint_row`](Self::joint_row).
    pub fn token(&self, row: usize) -> (usize, usize, bool) {
        let n_txt = self.batch * self.s_txt;
        if row < n_txt {
            (row / self.s_txt, row % self.s_txt, true)
        } else {
            let r = row - n_txt;
            (r / self.s_img, self.s_txt + r % self.s_img, false)
        }
    }
}

/// Which keys each query of an attention call sees beyond the text mask, and how query heads share
/// K/V heads (`kernels::attention`, `Op::Attention`). The text mask and the segment boundaries
/// (block-diagonal attention) are tensors, operands of the op.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnOptions {
    /// Heads of K and V (grouped-query attention); divides `JointShape::heads`. Query head h reads
    /// K/V head `h / (heads / kv_heads)`; k and v are head-major `[B, kv_heads, S, Dh]`.
    pub kv_heads: usize,
    /// Key j is visible to query i only when j ≤ i (joint positions).
    pub causal: bool,
}

impl AttnOptions {
    /// Full multi-head attention, every key visible (the DiT's joint attention).
    pub fn full(heads: usize) -> AttnOptions {
        AttnOptions { kv_heads: heads, causal: false }
    }
    /// Query heads per K/V head.
    pub fn group(&self, shape: &JointShape) -> usize {
        shape.heads / self.kv_heads
    }
    /// Elements of k or v `[B, kv_heads, S, Dh]`.
    pub fn kv_len(&self, shape: &JointShape) -> usize {
        shape.batch * self.kv_heads * shape.seq() * shape.head_dim
    }
}

/// Where a per-sample vector (a modulation shift, scale or gate) is read: element
/// `offset + sample_row(b, j) * sample_stride + col`, where `sample_row(b, j) = b`, or
/// `b + alt_shift` for tokens `j >= split` (Edit-2511 `zero_cond_t`: reference tokens read the
/// t = 0 rows). A `split` at or past the sample length (`usize::MAX` by default) changes nothing.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PerSampleRef {
    pub offset: usize,
    pub sample_stride: usize,
    pub split: usize,
    pub alt_shift: usize,
}

impl PerSampleRef {
    /// Plain per-sample rows (no zero_cond_t split).
    pub fn per_sample(offset: usize, sample_stride: usize) -> PerSampleRef {
        PerSampleRef { offset, sample_stride, split: usize::MAX, alt_shift: 0 }
    }
    /// Tokens `j >= split` read sample row `b + alt_shift` (zero_cond_t: alt_shift = B).
    pub fn zero_cond(self, split: usize, alt_shift: usize) -> PerSampleRef {
        PerSampleRef { split, alt_shift, ..self }
    }
    /// The sample row that token `j` of sample `b` reads.
    pub fn sample_row(&self, b: usize, j: usize) -> usize {
        b + if j >= self.split { self.alt_shift } else { 0 }
    }
    /// The element index of column `col` for token `j` of sample `b`.
    pub fn index(&self, b: usize, j: usize, col: usize) -> usize {
        self.offset + self.sample_row(b, j) * self.sample_stride + col
    }
}

/// A contiguous range of rows grouped by sample, with the per-sample vector row rule of
/// [`PerSampleRef`] (`alt_rows` is its `alt_shift`), as the grouped norm, gate and row-reduction
/// kernels take it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SampleRows {
    pub row0: usize,
    pub samples: usize,
    pub rows_per_sample: usize,
    /// Tokens `j >= split` use vector row `b + alt_rows`; `split >= rows_per_sample` disables it.
    pub split: usize,
    pub alt_rows: usize,
}

impl SampleRows {
    /// No zero_cond_t split: every token of sample `b` uses vector row `b`.
    pub fn plain(row0: usize, samples: usize, rows_per_sample: usize) -> SampleRows {
        SampleRows { row0, samples, rows_per_sample, split: rows_per_sample, alt_rows: 0 }
    }
    /// `rows` rows from `row0` in samples of `rows_per_sample`, reading vectors as `r` says.
    pub fn of(row0: usize, rows: usize, rows_per_sample: usize, r: &PerSampleRef) -> SampleRows {
        SampleRows { row0, samples: rows / rows_per_sample, rows_per_sample, split: r.split, alt_rows: r.alt_shift }
    }
    pub fn rows(&self) -> usize {
        self.samples * self.rows_per_sample
    }
    /// The split clamped to the sample length.
    pub fn split_eff(&self) -> usize {
        self.split.min(self.rows_per_sample)
    }
    /// The per-sample vector row of local row `l` (0-based inside this range).
    pub fn vec_row(&self, l: usize) -> usize {
        let (b, j) = (l / self.rows_per_sample, l % self.rows_per_sample);
        if j >= self.split {
            b + self.alt_rows
        } else {
            b
        }
    }
    /// The leading WGSL `Problem` fields every grouped kernel shares:
    /// `[row0, samples, rows_per_sample, split (clamped), alt_rows]`.
    pub fn wgsl_fields(&self) -> [u32; 5] {
        [self.row0, self.samples, self.rows_per_sample, self.split_eff(), self.alt_rows].map(|v| v as u32)
    }
}

/// Which dims of a head RoPE rotates together; pair i takes entry i of the table row (cos, sin).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Pairs (2i, 2i + 1) (diffusers Qwen-Image, complex multiplication).
    Interleaved,
    /// Pairs (i, i + Dh/2) (transformers `rotate_half`: `x·cos + rotate_half(x)·sin`, Qwen2.5-VL).
    Half,
}

/// How q, k, v arrive at the QK-norm + RoPE step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QkvLayout {
    /// One `[rows, 3D]` buffer, columns `[q | k | v]` (the merged `to_qkv` projection).
    Merged,
    /// Three `[rows, D]` buffers q, k, v.
    Standard,
}

/// The geometry of one 2-D convolution over a pixels-major image (`[pixels, channels]`, pixel
/// `y·w + x`): the VAE's activation layout (docs/vae.md). The input may be nearest-upsampled ×2
/// on the fly (`upsample`); padding is zero and may be asymmetric (diffusers' downsample pads
/// right and bottom only). A 1×1 kernel over an `rows × 1` image is a plain GEMM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dShape {
    pub in_h: usize,
    pub in_w: usize,
    /// Input channels.
    pub ci: usize,
    /// Output channels.
    pub co: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    /// Zero padding (top, bottom, left, right), in (upsampled) input pixels.
    pub pad: [usize; 4],
    /// Nearest-neighbour ×2 upsampling of the input before the convolution.
    pub upsample: bool,
}

impl Conv2dShape {
    /// A k×k convolution with symmetric padding `k / 2`, stride 1.
    pub fn same(h: usize, w: usize, ci: usize, co: usize, k: usize) -> Conv2dShape {
        let p = k / 2;
        Conv2dShape { in_h: h, in_w: w, ci, co, kh: k, kw: k, stride: 1, pad: [p; 4], upsample: false }
    }
    /// A per-row channel matmul `y[r] = W·x[r]` over `rows` rows (a 1×1 convolution).
    pub fn matmul(rows: usize, ci: usize, co: usize) -> Conv2dShape {
        Conv2dShape::same(rows, 1, ci, co, 1)
    }
    fn up(&self) -> usize {
        1 + self.upsample as usize
    }
    pub fn out_h(&self) -> usize {
        (self.in_h * self.up() + self.pad[0] + self.pad[1] - self.kh) / self.stride + 1
    }
    pub fn out_w(&self) -> usize {
        (self.in_w * self.up() + self.pad[2] + self.pad[3] - self.kw) / self.stride + 1
    }
    /// Output pixels (GEMM rows M).
    pub fn out_pixels(&self) -> usize {
        self.out_h() * self.out_w()
    }
    pub fn in_pixels(&self) -> usize {
        self.in_h * self.in_w
    }
    /// The reduction length K = kh·kw·ci (weights are `[co, kh, kw, ci]`).
    pub fn k(&self) -> usize {
        self.kh * self.kw * self.ci
    }
}

/// Where a convolution writes its output rows (pixels) `m = 0 .. out_pixels`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvOut {
    /// `y[(row0 + m)·co + n]`: pixels-major, rows `row0 ..` written.
    Rows { row0: usize },
    /// `y[n·ld + row0 + m]`: channels-major `[co, ld]` (the attention's Vᵀ).
    Transposed { row0: usize, ld: usize },
}
