//! The denominator of the VAE's channel-first RMS norm (`shaders/norm/channel_norm_denom.wgsl`):
//! per pixel of a pixels-major image `[pixels, C]`, `denom = max(‖x‖₂, 1e-12)`. Reference: diffusers
//! `QwenImageRMS_norm` (`F.normalize(x, dim=1) * scale * gamma`; spec vae-and-text-encoder.md
//! §1.2.2). The norm itself, `x / denom · sqrt(C) · gamma` (+ SiLU), is applied by the conv that
//! consumes it while gathering (`kernels::conv`, `PreNorm`), so the normalised tensor never
//! exists. Unlike [`super::rms_norm`], eps clamps the L2 norm (torch's `F.normalize`).

use crate::gpu::{Gpu, Launch};
use crate::shaders::CHANNEL_NORM_DENOM;
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
    pub eps: f32,
    pub _pad: u32,
}
crate::assert_params!(Params);

/// `denom[r] = max(‖x[r, :]‖, 1e-12)` over the `rows = x.numel() / cols` rows of x (f32).
pub fn launch_forward(gpu: &Gpu, x: &Tensor, cols: usize, denom: &Tensor) -> Result<Launch> {
    assert!(x.dtype == DType::F32 && denom.dtype == DType::F32, "channel_norm_denom: f32 only");
    assert!(cols > 0 && x.numel() % cols == 0, "channel_norm_denom: x is not [rows, {cols}]");
    let rows = x.numel() / cols;
    assert!(denom.numel() >= rows, "channel_norm_denom: denom has fewer than {rows} rows");
    let p = Params { rows: rows as u32, cols: cols as u32, eps: EPS, _pad: 0 };
    Ok(Launch {
        kernel: gpu.kernel(&CHANNEL_NORM_DENOM, "channel_norm_denom", &[])?,
        params: bytemuck::bytes_of(&p).to_vec(),
        buffers: vec![x.buffer.clone(), denom.buffer.clone()],
        groups: crate::kernels::grid_2d((rows as u32).div_ceil(ROWS_PER_GROUP)),
    })
}

/// Python's `dim ** 0.5` (f64) as the f32 multiplier torch applies to f32 tensors.
pub fn scale(cols: usize) -> f32 {
    (cols as f64).sqrt() as f32
}

pub mod cpu {
    /// f64 reference of the denominators of rows of `cols` values.
    pub fn denom(x: &[f64], cols: usize) -> Vec<f64> {
        x.chunks(cols).map(|r| r.iter().map(|v| v * v).sum::<f64>().sqrt().max(super::EPS as f64)).collect()
    }

    /// f64 reference of the whole norm: `act(x / denom · sqrt(C) · gamma)` per row of `gamma.len()`.
    pub fn normalize(x: &[f64], gamma: &[f64], silu: bool) -> Vec<f64> {
        let c = gamma.len();
        let scale = (c as f64).sqrt();
        let d = denom(x, c);
        (0..x.len())
            .map(|i| {
                let v = x[i] / d[i / c] * scale * gamma[i % c];
                if silu {
                    crate::kernels::elementwise::cpu::silu(v)
                } else {
                    v
                }
            })
            .collect()
    }
}
