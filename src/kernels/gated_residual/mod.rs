//! Per-sample gated products over grouped rows (`shaders/gated_residual/gated_residual.wgsl`), the gated
//! residual of a dual-stream block (diffusers `QwenImageTransformerBlock`: `x = x + gate·branch`,
//! spec qwen-image-dit.md §3.4), with the same problem / zero_cond_t addressing as `layer_norm_mod`.

use crate::gpu::{Gpu, Launch};
use crate::kernels::norm::reduce_rows::{self, SampleRows, Target};
use crate::shaders::GATED_RESIDUAL;
use crate::tensor::{DType, Tensor};
use crate::Result;

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Problem {
    pub row0: u32,
    pub samples: u32,
    pub rows_per_sample: u32,
    pub split: u32,
    pub alt_rows: u32,
    pub sample_stride: u32,
    pub gate_offset: u32,
    pub _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    pub cols: u32,
    pub n_problems: u32,
    pub accumulate: u32,
    pub _pad: u32,
    pub problems: [Problem; reduce_rows::MAX_PROBLEMS],
}
crate::assert_params!(Params);

/// One row range and its gate vectors: row `vr` at `modv[gate_offset + vr * sample_stride ..]`.
#[derive(Clone, Copy, Debug)]
pub struct Group {
    pub rows: SampleRows,
    pub gate_offset: usize,
    pub sample_stride: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Write {
    /// `out += gate·a`
    Accumulate,
    /// `out = gate·a`
    Assign,
    /// `out = res + gate·a` (`Args::res`; out is a fresh tensor, as a training graph needs).
    FromResidual,
}

pub struct Args<'a> {
    /// [rows, cols] f32
    pub a: &'a Tensor,
    /// f32 modulation buffer holding the gates
    pub modv: &'a Tensor,
    pub groups: &'a [Group],
    pub write: Write,
    /// [rows, cols] f32: the residual of `Write::FromResidual`, else `None`.
    pub res: Option<&'a Tensor>,
    /// [rows, cols] f32
    pub out: &'a Tensor,
}

pub struct BackwardArgs<'a> {
    /// the forward's branch input `a` [rows, cols]
    pub branch: &'a Tensor,
    pub modv: &'a Tensor,
    pub groups: &'a [Group],
    /// gradient of the residual output [rows, cols]
    pub dx: &'a Tensor,
    /// [rows, cols], written (`=`)
    pub d_branch: &'a Tensor,
    /// gradient of the modulation buffer (`+=`) and a scratch of [`scratch_elems`] f32
    pub d_gate: Option<(&'a Tensor, &'a Tensor)>,
}

pub fn params(groups: &[Group], cols: usize, write: Write) -> Params {
    assert!(!groups.is_empty() && groups.len() <= reduce_rows::MAX_PROBLEMS, "gated_residual: 1..=4 groups");
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
            gate_offset: g.gate_offset as u32,
            _pad: 0,
        };
    }
    let accumulate = match write {
        Write::Assign => 0,
        Write::Accumulate => 1,
        Write::FromResidual => 2,
    };
    Params { cols: cols as u32, n_problems: groups.len() as u32, accumulate, _pad: 0, problems }
}

pub fn launch_forward(gpu: &Gpu, a: &Args) -> Result<Launch> {
    assert!(a.a.dtype == DType::F32 && a.a.shape.len() == 2, "gated_residual: a must be f32 [rows, cols]");
    assert_eq!(a.a.shape, a.out.shape, "gated_residual: out shape");
    assert_eq!(a.res.is_some(), a.write == Write::FromResidual, "gated_residual: res goes with Write::FromResidual");
    let cols = a.a.shape[1];
    for g in a.groups {
        assert!(g.rows.row0 + g.rows.rows() <= a.a.shape[0], "gated_residual: group {g:?} past the rows");
    }
    let rows: usize = a.groups.iter().map(|g| g.rows.rows()).sum();
    let p = params(a.groups, cols, a.write);
    Ok(Launch {
        kernel: gpu.kernel(&GATED_RESIDUAL, "gated_residual", &[])?,
        params: bytemuck::bytes_of(&p).to_vec(),
        buffers: vec![
            a.a.buffer.clone(),
            a.modv.buffer.clone(),
            a.out.buffer.clone(),
            a.res.unwrap_or(a.a).buffer.clone(),
        ],
        groups: crate::kernels::grid_2d((rows * cols.div_ceil(256)) as u32),
    })
}

fn targets(groups: &[Group]) -> Vec<Target> {
    groups.iter().map(|g| Target { rows: g.rows, out_offset: g.gate_offset, out_stride: g.sample_stride }).collect()
}

/// f32 elements of the d_gate scratch buffer.
pub fn scratch_elems(groups: &[Group], cols: usize) -> usize {
    reduce_rows::scratch_elems(&targets(groups), cols)
}

// forward: x_out = x + gate·branch   =>   d_branch = gate·dx;  d_gate[vr] += Σ_rows dx·branch;  dx_in = dx
pub fn launch_backward(gpu: &Gpu, a: &BackwardArgs) -> Result<Vec<Launch>> {
    let fwd = Args { a: a.dx, modv: a.modv, groups: a.groups, write: Write::Assign, res: None, out: a.d_branch };
    let mut out = vec![launch_forward(gpu, &fwd)?];
    if let Some((d_gate, scratch)) = a.d_gate {
        out.extend(reduce_rows::launch(
            gpu,
            &reduce_rows::Args {
                mode: reduce_rows::Mode::Product,
                a: a.dx,
                c: Some(a.branch),
                mean: None,
                rstd: None,
                targets: &targets(a.groups),
                scratch,
                out: d_gate,
            },
        )?);
    }
    Ok(out)
}

pub mod cpu {
    use super::{Group, Write};

    /// f64 reference: `out (+)= gate·a` on the rows of every group.
    pub fn apply(a: &[f64], cols: usize, modv: &[f64], groups: &[Group], write: Write, out: &mut [f64]) {
        for g in groups {
            for l in 0..g.rows.rows() {
                let r = g.rows.row0 + l;
                let gb = g.gate_offset + g.rows.vec_row(l) * g.sample_stride;
                for c in 0..cols {
                    let v = modv[gb + c] * a[r * cols + c];
                    match write {
                        Write::Accumulate => out[r * cols + c] += v,
                        Write::Assign => out[r * cols + c] = v,
                        // out = res + gate·a: the caller passes a copy of res as `out`.
                        Write::FromResidual => out[r * cols + c] += v,
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
