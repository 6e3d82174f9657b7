//! Backward of the element-wise activations (`shaders/elementwise/elementwise_backward.wgsl`):
//! `dx = dy·f'(x)` for SiLU, tanh-GELU and exact GELU (forward: `kernels::elementwise`), dx written (`=`).
//!
//! Gated residual `d_gate[b] += Σ_rows dy·y` is `reduce_rows::Mode::Product`.

use super::{self as elementwise, Op};
use crate::gpu::{Gpu, Launch};
use crate::shaders::ELEMENTWISE_BACKWARD;
use crate::tensor::{DType, Tensor};
use crate::Result;
use std::sync::Arc;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    pub n: u32,
    pub row_pitch: u32,
    pub _pad: [u32; 2],
}
crate::assert_params!(Params);

fn entry(op: Op) -> &'static str {
    match op {
        Op::Silu => "silu_backward",
        Op::GeluTanh => "gelu_tanh_backward",
        Op::GeluErf => "gelu_erf_backward",
        other => panic!("elementwise_backward: {other:?} is not a unary activation (use mul_backward for Mul)"),
    }
}

// forward: y = f(x)   =>   dx = dy·f'(x)
pub fn launch_backward(gpu: &Gpu, op: Op, x: &Tensor, dy: &Tensor, dx: &Tensor) -> Result<Launch> {
    let n = x.numel();
    for t in [x, dy, dx] {
        assert!(t.dtype == DType::F32 && t.numel() == n, "elementwise_backward::{op:?}: shapes/dtypes");
    }
    let n = crate::kernels::index_len("elementwise_backward", "dx", n)?;
    let groups = crate::kernels::grid_2d(n.div_ceil(256));
    let p = Params { n, row_pitch: groups[0] * 256, _pad: [0; 2] };
    Ok(Launch {
        kernel: gpu.kernel(&ELEMENTWISE_BACKWARD, entry(op), &[])?,
        params: bytemuck::bytes_of(&p).to_vec(),
        buffers: vec![x.buffer.clone(), dy.buffer.clone(), dx.buffer.clone()],
        groups,
    })
}

/// Convenience for tests and one-off use: returns a new dx.
pub fn run_backward(gpu: &Arc<Gpu>, op: Op, x: &Tensor, dy: &Tensor) -> Result<Tensor> {
    let dx = Tensor::zeros(gpu, &x.shape, DType::F32, entry(op))?;
    gpu.run(&[launch_backward(gpu, op, x, dy, &dx)?])?;
    Ok(dx)
}

// forward: y = a·b   =>   da = dy·b;  db = dy·a
pub fn mul_backward(gpu: &Gpu, a: &Tensor, b: &Tensor, dy: &Tensor, da: &Tensor, db: &Tensor) -> Result<[Launch; 2]> {
    Ok([
        elementwise::launch_forward(gpu, Op::Mul, dy, Some(b), da)?,
        elementwise::launch_forward(gpu, Op::Mul, dy, Some(a), db)?,
    ])
}

pub mod cpu {
    use super::Op;

    /// f64 f'(x).
    pub fn derivative(op: Op, x: f64) -> f64 {
        match op {
            Op::Silu => {
                let s = 1.0 / (1.0 + (-x).exp());
                s * (1.0 + x * (1.0 - s))
            }
            Op::GeluTanh => {
                let k = 0.7978845608028654;
                let t = (k * (x + 0.044715 * x * x * x)).tanh();
                0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * k * (1.0 + 3.0 * 0.044715 * x * x)
            }
            // f = x·Φ(x)  =>  f' = Φ(x) + x·φ(x)
            Op::GeluErf => {
                let phi = 0.5 * crate::kernels::elementwise::cpu::erfc(-x * std::f64::consts::FRAC_1_SQRT_2);
                phi + x * (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt()
            }
            other => panic!("no unary derivative for {other:?}"),
        }
    }

    /// dx = dy·f'(x) in f64, rounded to f32.
    pub fn backward(op: Op, x: &[f32], dy: &[f32]) -> Vec<f32> {
        x.iter().zip(dy).map(|(&x, &d)| (d as f64 * derivative(op, x as f64)) as f32).collect()
    }
}
