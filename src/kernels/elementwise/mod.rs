//! Element-wise f32 ops: add, mul, SiLU, tanh-GELU, exact (erf) GELU, clamp
//! (`shaders/elementwise/elementwise.wgsl`).
//!
//! Exact GELU `x·Φ(x)` (torch `nn.GELU()`, the Qwen2.5-VL vision merger) takes erfc from Numerical
//! Recipes' Chebyshev fit (`act_phi` in `shaders/common/act.wgsl`); measured on lavapipe against the
//! f64 reference over [-10, 10]: see `gelu_erf_is_accurate_over_minus_10_to_10`.

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
    /// Exact GELU `x·Φ(x) = x/2·(1 + erf(x/√2))`.
    GeluErf,
}

impl Op {
    fn entry(self) -> &'static str {
        match self {
            Op::Add => "add",
            Op::Mul => "mul",
            Op::Silu => "silu",
            Op::GeluTanh => "gelu_tanh",
            Op::GeluErf => "gelu_erf",
        }
    }
    pub fn is_unary(self) -> bool {
        matches!(self, Op::Silu | Op::GeluTanh | Op::GeluErf)
    }
}

/// `y = op(a, b)` (for unary ops pass `b = None`). All f32, same element count.
pub fn launch_forward(gpu: &Gpu, op: Op, a: &Tensor, b: Option<&Tensor>, y: &Tensor) -> Result<Launch> {
    let n = a.numel();
    assert!(a.dtype == DType::F32 && y.dtype == DType::F32 && y.numel() == n, "elementwise::{op:?}: shapes/dtypes");
    assert_eq!(b.is_none(), op.is_unary(), "elementwise::{op:?}: operand count");
    let b = b.unwrap_or(a);
    assert_eq!(b.numel(), n, "elementwise::{op:?}: b shape");
    let n = crate::kernels::index_len("elementwise", "y", n)?;
    let groups = crate::kernels::grid_2d(n.div_ceil(256));
    let p = Params { n, row_pitch: groups[0] * 256, lo: 0.0, hi: 0.0 };
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
    let n = crate::kernels::index_len("clamp", "y", n)?;
    let groups = crate::kernels::grid_2d(n.div_ceil(256));
    let p = Params { n, row_pitch: groups[0] * 256, lo, hi };
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
    /// Exact GELU `x·Φ(x)`, Φ from [`erfc`] (no cancellation in the negative tail).
    pub fn gelu_erf(x: f64) -> f64 {
        0.5 * x * erfc(-x * std::f64::consts::FRAC_1_SQRT_2)
    }
    /// erfc in f64 (std has no erf): the Maclaurin series of erf for |z| < 2.5 (terms peak near
    /// e^{z²} ≈ 500, so about 1e-13 absolute), the Laplace continued fraction beyond (relative
    /// 1e-15 after 120 terms at z = 2.5); erfc(−z) = 2 − erfc(z).
    pub fn erfc(z: f64) -> f64 {
        if z < 0.0 {
            return 2.0 - erfc(-z);
        }
        if z < 2.5 {
            let (mut term, mut sum, z2) = (z, z, z * z);
            for n in 1..200 {
                term *= -z2 / n as f64;
                let add = term / (2 * n + 1) as f64;
                sum += add;
                if add.abs() < 1e-17 * sum.abs() {
                    break;
                }
            }
            return 1.0 - sum * std::f64::consts::FRAC_2_SQRT_PI;
        }
        // erfc(z) = e^{-z²}/√π · 1/(z + (1/2)/(z + 1/(z + (3/2)/(z + 2/(z + …)))))
        let mut f = z;
        for k in (1..=120).rev() {
            f = z + (k as f64 / 2.0) / f;
        }
        (-z * z).exp() / (std::f64::consts::PI.sqrt() * f)
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
                    Op::GeluErf => gelu_erf(x),
                };
                r as f32
            })
            .collect()
    }
}

pub mod backward;

#[cfg(test)]
mod tests;
