//! The VAE's channel-first RMS norm with gamma, optionally fused with SiLU
//! (`shaders/norm/channel_rms_norm.wgsl`): per pixel of a pixels-major image `[pixels, C]`,
//! `y = act(x / max(‖x‖₂, 1e-12) · sqrt(C) · gamma)`. Reference: diffusers `QwenImageRMS_norm`
//! (`F.normalize(x, dim=1) * scale * gamma`; spec vae-and-text-encoder.md §1.2.2). Unlike
//! [`super::rms_norm`], eps clamps the L2 norm (torch's `F.normalize`), it is not added to the
//! mean square, and nothing is saved (inference only).

use crate::gpu::{Gpu, Launch};
use crate::shaders::CHANNEL_RMS_NORM;
use crate::tensor::{DType, Tensor};
use crate::Result;

/// `F.normalize`'s default eps (a clamp on the L2 norm).
pub const EPS: f32 = 1e-12;
/// Rows (pixels) per workgroup: 8 rows × 32 lanes.
const ROWS_PER_GROUP: u32 = 8;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    pub rows: u32,
    pub cols: u32,
    pub scale: f32,
    pub eps: f32,
}
crate::assert_params!(Params);

pub struct Args<'a> {
    /// [rows, C] f32
    pub x: &'a Tensor,
    /// [C] f32
    pub gamma: &'a Tensor,
    /// SiLU after the norm (resnet norm1/norm2, norm_out).
    pub silu: bool,
    /// [rows, C] f32, written
    pub y: &'a Tensor,
}

pub fn launch_forward(gpu: &Gpu, a: &Args) -> Result<Launch> {
    let cols = a.gamma.numel();
    assert!(a.x.dtype == DType::F32 && a.y.dtype == DType::F32, "channel_rms_norm: x, y must be f32");
    assert!(a.gamma.dtype == DType::F32 && cols > 0, "channel_rms_norm: gamma must be f32 [C]");
    assert!(a.x.numel() % cols == 0 && a.y.numel() == a.x.numel(), "channel_rms_norm: shapes");
    let rows = a.x.numel() / cols;
    // Python's `dim ** 0.5` in f64, used as an f32 multiplier by torch on f32 tensors.
    let p = Params { rows: rows as u32, cols: cols as u32, scale: (cols as f64).sqrt() as f32, eps: EPS };
    Ok(Launch {
        kernel: gpu.kernel(&CHANNEL_RMS_NORM, "channel_rms_norm", &[("SILU", if a.silu { 1.0 } else { 0.0 })])?,
        params: bytemuck::bytes_of(&p).to_vec(),
        buffers: vec![a.x.buffer.clone(), a.gamma.buffer.clone(), a.y.buffer.clone()],
        groups: crate::kernels::grid_2d((rows as u32).div_ceil(ROWS_PER_GROUP)),
    })
}

pub mod cpu {
    /// f64 reference of `act(x / max(‖x‖, eps) · sqrt(C) · gamma)` per row of `gamma.len()` values.
    pub fn forward(x: &[f64], gamma: &[f64], silu: bool) -> Vec<f64> {
        let c = gamma.len();
        let scale = (c as f64).sqrt();
        let mut y = vec![0.0; x.len()];
        for (xr, yr) in x.chunks(c).zip(y.chunks_mut(c)) {
            let d = xr.iter().map(|v| v * v).sum::<f64>().sqrt().max(super::EPS as f64);
            for i in 0..c {
                let v = xr[i] / d * scale * gamma[i];
                yr[i] = if silu { crate::kernels::elementwise::cpu::silu(v) } else { v };
            }
        }
        y
    }
}
