//! The GPU tensor: a shape and a storage dtype ([`DType`], `crate::dtype`) over a GPU buffer.

pub use crate::dtype::DType;
use crate::gpu::{Buffer, Gpu};
use crate::Result;

/// A tensor on the GPU: row-major, contiguous, owning (a handle to) its buffer — a whole buffer,
/// or a view of a byte range of one ([`Tensor::view`]: a weight in a streaming ring slot), which
/// every kernel binds, and `to_f32` reads, as that range only.
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
    /// A tensor at byte `offset` of `buffer` (a view of its `dtype.bytes(numel)` bytes rounded
    /// up to 4, as a buffer of its own would be).
    pub fn view(buffer: &Buffer, offset: u64, shape: &[usize], dtype: DType) -> Tensor {
        let bytes = dtype.bytes(shape.iter().product::<usize>()) as u64;
        Tensor { buffer: buffer.view(offset, bytes.max(4).div_ceil(4) * 4), shape: shape.to_vec(), dtype }
    }
    /// Byte offset of the tensor in its buffer (0 unless it is a view).
    pub fn offset(&self) -> u64 {
        self.buffer.offset()
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
