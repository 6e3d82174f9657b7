//! One AdamW step on f32 parameters (`shaders/adamw/adamw.wgsl`), in torch.optim.AdamW's order:
//! `p *= 1 − lr·wd`, `m.lerp_(g, 1 − β1)`, `v = v·β2 + (1 − β2)·g·g`,
//! `p += −lr/(1 − β1^t) · m / (sqrt(v)/sqrt(1 − β2^t) + eps)`, with an optional gradient scale
//! (accumulation averaging) and on-device global-norm clipping (`clip_grad_norm_`) that reads the
//! squared norm from `kernels::norm::sq_norm`, so a plan never reads back.

use crate::gpu::{Gpu, Launch};
use crate::shaders::ADAMW;
use crate::tensor::{DType, Tensor};
use crate::Result;

#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    pub n: u32,
    pub row_pitch: u32,
    pub max_norm: f32,
    pub grad_scale: f32,
    pub decay: f32,
    pub one_minus_b1: f32,
    pub b2: f32,
    pub one_minus_b2: f32,
    pub step_size: f32,
    pub bc2_sqrt: f32,
    pub eps: f32,
    pub _pad: u32,
}
crate::assert_params!(Params);

/// Optimiser hyper-parameters (torch defaults except lr).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hyper {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for Hyper {
    /// torch.optim.AdamW defaults with DiffSynth's lr 1e-4.
    fn default() -> Hyper {
        Hyper { lr: 1e-4, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 }
    }
}

/// The uniform of step `step` (1-based, as torch counts after its increment). `grad_scale`
/// multiplies the gradient first; `max_norm > 0` clips to that global norm (of the scaled grads).
pub fn params(n: usize, h: &Hyper, step: u32, grad_scale: f32, max_norm: f32) -> Params {
    assert!(step >= 1, "adamw: step counts from 1");
    let groups = crate::kernels::grid_2d((n as u32).div_ceil(256));
    let t = step as i32;
    Params {
        n: n as u32,
        row_pitch: groups[0] * 256,
        max_norm,
        grad_scale,
        decay: (1.0 - h.lr * h.weight_decay) as f32,
        one_minus_b1: (1.0 - h.beta1) as f32,
        b2: h.beta2 as f32,
        one_minus_b2: (1.0 - h.beta2) as f32,
        step_size: (h.lr / (1.0 - h.beta1.powi(t))) as f32,
        bc2_sqrt: (1.0 - h.beta2.powi(t)).sqrt() as f32,
        eps: h.eps as f32,
        _pad: 0,
    }
}

pub struct Args<'a> {
    pub params: Params,
    /// [n] f32
    pub grad: &'a Tensor,
    /// [1] squared global norm (`kernels::norm::sq_norm`); `None` when `max_norm <= 0`.
    pub sq_norm: Option<&'a Tensor>,
    /// [n] f32 each, updated in place
    pub param: &'a Tensor,
    pub m: &'a Tensor,
    pub v: &'a Tensor,
}

pub fn launch(gpu: &Gpu, a: &Args) -> Result<Launch> {
    let n = a.params.n as usize;
    for t in [a.grad, a.param, a.m, a.v] {
        assert!(t.dtype == DType::F32 && t.numel() == n, "adamw: f32 tensors of {n} elements");
    }
    assert!(a.params.max_norm <= 0.0 || a.sq_norm.is_some(), "adamw: clipping needs sq_norm");
    crate::kernels::check_index("adamw", &[("param", a.param)])?;
    Ok(Launch {
        kernel: gpu.kernel(&ADAMW, "adamw", &[])?,
        params: bytemuck::bytes_of(&a.params).to_vec(),
        buffers: vec![
            a.grad.buffer.clone(),
            a.sq_norm.unwrap_or(a.grad).buffer.clone(),
            a.param.buffer.clone(),
            a.m.buffer.clone(),
            a.v.buffer.clone(),
        ],
        groups: crate::kernels::grid_2d((n as u32).div_ceil(256)),
    })
}

pub mod cpu {
    use super::Params;

    /// torch `clip_grad_norm_` coefficient for a total norm (f32 math).
    pub fn clip_coef(max_norm: f32, total_norm: f32) -> f32 {
        (max_norm / (total_norm + 1e-6)).min(1.0)
    }

    /// One step in f32, operation for operation as torch's `_single_tensor_adam`
    /// (decoupled weight decay). `sq_norm` is the squared norm of the unscaled gradients.
    pub fn step(p: &Params, sq_norm: f32, grad: &[f32], param: &mut [f32], m: &mut [f32], v: &mut [f32]) {
        let clip = if p.max_norm > 0.0 { clip_coef(p.max_norm, p.grad_scale * sq_norm.sqrt()) } else { 1.0 };
        for i in 0..grad.len() {
            let mut g = grad[i] * p.grad_scale;
            if p.max_norm > 0.0 {
                g *= clip;
            }
            param[i] *= p.decay;
            m[i] += p.one_minus_b1 * (g - m[i]);
            v[i] = v[i] * p.b2 + (p.one_minus_b2 * g) * g;
            let denom = v[i].sqrt() / p.bc2_sqrt + p.eps;
            param[i] += (-p.step_size * m[i]) / denom;
        }
    }
}

#[cfg(test)]
mod tests;
