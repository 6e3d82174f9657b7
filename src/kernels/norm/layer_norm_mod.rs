//! LayerNorm (no affine, eps 1e-6, biased variance, f32 stats) fused with adaLN modulation
//! `y = LN(x)·(1 + scale) + shift` (`shaders/norm/layer_norm_mod.wgsl`, backward in
//! `shaders/norm/layer_norm_mod_backward.wgsl`). Reference: diffusers `QwenImageTransformerBlock`
//! (`_modulate`) and `AdaLayerNormContinuous` (norm_out), spec qwen-image-dit.md §3.4, §3.8.
//!
//! Up to 4 [`Group`]s (e.g. the text and image streams) per dispatch, each a
//! [`SampleRows`] range with its own shift/scale offsets into the modulation buffer. The chunk
//! order is the caller's business: blocks pass (shift, scale) = chunks (0, 1) of mod1/mod2,
//! `norm_out` passes scale = chunk 0, shift = chunk 1. `modv = None` is the plain LayerNorm.

use super::reduce_rows::{self, SampleRows, Target};
use crate::gpu::{Gpu, Launch};
use crate::shaders::{LAYER_NORM_MOD, LAYER_NORM_MOD_BACKWARD};
use crate::tensor::{DType, Tensor};
use crate::Result;
use std::sync::Arc;

/// diffusers `nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)`.
pub const EPS: f32 = 1e-6;

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Problem {
    pub row0: u32,
    pub samples: u32,
    pub rows_per_sample: u32,
    pub split: u32,
    pub alt_rows: u32,
    pub sample_stride: u32,
    pub shift_offset: u32,
    pub scale_offset: u32,
}

/// Shared by the forward and the backward shader.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    pub cols: u32,
    pub n_problems: u32,
    pub eps: f32,
    pub modulate: u32,
    pub problems: [Problem; reduce_rows::MAX_PROBLEMS],
}
crate::assert_params!(Params);

/// One row range and where its modulation vectors live (element offsets into `modv`; vector row
/// `vr` of the range starts at `offset + vr * sample_stride`).
#[derive(Clone, Copy, Debug)]
pub struct Group {
    pub rows: SampleRows,
    pub shift_offset: usize,
    pub scale_offset: usize,
    pub sample_stride: usize,
}

pub struct Args<'a> {
    /// [rows, cols] f32
    pub x: &'a Tensor,
    /// The modulation buffer (f32), or `None` for a plain LayerNorm.
    pub modv: Option<&'a Tensor>,
    pub groups: &'a [Group],
    pub eps: f32,
    /// [rows, cols] f32, written
    pub y: &'a Tensor,
    /// [rows] f32, written (saved for the backward)
    pub mean: &'a Tensor,
    pub rstd: &'a Tensor,
}

pub struct BackwardArgs<'a> {
    pub x: &'a Tensor,
    pub modv: Option<&'a Tensor>,
    pub groups: &'a [Group],
    pub mean: &'a Tensor,
    pub rstd: &'a Tensor,
    pub dy: &'a Tensor,
    /// [rows, cols], written (`=`)
    pub dx: &'a Tensor,
    /// Gradient of the modulation buffer (same layout as `modv`, `+=`) and a scratch buffer of
    /// `reduce_rows::scratch_elems` f32 (see [`scratch_elems`]); `None` skips d_shift/d_scale.
    pub dmod: Option<(&'a Tensor, &'a Tensor)>,
}

pub fn params(groups: &[Group], cols: usize, eps: f32, modulate: bool) -> Params {
    assert!(!groups.is_empty() && groups.len() <= reduce_rows::MAX_PROBLEMS, "layer_norm_mod: 1..=4 groups");
    let mut problems = [Problem::default(); reduce_rows::MAX_PROBLEMS];
    for (q, g) in problems.iter_mut().zip(groups) {
        let [row0, samples, rows_per_sample, split, alt_rows] = g.rows.wgsl_fields();
        *q = Problem {
            row0,
            samples,
            rows_per_sample,
            split,
            alt_rows,
            sample_stride: g.sample_stride as u32,
            shift_offset: g.shift_offset as u32,
            scale_offset: g.scale_offset as u32,
        };
    }
    Params { cols: cols as u32, n_problems: groups.len() as u32, eps, modulate: modulate as u32, problems }
}

