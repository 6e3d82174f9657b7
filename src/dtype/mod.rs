//! Storage dtypes and their block formats, with no wgpu: the vocabulary that `graph`, `weights`
//! and `kernels` share.
//!
//! A dtype stores `block_elems` elements in `block_bytes` bytes. f32, f16, bf16 and fp8 are blocks of
//! one element; quantized formats (GGUF Q8_0, Q4_K, …) are blocks of 32 or 256 elements. On
//! the GPU, halves are packed two per u32 word (element 2i in the low 16 bits); WGSL has no bf16,
//! so kernels decode it with `bitcast<f32>(w << 16u)` (`shaders/common/decode.wgsl`). The host
//! [`DType::encode`] / [`DType::decode`] here are the reference of every WGSL decoder.
//!
//! The block formats live in `legacy` (GGML Q8_0, Q4_0, Q4_1, Q5_0, Q5_1), `kquant` (Q2_K … Q6_K)
//! and `fp8`: decoding is a port of ggml's `dequantize_row_*`, encoding of the GGML types a port of
//! ggml's `quantize_row_*_ref` (what `llama-quantize` does without an importance matrix), both
//! bit-exact with ggml's C (tests/weights/quant_formats.rs). fp8 encoding rounds to nearest even
//! and saturates (ComfyUI clamps before it casts). Large tensors are encoded and decoded on all
//! cores, in runs of whole blocks (the bytes do not depend on the thread count).
//!
//! Scaled fp8 ([`DType::F8E4M3Scaled`], [`DType::F8E5M2Scaled`]) is wgdit's GPU layout for
//! ComfyUI "scaled fp8" checkpoints: blocks of 36 bytes, a little-endian f32 scale followed by 32
//! fp8 bytes, value = fp8(byte) · scale. [`DType::encode`] picks a scale per block (amax / fp8 max);
//! the loader instead turns a file's fp8 tensor and its single `scale_weight` into these blocks with
//! [`scaled_blocks`], which copies the bytes and repeats the scale in front of every 32.

use half::{bf16, f16};

mod formats;
mod fp8;
mod kquant;
mod kquant_fit;
mod legacy;
#[cfg(test)]
mod tests;

pub use fp8::scaled_blocks;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum DType {
    F32,
    F16,
    BF16,
    /// GGML block formats (ggml-common.h), 32 elements per block.
    Q8_0,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    /// GGML k-quants, 256-element super-blocks.
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    /// safetensors `F8_E4M3` (torch `float8_e4m3fn`: no infinities, 0x7f/0xff NaN, max 448).
    F8E4M3,
    /// safetensors `F8_E5M2` (the upper byte of an f16).
    F8E5M2,
    /// ComfyUI "scaled fp8" as wgdit stores it on the GPU: blocks of an f32 scale (the tensor's
    /// `scale_weight`) followed by 32 `F8E4M3` bytes, so that stacked tensors keep their own
    /// scales. Made by the loader, never found in a file.
    F8E4M3Scaled,
    /// As [`DType::F8E4M3Scaled`] with `F8E5M2` elements.
    F8E5M2Scaled,
}

/// Every dtype, in [`DType::code`] order.
pub const ALL: [DType; 17] = [
    DType::F32,
    DType::F16,
    DType::BF16,
    DType::Q8_0,
    DType::Q4_0,
    DType::Q4_1,
    DType::Q5_0,
    DType::Q5_1,
    DType::Q2K,
    DType::Q3K,
    DType::Q4K,
    DType::Q5K,
    DType::Q6K,
    DType::F8E4M3,
    DType::F8E5M2,
    DType::F8E4M3Scaled,
    DType::F8E5M2Scaled,
];

