//! RMSNorm with a weight (`shaders/norm/rms_norm.wgsl`, backward `shaders/norm/rms_norm_backward.wgsl`):
//! `y = x·rsqrt(mean(x²) + eps)·w`, any cols (txt_norm: 3584). Reference: diffusers
//! `normalization.RMSNorm`, spec qwen-image-dit.md §3.8 (f32 path: no cast to the weight dtype
//! before the multiply).
//!
//! The weight may be stored f32, f16 or bf16 (`Tensor::dtype`); activations are f32.

use super::reduce_rows::{self, SampleRows, Target};
use crate::gpu::{Gpu, Launch};
use crate::shaders::{RMS_NORM, RMS_NORM_BACKWARD};
use crate::tensor::{DType, Tensor};
use crate::Result;
use std::sync::Arc;

/// diffusers RMSNorm eps used everywhere in Qwen-Image.
pub const EPS: f32 = 1e-6;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    pub rows: u32,
    pub cols: u32,
    pub eps: f32,
    pub _pad: u32,
}
crate::assert_params!(Params);

pub struct Args<'a> {
    /// [rows, cols] f32
    pub x: &'a Tensor,
    /// [cols] f32/f16/bf16
    pub weight: &'a Tensor,
    pub eps: f32,
    /// [rows, cols] f32, written
    pub y: &'a Tensor,
    /// [rows] f32, written (saved for the backward)
    pub rstd: &'a Tensor,
}

pub struct BackwardArgs<'a> {
    pub x: &'a Tensor,
    pub weight: &'a Tensor,
    pub rstd: &'a Tensor,
    pub dy: &'a Tensor,
    /// [rows, cols], written (`=`)
    pub dx: &'a Tensor,
    /// dw [cols] f32 (`+=`) and a scratch of [`scratch_elems`] f32; `None` for a frozen weight.
    pub dw: Option<(&'a Tensor, &'a Tensor)>,
}

fn shape(x: &Tensor, w: &Tensor) -> (usize, usize) {
    assert!(x.dtype == DType::F32 && x.shape.len() == 2, "rms_norm: x must be f32 [rows, cols]");
    assert_eq!(w.numel(), x.shape[1], "rms_norm: weight must be [cols]");
    (x.shape[0], x.shape[1])
}

fn params(rows: usize, cols: usize, eps: f32) -> Vec<u8> {
    bytemuck::bytes_of(&Params { rows: rows as u32, cols: cols as u32, eps, _pad: 0 }).to_vec()
}

pub fn launch_forward(gpu: &Gpu, a: &Args) -> Result<Launch> {
    let (rows, cols) = shape(a.x, a.weight);
    crate::kernels::require_float_weight("rms_norm", a.weight.dtype)?;
    crate::kernels::check_index("rms_norm", &[("x", a.x), ("y", a.y)])?;
    Ok(Launch {
        kernel: gpu.kernel(&RMS_NORM, "rms_norm", &[("DTYPE", a.weight.dtype.code())])?,
        params: params(rows, cols, a.eps),
        buffers: vec![a.x.buffer.clone(), a.weight.buffer.clone(), a.y.buffer.clone(), a.rstd.buffer.clone()],
        groups: crate::kernels::grid_2d(rows as u32),
    })
}

/// Convenience for tests and one-off use: runs the forward and returns (y, rstd).
pub fn run_forward(gpu: &Arc<Gpu>, x: &Tensor, weight: &Tensor) -> Result<(Tensor, Tensor)> {
    let y = Tensor::zeros(gpu, &x.shape, DType::F32, "rms_norm.y")?;
    let rstd = Tensor::zeros(gpu, &x.shape[..1], DType::F32, "rms_norm.rstd")?;
    gpu.run(&[launch_forward(gpu, &Args { x, weight, eps: EPS, y: &y, rstd: &rstd })?])?;
    Ok((y, rstd))
}

fn dw_target(rows: usize) -> [Target; 1] {
    [Target { rows: SampleRows::plain(0, 1, rows), out_offset: 0, out_stride: 0 }]
}

/// f32 elements of the dw scratch buffer.
pub fn scratch_elems(rows: usize, cols: usize) -> usize {
    reduce_rows::scratch_elems(&dw_target(rows), cols)
}

// forward: y = x·rstd·w   =>   dw += Σ_rows dy·x·rstd;  dx = rstd·(w·dy − x·rstd²·mean(w·dy·x))
pub fn launch_backward(gpu: &Gpu, a: &BackwardArgs) -> Result<Vec<Launch>> {
    let (rows, cols) = shape(a.x, a.weight);
    crate::kernels::require_float_weight("rms_norm_backward", a.weight.dtype)?;
    let mut out = vec![Launch {
        kernel: gpu.kernel(&RMS_NORM_BACKWARD, "rms_norm_backward", &[("DTYPE", a.weight.dtype.code())])?,
        params: params(rows, cols, EPS),
        buffers: vec![
            a.dy.buffer.clone(),
            a.x.buffer.clone(),
            a.weight.buffer.clone(),
            a.rstd.buffer.clone(),
            a.dx.buffer.clone(),
        ],
        groups: crate::kernels::grid_2d(rows as u32),
    }];
    if let Some((dw, scratch)) = a.dw {
        out.extend(reduce_rows::launch(
            gpu,
            &reduce_rows::Args {
                mode: reduce_rows::Mode::RmsProduct,
                a: a.dy,
                c: Some(a.x),
                mean: None,
                rstd: Some(a.rstd),
                targets: &dw_target(rows),
                scratch,
                out: dw,
            },
        )?);
    }
    Ok(out)
}

pub mod cpu {
    /// f64 reference: (y, rstd).
    pub fn forward(x: &[f64], w: &[f64], eps: f64) -> (Vec<f64>, Vec<f64>) {
        let cols = w.len();
        let mut y = vec![0.0; x.len()];
        let rstd: Vec<f64> =
            x.chunks(cols).map(|r| 1.0 / (r.iter().map(|v| v * v).sum::<f64>() / cols as f64 + eps).sqrt()).collect();
        for (i, v) in y.iter_mut().enumerate() {
            *v = x[i] * rstd[i / cols] * w[i % cols];
        }
        (y, rstd)
    }

    /// f64 reference backward: dx (`=`); adds into `dw` when given.
    pub fn backward(x: &[f64], w: &[f64], eps: f64, dy: &[f64], mut dw: Option<&mut [f64]>) -> Vec<f64> {
        let cols = w.len();
        let (_, rstd) = forward(x, w, eps);
        let mut dx = vec![0.0; x.len()];
        for (r, &rs) in rstd.iter().enumerate() {
            let o = r * cols;
            let m = (0..cols).map(|c| w[c] * dy[o + c] * x[o + c]).sum::<f64>() / cols as f64;
            for c in 0..cols {
                dx[o + c] = rs * (w[c] * dy[o + c] - x[o + c] * rs * rs * m);
                if let Some(d) = dw.as_deref_mut() {
                    d[c] += dy[o + c] * x[o + c] * rs;
                }
            }
        }
        dx
    }
}
