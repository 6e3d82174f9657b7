//! Storage dtypes and their block formats, with no wgpu: the vocabulary that `graph`, `weights`
//! and `kernels` share.
//!
//! A dtype stores `block_elems` elements in `block_bytes` bytes. f32, f16 and bf16 are blocks of
//! one element; quantized formats (GGUF Q8_0, Q4_K, …) will be blocks of 32 or 256 elements. On
//! the GPU, halves are packed two per u32 word (element 2i in the low 16 bits); WGSL has no bf16,
//! so kernels decode it with `bitcast<f32>(w << 16u)` (`shaders/common/decode.wgsl`). The host
//! [`DType::encode`] / [`DType::decode`] here are the reference of every WGSL decoder.

use half::{bf16, f16};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum DType {
    F32,
    F16,
    BF16,
}

impl DType {
    /// Elements per block.
    pub fn block_elems(self) -> usize {
        1
    }
    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }
    /// Bytes of `numel` elements (a whole number of blocks; callers validate shapes first).
    pub fn bytes(self, numel: usize) -> usize {
        debug_assert_eq!(numel % self.block_elems(), 0, "{}: {numel} elements are not whole blocks", self.name());
        numel / self.block_elems() * self.block_bytes()
    }
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
        }
    }
    /// The WGSL decoder id: the value of the `DTYPE` override constant that selects the weight
    /// decoder of a kernel (0 f32, 1 f16, 2 bf16).
    pub fn code(self) -> f64 {
        match self {
            DType::F32 => 0.0,
            DType::F16 => 1.0,
            DType::BF16 => 2.0,
        }
    }
    /// Encodes f32 values into this dtype's little-endian bytes (round to nearest even).
    pub fn encode(self, v: &[f32]) -> Vec<u8> {
        match self {
            DType::F32 => bytemuck::cast_slice(v).to_vec(),
            DType::F16 => v.iter().flat_map(|x| f16::from_f32(*x).to_le_bytes()).collect(),
            DType::BF16 => v.iter().flat_map(|x| bf16::from_f32(*x).to_le_bytes()).collect(),
        }
    }
    /// Decodes little-endian bytes of this dtype to f32.
    pub fn decode(self, b: &[u8]) -> Vec<f32> {
        match self {
            DType::F32 => b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            DType::F16 => b.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            DType::BF16 => b.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        }
    }
    /// Rounds f32 values through this dtype (what the GPU sees after `encode`).
    pub fn round(self, v: &[f32]) -> Vec<f32> {
        self.decode(&self.encode(v))
    }
}
