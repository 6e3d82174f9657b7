//! Element-wise f32 ops: add, mul, SiLU, tanh-GELU, clamp (`shaders/elementwise/elementwise.wgsl`).

use crate::gpu::{Gpu, Launch};
use crate::shaders::ELEMENTWISE;
use crate::tensor::{DType, Tensor};
use crate::Result;
use std::sync::Arc;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    pub n: u32,
    pub row_pitch: u32,
    /// Bounds of `clamp` (unused by the other entry points).
    pub lo: f32,
    pub hi: f32,
}
crate::assert_params!(Params);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Add,
    Mul,
    Silu,
    GeluTanh,
}

impl Op {
    fn entry(self) -> &'static str {
        match self {
            Op::Add => "add",
            Op::Mul => "mul",
            Op::Silu => "silu",
            Op::GeluTanh => "gelu_tanh",
        }
    }
    pub fn is_unary(self) -> bool {
        matches!(self, Op::Silu | Op::GeluTanh)
    }
}

/// `y = op(a, b)` (for unary ops pass `b = None`). All f32, same element count.
pub fn launch_forward(gpu: &Gpu, op: Op, a: &Tensor, b: Option<&Tensor>, y: &Tensor) -> Result<Launch> {
    let n = a.numel();
    assert!(a.dtype == DType::F32 && y.dtype == DType::F32 && y.numel() == n, "elementwise::{op:?}: shapes/dtypes");
    assert_eq!(b.is_none(), op.is_unary(), "elementwise::{op:?}: operand count");
    let b = b.unwrap_or(a);
    assert_eq!(b.numel(), n, "elementwise::{op:?}: b shape");
    let groups = crate::kernels::grid_2d((n as u32).div_ceil(256));
    let p = Params { n: n as u32, row_pitch: groups[0] * 256, lo: 0.0, hi: 0.0 };
    Ok(Launch {
        kernel: gpu.kernel(&ELEMENTWISE, op.entry(), &[])?,
        params: bytemuck::bytes_of(&p).to_vec(),
        buffers: vec![a.buffer.clone(), b.buffer.clone(), y.buffer.clone()],
        groups,
    })
}

/// `y = clamp(x, lo, hi)` (torch.clamp: NaN stays NaN on both). f32, same element count.
pub fn launch_clamp(gpu: &Gpu, x: &Tensor, y: &Tensor, lo: f32, hi: f32) -> Result<Launch> {
    let n = x.numel();
    assert!(x.dtype == DType::F32 && y.dtype == DType::F32 && y.numel() == n, "elementwise::clamp: shapes/dtypes");
    let groups = crate::kernels::grid_2d((n as u32).div_ceil(256));
    let p = Params { n: n as u32, row_pitch: groups[0] * 256, lo, hi };
    Ok(Launch {
        kernel: gpu.kernel(&ELEMENTWISE, "clamp", &[])?,
        params: bytemuck::bytes_of(&p).to_vec(),
        buffers: vec![x.buffer.clone(), x.buffer.clone(), y.buffer.clone()],
        groups,
    })
}

/// Convenience for tests and one-off use: runs `op` and returns the new output tensor.
pub fn run_forward(gpu: &Arc<Gpu>, op: Op, a: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let y = Tensor::zeros(gpu, &a.shape, DType::F32, op.entry())?;
    gpu.run(&[launch_forward(gpu, op, a, b, &y)?])?;
    Ok(y)
}

pub mod cpu {
    use super::Op;

    pub fn gelu_tanh(x: f64) -> f64 {
        0.5 * x * (1.0 + (0.7978845608028654 * (x + 0.044715 * x * x * x)).tanh())
    }
    pub fn silu(x: f64) -> f64 {
        x / (1.0 + (-x).exp())
    }
    /// Reference in f64.
    pub fn apply(op: Op, a: &[f32], b: Option<&[f32]>) -> Vec<f32> {
        (0..a.len())
            .map(|i| {
                let x = a[i] as f64;
                let r = match op {
                    Op::Add => x + b.expect("add needs b")[i] as f64,
                    Op::Mul => x * b.expect("mul needs b")[i] as f64,
                    Op::Silu => silu(x),
                    Op::GeluTanh => gelu_tanh(x),
                };
                r as f32
            })
            .collect()
    }
}

pub mod backward;

#[cfg(test)]
mod tests;
