//! Tensors: a shape and a storage dtype over a GPU buffer, and the host-side dtype codecs.
//!
//! Storage dtypes are f32, f16 and bf16. Half types are packed two per u32 word on the GPU
//! (element 2i in the low 16 bits); WGSL has no bf16, so kernels decode it with
//! `bitcast<f32>(w << 16u)`. Activations are f32 in the portable path.

use crate::gpu::{Buffer, Gpu};
use crate::Result;
use half::{bf16, f16};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum DType {
    F32,
    F16,
    BF16,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
        }
    }
    /// The value of the WGSL `override` constant that selects a weight decoder (0 f32, 1 f16, 2 bf16).
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

/// A tensor on the GPU: row-major, contiguous, owning (a handle to) its buffer.
#[derive(Clone, Debug)]
pub struct Tensor {
    pub buffer: Buffer,
    pub shape: Vec<usize>,
    pub dtype: DType,
}

impl Tensor {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn bytes(&self) -> u64 {
        (self.numel() * self.dtype.size()) as u64
    }
    /// A zero-filled tensor.
    pub fn zeros(gpu: &Gpu, shape: &[usize], dtype: DType, label: &str) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let buffer = gpu.buffer((n * dtype.size()) as u64, label)?;
        Ok(Tensor { buffer, shape: shape.to_vec(), dtype })
    }
    /// Uploads f32 values, stored as `dtype`.
    pub fn from_f32(gpu: &Gpu, v: &[f32], shape: &[usize], dtype: DType, label: &str) -> Result<Tensor> {
        assert_eq!(v.len(), shape.iter().product::<usize>(), "{label}: data does not match shape {shape:?}");
        let buffer = gpu.upload(&dtype.encode(v), label)?;
        Ok(Tensor { buffer, shape: shape.to_vec(), dtype })
    }
    /// Uploads raw little-endian bytes already in `dtype` (no widening on the host).
    pub fn from_bytes(gpu: &Gpu, b: &[u8], shape: &[usize], dtype: DType, label: &str) -> Result<Tensor> {
        assert_eq!(b.len(), shape.iter().product::<usize>() * dtype.size(), "{label}: bytes do not match shape");
        let buffer = gpu.upload(b, label)?;
        Ok(Tensor { buffer, shape: shape.to_vec(), dtype })
    }
    /// Downloads and decodes to f32.
    pub fn to_f32(&self, gpu: &Gpu) -> Result<Vec<f32>> {
        let b = gpu.download(&self.buffer)?;
        Ok(self.dtype.decode(&b[..self.bytes() as usize]))
    }
}
