//! Per-sample column sums over grouped row ranges (`shaders/norm/reduce_rows.wgsl`):
//! `out[vrow, :] += Σ_{rows r of one sample} term(r, :)`, two passes, no float atomics.
//!
//! Uses: d_shift (`Mode::Sum` of dy), d_gate (`Mode::Product` of dy·y), d_scale of a
//! LayerNorm (`Mode::LayerNormProduct`: dy·(x−mean)·rstd), d_weight of an RMSNorm
//! (`Mode::RmsProduct`: dy·x·rstd). The accumulation rule is `+=` (parameter gradients).

use crate::gpu::{Gpu, Launch};
pub use crate::layout::SampleRows;
use crate::shaders::REDUCE_ROWS;
use crate::tensor::{DType, Tensor};
use crate::Result;

/// Rows per partial chunk: a chunk is one invocation's serial loop (coalesced across columns).
pub const CHUNK_ROWS: usize = 32;
/// Problems per dispatch (the WGSL `array<Problem, 4>`).
pub const MAX_PROBLEMS: usize = 4;

/// Partial chunks of one sample: chunks cross neither a sample nor the zero_cond_t split.
fn chunks_per_sample(r: &SampleRows) -> usize {
    let s = r.split_eff();
    s.div_ceil(CHUNK_ROWS) + (r.rows_per_sample - s).div_ceil(CHUNK_ROWS)
}

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Problem {
    pub row0: u32,
    pub samples: u32,
    pub rows_per_sample: u32,
    pub split: u32,
    pub alt_rows: u32,
    pub out_offset: u32,
    pub out_stride: u32,
    pub chunk0: u32,
    pub sample0: u32,
    pub _pad: [u32; 3],
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    pub cols: u32,
    pub n_problems: u32,
    pub chunk_rows: u32,
    pub mode: u32,
    pub problems: [Problem; MAX_PROBLEMS],
}
crate::assert_params!(Params);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// term = a
    Sum = 0,
    /// term = a·c
    Product = 1,
    /// term = a·(c − mean[r])·rstd[r]
    LayerNormProduct = 2,
    /// term = a·c·rstd[r]
    RmsProduct = 3,
}

/// One problem and where its sums go: `out[offset + vrow * stride + col]`.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    pub rows: SampleRows,
    pub out_offset: usize,
    pub out_stride: usize,
}

pub struct Args<'a> {
    pub mode: Mode,
    /// [rows, cols]
    pub a: &'a Tensor,
    /// [rows, cols]; `Product`, `LayerNormProduct`, `RmsProduct`.
    pub c: Option<&'a Tensor>,
    /// [rows]; `LayerNormProduct`.
    pub mean: Option<&'a Tensor>,
    /// [rows]; `LayerNormProduct`, `RmsProduct`.
    pub rstd: Option<&'a Tensor>,
    pub targets: &'a [Target],
    /// f32, at least [`scratch_elems`] elements.
    pub scratch: &'a Tensor,
    /// f32, accumulated into (`+=`).
    pub out: &'a Tensor,
}

/// f32 elements of the scratch buffer for these targets at `cols` columns.
pub fn scratch_elems(targets: &[Target], cols: usize) -> usize {
    targets.iter().map(|t| t.rows.samples * chunks_per_sample(&t.rows)).sum::<usize>() * cols
}

/// The uniform of both passes, with the chunk and sample prefix sums filled in.
pub fn params(mode: Mode, targets: &[Target], cols: usize) -> Params {
    assert!(!targets.is_empty() && targets.len() <= MAX_PROBLEMS, "reduce_rows: 1..=4 problems");
    let mut problems = [Problem::default(); MAX_PROBLEMS];
    let (mut chunk0, mut sample0) = (0usize, 0usize);
    for (q, t) in problems.iter_mut().zip(targets) {
        let r = &t.rows;
        assert!(r.rows_per_sample > 0 && r.samples > 0, "reduce_rows: empty problem {r:?}");
        let [row0, samples, rows_per_sample, split, alt_rows] = r.wgsl_fields();
        *q = Problem {
            row0,
            samples,
            rows_per_sample,
            split,
            alt_rows,
            out_offset: t.out_offset as u32,
            out_stride: t.out_stride as u32,
            chunk0: chunk0 as u32,
            sample0: sample0 as u32,
            _pad: [0; 3],
        };
        chunk0 += r.samples * chunks_per_sample(r);
        sample0 += r.samples;
    }
    Params {
        cols: cols as u32,
        n_problems: targets.len() as u32,
        chunk_rows: CHUNK_ROWS as u32,
        mode: mode as u32,
        problems,
    }
}