fn check(x: &Tensor, groups: &[Group]) -> usize {
    assert!(x.dtype == DType::F32 && x.shape.len() == 2, "layer_norm_mod: x must be f32 [rows, cols]");
    for g in groups {
        assert!(g.rows.row0 + g.rows.rows() <= x.shape[0], "layer_norm_mod: group {g:?} past the rows");
    }
    x.shape[1]
}

fn total_rows(groups: &[Group]) -> u32 {
    groups.iter().map(|g| g.rows.rows() as u32).sum()
}

pub fn launch_forward(gpu: &Gpu, a: &Args) -> Result<Launch> {
    let cols = check(a.x, a.groups);
    crate::kernels::check_index("layer_norm_mod", &[("x", a.x), ("y", a.y)])?;
    let p = params(a.groups, cols, a.eps, a.modv.is_some());
    Ok(Launch {
        kernel: gpu.kernel(&LAYER_NORM_MOD, "layer_norm_mod", &[])?,
        params: bytemuck::bytes_of(&p).to_vec(),
        buffers: vec![
            a.x.buffer.clone(),
            a.modv.unwrap_or(a.x).buffer.clone(),
            a.y.buffer.clone(),
            a.mean.buffer.clone(),
            a.rstd.buffer.clone(),
        ],
        groups: crate::kernels::grid_2d(total_rows(a.groups)),
    })
}

/// Convenience for tests and one-off use: runs the forward and returns (y, mean, rstd).
pub fn run_forward(
    gpu: &Arc<Gpu>,
    x: &Tensor,
    modv: Option<&Tensor>,
    groups: &[Group],
) -> Result<(Tensor, Tensor, Tensor)> {
    let y = Tensor::zeros(gpu, &x.shape, DType::F32, "layer_norm_mod.y")?;
    let mean = Tensor::zeros(gpu, &x.shape[..1], DType::F32, "layer_norm_mod.mean")?;
    let rstd = Tensor::zeros(gpu, &x.shape[..1], DType::F32, "layer_norm_mod.rstd")?;
    let a = Args { x, modv, groups, eps: EPS, y: &y, mean: &mean, rstd: &rstd };
    gpu.run(&[launch_forward(gpu, &a)?])?;
    Ok((y, mean, rstd))
}

/// The reduce_rows targets of d_shift and d_scale.
fn targets(groups: &[Group], scale: bool) -> Vec<Target> {
    groups
        .iter()
        .map(|g| Target {
            rows: g.rows,
            out_offset: if scale { g.scale_offset } else { g.shift_offset },
            out_stride: g.sample_stride,
        })
        .collect()
}

/// f32 elements of the scratch buffer the backward needs for d_shift/d_scale.
pub fn scratch_elems(groups: &[Group], cols: usize) -> usize {
    reduce_rows::scratch_elems(&targets(groups, false), cols)
}

