//! The GPU tensor: a shape and a storage dtype ([`DType`], `crate::dtype`) over a GPU buffer.

pub use crate::dtype::DType;
use crate::gpu::{Buffer, Gpu};
use crate::Result;

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
        self.dtype.bytes(self.numel()) as u64
    }
    /// A zero-filled tensor.
    pub fn zeros(gpu: &Gpu, shape: &[usize], dtype: DType, label: &str) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let buffer = gpu.buffer(dtype.bytes(n) as u64, label)?;
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
        assert_eq!(b.len(), dtype.bytes(shape.iter().product::<usize>()), "{label}: bytes do not match shape");
        let buffer = gpu.upload(b, label)?;
        Ok(Tensor { buffer, shape: shape.to_vec(), dtype })
    }
    /// Downloads and decodes to f32.
    pub fn to_f32(&self, gpu: &Gpu) -> Result<Vec<f32>> {
        let b = gpu.download(&self.buffer)?;
        Ok(self.dtype.decode(&b[..self.bytes() as usize]))
    }
}