/// The partial pass and the finish pass.
pub fn launch(gpu: &Gpu, args: &Args) -> Result<Vec<Launch>> {
    let cols = *args.a.shape.last().expect("reduce_rows: a needs a shape");
    let need = |t: Option<&Tensor>, what: &str| -> Tensor {
        t.unwrap_or_else(|| panic!("reduce_rows {:?}: needs {what}", args.mode)).clone()
    };
    let c = match args.mode {
        Mode::Sum => args.a.clone(),
        _ => need(args.c, "c"),
    };
    let rstd = match args.mode {
        Mode::LayerNormProduct | Mode::RmsProduct => need(args.rstd, "rstd"),
        _ => args.a.clone(),
    };
    let mean = match args.mode {
        Mode::LayerNormProduct => need(args.mean, "mean"),
        _ => rstd.clone(),
    };
    for t in [args.a, &c, args.scratch, args.out] {
        assert_eq!(t.dtype, DType::F32, "reduce_rows: f32 tensors only");
    }
    let p = params(args.mode, args.targets, cols);
    let chunks = scratch_elems(args.targets, cols) / cols.max(1);
    let samples: usize = args.targets.iter().map(|t| t.rows.samples).sum();
    assert!(args.scratch.numel() >= chunks * cols, "reduce_rows: scratch too small");
    assert!(
        chunks <= 65535 && samples <= 65535,
        "reduce_rows: {chunks} chunks / {samples} samples exceed a grid dimension"
    );
    let buffers = vec![
        args.a.buffer.clone(),
        c.buffer.clone(),
        mean.buffer.clone(),
        rstd.buffer.clone(),
        args.scratch.buffer.clone(),
        args.out.buffer.clone(),
    ];
    let gx = cols.div_ceil(256) as u32;
    let bytes = bytemuck::bytes_of(&p).to_vec();
    Ok(vec![
        Launch {
            kernel: gpu.kernel(&REDUCE_ROWS, "reduce_rows_partial", &[])?,
            params: bytes.clone(),
            buffers: buffers.clone(),
            groups: [gx, chunks as u32, 1],
        },
        Launch {
            kernel: gpu.kernel(&REDUCE_ROWS, "reduce_rows_finish", &[])?,
            params: bytes,
            buffers,
            groups: [gx, samples as u32, 1],
        },
    ])
}

pub mod cpu {
    use super::{Mode, Target};

    /// f64 reference: `out[off + vrow*stride + col] += Σ term`.
    #[allow(clippy::too_many_arguments)]
    pub fn reduce_rows(
        mode: Mode,
        a: &[f64],
        c: Option<&[f64]>,
        mean: Option<&[f64]>,
        rstd: Option<&[f64]>,
        cols: usize,
        targets: &[Target],
        out: &mut [f64],
    ) {
        let c = || c.expect("reduce_rows::cpu: this mode needs c");
        let mean = || mean.expect("reduce_rows::cpu: LayerNormProduct needs mean");
        let rstd = || rstd.expect("reduce_rows::cpu: this mode needs rstd");
        for t in targets {
            for l in 0..t.rows.rows() {
                let r = t.rows.row0 + l;
                let o = t.out_offset + t.rows.vec_row(l) * t.out_stride;
                for col in 0..cols {
                    let i = r * cols + col;
                    let v = match mode {
                        Mode::Sum => a[i],
                        Mode::Product => a[i] * c()[i],
                        Mode::LayerNormProduct => a[i] * (c()[i] - mean()[r]) * rstd()[r],
                        Mode::RmsProduct => a[i] * c()[i] * rstd()[r],
                    };
                    out[o + col] += v;
                }
            }
        }
    }
}