// forward: y = (x − mean)·rstd·(1 + scale) + shift
//   => dx = rstd·(g − mean(g) − xhat·mean(g·xhat)), g = dy·(1 + scale)
//      d_shift[vr] += Σ_rows dy;  d_scale[vr] += Σ_rows dy·xhat
pub fn launch_backward(gpu: &Gpu, a: &BackwardArgs) -> Result<Vec<Launch>> {
    let cols = check(a.x, a.groups);
    let p = params(a.groups, cols, EPS, a.modv.is_some());
    let mut out = vec![Launch {
        kernel: gpu.kernel(&LAYER_NORM_MOD_BACKWARD, "layer_norm_mod_backward", &[])?,
        params: bytemuck::bytes_of(&p).to_vec(),
        buffers: vec![
            a.dy.buffer.clone(),
            a.x.buffer.clone(),
            a.modv.unwrap_or(a.x).buffer.clone(),
            a.mean.buffer.clone(),
            a.rstd.buffer.clone(),
            a.dx.buffer.clone(),
        ],
        groups: crate::kernels::grid_2d(total_rows(a.groups)),
    }];
    if let Some((dmod, scratch)) = a.dmod {
        for (mode, scale) in [(reduce_rows::Mode::Sum, false), (reduce_rows::Mode::LayerNormProduct, true)] {
            out.extend(reduce_rows::launch(
                gpu,
                &reduce_rows::Args {
                    mode,
                    a: a.dy,
                    c: Some(a.x),
                    mean: Some(a.mean),
                    rstd: Some(a.rstd),
                    targets: &targets(a.groups, scale),
                    scratch,
                    out: dmod,
                },
            )?);
        }
    }
    Ok(out)
}

pub mod cpu {
    use super::Group;

    /// Shift and scale vectors (element offsets) of local row `l` of group `g`.
    fn mod_at(g: &Group, l: usize) -> (usize, usize) {
        let base = g.rows.vec_row(l) * g.sample_stride;
        (g.shift_offset + base, g.scale_offset + base)
    }

    /// f64 reference: returns (y, mean, rstd) over all rows of `x` (rows outside every group: 0).
    pub fn forward(
        x: &[f64],
        cols: usize,
        modv: Option<&[f64]>,
        groups: &[Group],
        eps: f64,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let rows = x.len() / cols;
        let (mut y, mut mean, mut rstd) = (vec![0.0; x.len()], vec![0.0; rows], vec![0.0; rows]);
        for g in groups {
            for l in 0..g.rows.rows() {
                let r = g.rows.row0 + l;
                let xr = &x[r * cols..(r + 1) * cols];
                let m = xr.iter().sum::<f64>() / cols as f64;
                let var = xr.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / cols as f64;
                let rs = 1.0 / (var + eps).sqrt();
                (mean[r], rstd[r]) = (m, rs);
                let (sh, sc) = mod_at(g, l);
                for c in 0..cols {
                    let xh = (xr[c] - m) * rs;
                    y[r * cols + c] = match modv {
                        Some(mv) => xh * (1.0 + mv[sc + c]) + mv[sh + c],
                        None => xh,
                    };
                }
            }
        }
        (y, mean, rstd)
    }

    /// f64 reference backward: returns dx (`=`), and adds d_shift/d_scale into `dmod` when given.
    pub fn backward(
        x: &[f64],
        cols: usize,
        modv: Option<&[f64]>,
        groups: &[Group],
        eps: f64,
        dy: &[f64],
        mut dmod: Option<&mut [f64]>,
    ) -> Vec<f64> {
        let (_, mean, rstd) = forward(x, cols, modv, groups, eps);
        let mut dx = vec![0.0; x.len()];
        for g in groups {
            for l in 0..g.rows.rows() {
                let r = g.rows.row0 + l;
                let (sh, sc) = mod_at(g, l);
                let xh: Vec<f64> = (0..cols).map(|c| (x[r * cols + c] - mean[r]) * rstd[r]).collect();
                let gr: Vec<f64> =
                    (0..cols).map(|c| dy[r * cols + c] * modv.map_or(1.0, |mv| 1.0 + mv[sc + c])).collect();
                let mg = gr.iter().sum::<f64>() / cols as f64;
                let mgx = gr.iter().zip(&xh).map(|(a, b)| a * b).sum::<f64>() / cols as f64;
                for c in 0..cols {
                    dx[r * cols + c] = rstd[r] * (gr[c] - mg - xh[c] * mgx);
                }
                if let Some(d) = dmod.as_deref_mut() {
                    for c in 0..cols {
                        d[sh + c] += dy[r * cols + c];
                        d[sc + c] += dy[r * cols + c] * xh[c];
                    }
                }
            }
        }
        dx
    }
}