impl DType {
    /// Elements per block.
    pub fn block_elems(self) -> usize {
        use DType::*;
        match self {
            F32 | F16 | BF16 | F8E4M3 | F8E5M2 => 1,
            Q8_0 | Q4_0 | Q4_1 | Q5_0 | Q5_1 | F8E4M3Scaled | F8E5M2Scaled => 32,
            Q2K | Q3K | Q4K | Q5K | Q6K => 256,
        }
    }
    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        use DType::*;
        match self {
            F32 => 4,
            F16 | BF16 => 2,
            F8E4M3 | F8E5M2 => 1,
            Q8_0 => 34,
            Q4_0 => 18,
            Q4_1 => 20,
            Q5_0 => 22,
            Q5_1 => 24,
            Q2K => 84,
            Q3K => 110,
            Q4K => 144,
            Q5K => 176,
            Q6K => 210,
            F8E4M3Scaled | F8E5M2Scaled => 36,
        }
    }
    /// Whether this is a block format with more than one element per block (quantized or scaled).
    pub fn is_blocked(self) -> bool {
        self.block_elems() > 1
    }
    /// f32, f16 or bf16: what kernels without the quantized decoders read.
    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16)
    }
    /// A GGML block format as GGUF files store it (Q8_0 … Q6_K).
    pub fn is_ggml_block(self) -> bool {
        self.is_blocked() && self.ggml_type().is_some()
    }
    /// Whether files hold this dtype: every one but wgdit's scaled-fp8 GPU blocks.
    pub fn in_files(self) -> bool {
        !matches!(self, DType::F8E4M3Scaled | DType::F8E5M2Scaled)
    }
    /// Bytes of `numel` elements (a whole number of blocks; callers validate shapes first).
    pub fn bytes(self, numel: usize) -> usize {
        debug_assert_eq!(numel % self.block_elems(), 0, "{}: {numel} elements are not whole blocks", self.name());
        numel / self.block_elems() * self.block_bytes()
    }
    /// Bits per element, for summaries (4.5 for Q4_K).
    pub fn bits_per_element(self) -> f64 {
        self.block_bytes() as f64 * 8.0 / self.block_elems() as f64
    }
    /// The lower-case name used on the command line and in reports (`q4_k`, `f8_e4m3`).
    pub fn name(self) -> &'static str {
        use DType::*;
        match self {
            F32 => "f32",
            F16 => "f16",
            BF16 => "bf16",
            Q8_0 => "q8_0",
            Q4_0 => "q4_0",
            Q4_1 => "q4_1",
            Q5_0 => "q5_0",
            Q5_1 => "q5_1",
            Q2K => "q2_k",
            Q3K => "q3_k",
            Q4K => "q4_k",
            Q5K => "q5_k",
            Q6K => "q6_k",
            F8E4M3 => "f8_e4m3",
            F8E5M2 => "f8_e5m2",
            F8E4M3Scaled => "f8_e4m3_scaled",
            F8E5M2Scaled => "f8_e5m2_scaled",
        }
    }
    /// The dtype of a [`DType::name`] (case-insensitive; `fp8_e4m3`/`fp8_e5m2` also accepted).
    pub fn from_name(s: &str) -> Option<DType> {
        let s = s.to_ascii_lowercase();
        let s = s.strip_prefix("fp8").map(|r| format!("f8{r}")).unwrap_or(s);
        ALL.into_iter().find(|d| d.name() == s)
    }
    /// The WGSL decoder id: the value of the `DTYPE` override constant that selects the weight
    /// decoder of a kernel (0 f32, 1 f16, 2 bf16, then the [`ALL`] order).
    pub fn code(self) -> f64 {
        ALL.iter().position(|d| *d == self).expect("cannot fail: ALL lists every dtype") as f64
    }
    /// The GGML type id (`enum ggml_type`) of the formats GGUF files store; `None` for fp8.
    pub fn ggml_type(self) -> Option<u32> {
        use DType::*;
        Some(match self {
            F32 => 0,
            F16 => 1,
            Q4_0 => 2,
            Q4_1 => 3,
            Q5_0 => 6,
            Q5_1 => 7,
            Q8_0 => 8,
            Q2K => 10,
            Q3K => 11,
            Q4K => 12,
            Q5K => 13,
            Q6K => 14,
            BF16 => 30,
            F8E4M3 | F8E5M2 | F8E4M3Scaled | F8E5M2Scaled => return None,
        })
    }
    /// The dtype of a GGML type id, if wgdit reads it.
    pub fn from_ggml_type(id: u32) -> Option<DType> {
        ALL.into_iter().find(|d| d.ggml_type() == Some(id))
    }
    /// The GGML type name of an id (`Q4_K`), for messages about types wgdit does not read.
    pub fn ggml_type_name(id: u32) -> String {
        const NAMES: [&str; 40] = [
            "F32",
            "F16",
            "Q4_0",
            "Q4_1",
            "Q4_2",
            "Q4_3",
            "Q5_0",
            "Q5_1",
            "Q8_0",
            "Q8_1",
            "Q2_K",
            "Q3_K",
            "Q4_K",
            "Q5_K",
            "Q6_K",
            "Q8_K",
            "IQ2_XXS",
            "IQ2_XS",
            "IQ3_XXS",
            "IQ1_S",
            "IQ4_NL",
            "IQ3_S",
            "IQ2_S",
            "IQ4_XS",
            "I8",
            "I16",
            "I32",
            "I64",
            "F64",
            "IQ1_M",
            "BF16",
            "Q4_0_4_4",
            "Q4_0_4_8",
            "Q4_0_8_8",
            "TQ1_0",
            "TQ2_0",
            "IQ4_NL_4_4",
            "IQ4_NL_4_8",
            "IQ4_NL_8_8",
            "MXFP4",
        ];
        NAMES.get(id as usize).map_or_else(|| format!("type {id}"), |n| n.to_string())
    }
    /// Encodes f32 values into this dtype's little-endian bytes: round to nearest even for the
    /// float types, quantization (`formats`) for the block formats (`v.len()` whole blocks).
    pub fn encode(self, v: &[f32]) -> Vec<u8> {
        match self {
            DType::F32 => bytemuck::cast_slice(v).to_vec(),
            DType::F16 => v.iter().flat_map(|x| f16::from_f32(*x).to_le_bytes()).collect(),
            DType::BF16 => v.iter().flat_map(|x| bf16::from_f32(*x).to_le_bytes()).collect(),
            q => formats::encode(q, v),
        }
    }
    /// Decodes little-endian bytes of this dtype to f32.
    pub fn decode(self, b: &[u8]) -> Vec<f32> {
        match self {
            DType::F32 => b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            DType::F16 => b.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            DType::BF16 => b.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            q => formats::decode(q, b),
        }
    }
    /// Rounds f32 values through this dtype (what the GPU sees after `encode`).
    pub fn round(self, v: &[f32]) -> Vec<f32> {
        self.decode(&self.encode(v))
    }
}
