//! Row softmax (`shaders/norm/softmax_rows.wgsl`): `y[r] = exp(x[r] − max) / Σ exp(x[r] − max)`,
//! f32. The VAE's mid-block attention runs it on a chunk of score rows (docs/vae.md).

use crate::gpu::{Gpu, Launch};
use crate::shaders::SOFTMAX_ROWS;
use crate::tensor::{DType, Tensor};
use crate::Result;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    pub rows: u32,
    pub cols: u32,
    pub _pad: [u32; 2],
}
crate::assert_params!(Params);

/// Softmax over the first `rows` rows of `cols` values of x into y (both f32).
pub fn launch_forward(gpu: &Gpu, x: &Tensor, y: &Tensor, rows: usize, cols: usize) -> Result<Launch> {
    assert!(x.dtype == DType::F32 && y.dtype == DType::F32, "softmax_rows: f32 only");
    assert!(rows * cols <= x.numel().min(y.numel()) && cols > 0, "softmax_rows: {rows}×{cols} exceeds the buffers");
    let p = Params { rows: rows as u32, cols: cols as u32, _pad: [0; 2] };
    Ok(Launch {
        kernel: gpu.kernel(&SOFTMAX_ROWS, "softmax_rows", &[])?,
        params: bytemuck::bytes_of(&p).to_vec(),
        buffers: vec![x.buffer.clone(), y.buffer.clone()],
        groups: crate::kernels::grid_2d(rows as u32),
    })
}

pub mod cpu {
    /// f64 reference, rows of `cols` values.
    pub fn forward(x: &[f64], cols: usize) -> Vec<f64> {
        let mut y = Vec::with_capacity(x.len());
        for r in x.chunks(cols) {
            let m = r.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let s: f64 = r.iter().map(|v| (v - m).exp()).sum();
            y.extend(r.iter().map(|v| (v - m).exp() / s));
        }
        y
    }
}
