//! Backward of the linear layer and of its LoRA side path (`shaders/gemm/gemm_dx.wgsl`,
//! `shaders/gemm/gemm_dw.wgsl`). Same problem table as the forward ([`GemmProblem`]): each problem is a
//! row range with its own weight (and gradient) offsets, so the two streams' weights and LoRAs
//! differ within one dispatch. Gradient buffers are laid out like their parameters.
//!
//! Accumulation rule: parameter gradients `+=` (micro-batches add up); activation gradients `=`
//! (`dx` may opt into `+=` where residual branches add up).

use super::{
    check_weight, grid, grid2, resolve_variant, tile_shader_dx, u32_of, GemmProblem, LoraProblem, Variant,
    MAX_PROBLEMS, TILE,
};
use crate::gpu::{Gpu, Launch};
use crate::shaders::{GEMM_DW, GEMM_DX};
use crate::tensor::{DType, Tensor};
use crate::Result;

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct DxProblemParams {
    pub row0: u32,
    pub rows: u32,
    pub w_off: u32,
    pub alpha: f32,
}
crate::assert_params!(DxProblemParams);

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct DxParams {
    pub n: u32,
    pub k: u32,
    pub problems: u32,
    /// Row stride of dy and the first dy column used (a column slice of a wider output).
    pub ldy: u32,
    pub dy_col0: u32,
    pub _pad: [u32; 3],
    pub prob: [DxProblemParams; MAX_PROBLEMS],
}
crate::assert_params!(DxParams);

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct DwProblemParams {
    pub row0: u32,
    pub rows: u32,
    pub w_off: u32,
    pub bias_off: u32,
    pub alpha: f32,
    pub _pad: [u32; 3],
}
crate::assert_params!(DwProblemParams);

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct DwParams {
    pub n: u32,
    pub k: u32,
    pub problems: u32,
    /// Row stride of dy and the first dy column used (a column slice of a wider output).
    pub ldy: u32,
    pub dy_col0: u32,
    pub _pad: [u32; 3],
    pub prob: [DwProblemParams; MAX_PROBLEMS],
}
crate::assert_params!(DwParams);

/// Input gradient of `y = alpha·x·Wᵀ`: dy [M, N], W per problem at `weight_offset` (any dtype,
/// as in the forward: [`check_weight`]), dx [M, K].
#[derive(Clone, Copy, Debug)]
pub struct DxArgs<'a> {
    pub dy: &'a Tensor,
    /// `Some((col0, n))`: only dy columns `col0 .. col0 + n` (y was a column slice); `None`: all.
    pub dy_cols: Option<(usize, usize)>,
    pub weight: &'a Tensor,
    pub problems: &'a [GemmProblem],
    pub dx: &'a Tensor,
    /// `dx +=` instead of `dx =`.
    pub accumulate: bool,
}

// forward: y = alpha·x·Wᵀ + b   =>   dx (= | +=) alpha·dy·W
pub fn launch_dx(gpu: &Gpu, a: &DxArgs) -> Result<Launch> {
    launch_dx_variant(gpu, a, Variant::Auto)
}

/// [`launch_dx`] with an explicit choice: `Registers`/`Workgroup` run `gemm_dx` (f32), the
/// tile variants `gemm_dx_coop` (f16 operands, dy rows scaled per row). `Auto` follows the
/// device's family as the forward does (dx has K output columns).
pub fn launch_dx_variant(gpu: &Gpu, a: &DxArgs, variant: Variant) -> Result<Launch> {
    let (m, k) = (a.dy.shape[0], a.dx.shape[1]);
    let (col0, n) = a.dy_cols.unwrap_or((0, a.dy.shape[1]));
    assert!(col0 + n <= a.dy.shape[1], "gemm_dx: dy columns {col0}+{n} past {}", a.dy.shape[1]);
    assert!(a.dy.dtype == DType::F32 && a.dx.dtype == DType::F32, "gemm_dx: dy, dx must be f32");
    assert!((1..=MAX_PROBLEMS).contains(&a.problems.len()), "gemm_dx: 1 to {MAX_PROBLEMS} problems");
    for p in a.problems {
        assert!(p.row0 + p.rows <= m.min(a.dx.shape[0]), "gemm_dx: rows of {p:?} out of range");
        assert!(p.weight_offset + n * k <= a.weight.numel(), "gemm_dx: weight too small for {p:?}");
    }
    check_weight("gemm_dx", a.weight, n, k, a.problems)?;
    crate::kernels::check_index("gemm_dx", &[("dy", a.dy), ("dx", a.dx)])?;
    let mut prob = [DxProblemParams::default(); MAX_PROBLEMS];
    for (d, p) in prob.iter_mut().zip(a.problems) {
        let (row0, rows) = (u32_of(p.row0, "row0"), u32_of(p.rows, "rows"));
        *d = DxProblemParams { row0, rows, w_off: u32_of(p.weight_offset, "weight offset"), alpha: p.alpha };
    }
    let p = DxParams {
        n: u32_of(n, "n"),
        k: u32_of(k, "k"),
        problems: a.problems.len() as u32,
        ldy: u32_of(a.dy.shape[1], "ldy"),
        dy_col0: u32_of(col0, "dy_col0"),
        _pad: [0; 3],
        prob,
    };
    let flag = if a.accumulate { 1.0 } else { 0.0 };
    let mut constants = vec![("DTYPE", a.weight.dtype.code()), ("ACCUMULATE", flag)];
    let rows = a.problems.iter().map(|p| p.rows).max().unwrap_or(0);
    let (kernel, groups) = match resolve_variant(gpu, variant, rows, k)? {
        Variant::TileWith(t, c) => {
            constants.extend(c.constants(gpu, t));
            let groups = grid2(k, a.problems, c.tn() as u32, c.tm() as u32, "gemm_dx_coop");
            (gpu.kernel(tile_shader_dx(t), "gemm_dx_coop", &constants)?, groups)
        }
        _ => (gpu.kernel(&GEMM_DX, "gemm_dx", &constants)?, grid(k, a.problems, TILE, "gemm_dx")),
    };
    Ok(Launch {
        kernel,
        params: bytemuck::bytes_of(&p).to_vec(),
        buffers: vec![a.dy.buffer.clone(), a.weight.buffer.clone(), a.dx.buffer.clone()],
        groups,
    })
}

/// Parameter gradients of `y = alpha·x·Wᵀ + b`: dy [M, N], x [M, K]; dw (f32, laid out like W)
/// at each problem's `weight_offset`, db at its `bias_offset`.
#[derive(Clone, Copy, Debug)]
pub struct DwArgs<'a> {
    pub dy: &'a Tensor,
    /// As in [`DxArgs::dy_cols`].
    pub dy_cols: Option<(usize, usize)>,
    pub x: &'a Tensor,
    pub problems: &'a [GemmProblem],
    pub dw: &'a Tensor,
    pub db: Option<&'a Tensor>,
}

// forward: y = alpha·x·Wᵀ + b   =>   dW += alpha·dyᵀ·x;   db += Σ_rows dy
pub fn launch_dw(gpu: &Gpu, a: &DwArgs) -> Result<Launch> {
    let (m, k) = (a.dy.shape[0], a.x.shape[1]);
    let (col0, n) = a.dy_cols.unwrap_or((0, a.dy.shape[1]));
    assert!(col0 + n <= a.dy.shape[1], "gemm_dw: dy columns {col0}+{n} past {}", a.dy.shape[1]);
    assert!(a.dy.dtype == DType::F32 && a.x.dtype == DType::F32 && a.dw.dtype == DType::F32, "gemm_dw: f32 only");
    assert!((1..=MAX_PROBLEMS).contains(&a.problems.len()), "gemm_dw: 1 to {MAX_PROBLEMS} problems");
    crate::kernels::check_index("gemm_dw", &[("dy", a.dy), ("x", a.x), ("dw", a.dw)])?;
    let mut prob = [DwProblemParams::default(); MAX_PROBLEMS];
    for (d, p) in prob.iter_mut().zip(a.problems) {
        assert!(p.row0 + p.rows <= m.min(a.x.shape[0]), "gemm_dw: rows of {p:?} out of range");
        assert!(p.weight_offset + n * k <= a.dw.numel(), "gemm_dw: dw too small for {p:?}");
        if let Some(db) = a.db {
            assert!(p.bias_offset + n <= db.numel(), "gemm_dw: db too small for {p:?}");
        }
        *d = DwProblemParams {
            row0: u32_of(p.row0, "row0"),
            rows: u32_of(p.rows, "rows"),
            w_off: u32_of(p.weight_offset, "weight offset"),
            bias_off: u32_of(p.bias_offset, "bias offset"),
            alpha: p.alpha,
            _pad: [0; 3],
        };
    }
    let p = DwParams {
        n: u32_of(n, "n"),
        k: u32_of(k, "k"),
        problems: a.problems.len() as u32,
        ldy: u32_of(a.dy.shape[1], "ldy"),
        dy_col0: u32_of(col0, "dy_col0"),
        _pad: [0; 3],
        prob,
    };
    // The db binding is read-write, so without a bias it gets a 4-byte scratch buffer.
    let db = match a.db {
        Some(t) => t.buffer.clone(),
        None => gpu.buffer(4, "gemm_dw: no bias")?,
    };
    let flag = if a.db.is_some() { 1.0 } else { 0.0 };
    // The grid's second axis covers N (rows of dw), not the problem rows.
    let probs: Vec<GemmProblem> = a.problems.iter().map(|q| GemmProblem { rows: n, ..*q }).collect();
    Ok(Launch {
        kernel: gpu.kernel(&GEMM_DW, "gemm_dw", &[("HAS_BIAS", flag)])?,
        params: bytemuck::bytes_of(&p).to_vec(),
        buffers: vec![a.dy.buffer.clone(), a.x.buffer.clone(), a.dw.buffer.clone(), db],
        groups: grid(k, &probs, TILE, "gemm_dw"),
    })
}

/// Gradients of the LoRA side path `y += t·Bᵀ`, `t = s·x·Aᵀ` ([`super::launch_lora_down`]),
/// for one LoRA per problem (t has exactly `rank` columns). `dt` is a caller-provided [M, R]
/// scratch; `da`/`db` are f32, laid out like A and B (problem offsets `a_offset`/`b_offset`).
#[derive(Clone, Copy, Debug)]
pub struct LoraGradArgs<'a> {
    pub x: &'a Tensor,
    pub dy: &'a Tensor,
    /// As in [`DxArgs::dy_cols`]: the LoRA's output columns inside dy.
    pub dy_cols: Option<(usize, usize)>,
    /// The forward's scaled down-projection s·x·Aᵀ [M, R].
    pub t: &'a Tensor,
    pub a: &'a Tensor,
    pub b: &'a Tensor,
    pub rank: usize,
    pub problems: &'a [LoraProblem],
    pub da: &'a Tensor,
    pub db: &'a Tensor,
    pub dt: &'a Tensor,
    /// Adds the LoRA path's input gradient (`dx += dt·A`) when given.
    pub dx: Option<&'a Tensor>,
}

// forward: y = x·Wᵀ + b + t·Bᵀ,  t = s·x·Aᵀ   =>
//   dB += dyᵀ·t  (= s·dyᵀ·(x·Aᵀ));   dt = s·dy·B  (the gradient of x·Aᵀ);
//   dA += dtᵀ·x;                      dx += dt·A.
// Four launches, in this order (dt feeds the last two).
pub fn launch_lora_grads(gpu: &Gpu, a: &LoraGradArgs) -> Result<Vec<Launch>> {
    assert!(
        a.t.shape.len() == 2 && a.t.shape[1] == a.rank && a.dt.shape == a.t.shape,
        "gemm::lora_grads: t, dt must be [M, R]"
    );
    let on_b = |p: &LoraProblem, alpha: f32| GemmProblem::rows(p.row0, p.rows).weight(p.b_offset).alpha(alpha);
    let on_a = |p: &LoraProblem| GemmProblem::rows(p.row0, p.rows).weight(p.a_offset);
    let pb1: Vec<_> = a.problems.iter().map(|p| on_b(p, 1.0)).collect();
    let pbs: Vec<_> = a.problems.iter().map(|p| on_b(p, p.scale)).collect();
    let pa: Vec<_> = a.problems.iter().map(on_a).collect();
    let mut out = vec![
        launch_dw(gpu, &DwArgs { dy: a.dy, dy_cols: a.dy_cols, x: a.t, problems: &pb1, dw: a.db, db: None })?,
        launch_dx(
            gpu,
            &DxArgs { dy: a.dy, dy_cols: a.dy_cols, weight: a.b, problems: &pbs, dx: a.dt, accumulate: false },
        )?,
        launch_dw(gpu, &DwArgs { dy: a.dt, dy_cols: None, x: a.x, problems: &pa, dw: a.da, db: None })?,
    ];
    if let Some(dx) = a.dx {
        out.push(launch_dx(
            gpu,
            &DxArgs { dy: a.dt, dy_cols: None, weight: a.a, problems: &pa, dx, accumulate: true },
        )?);
    }
    Ok(out)
}

/// Naive references in f64, same argument meanings as the launchers.
pub mod cpu {
    use crate::kernels::gemm::{GemmProblem, LoraProblem};

    /// dx[m, 0..k] (= | +=) alpha·Σ_n dy[m, n]·W[off + n·k + ..] over the problems' rows.
    pub fn dx(
        dy: &[f64],
        n: usize,
        weight: &[f64],
        k: usize,
        problems: &[GemmProblem],
        dx: &mut [f64],
        accumulate: bool,
    ) {
        for p in problems {
            for m in p.row0..p.row0 + p.rows {
                for c in 0..k {
                    let s: f64 = (0..n).map(|j| dy[m * n + j] * weight[p.weight_offset + j * k + c]).sum();
                    let v = p.alpha as f64 * s;
                    dx[m * k + c] = if accumulate { dx[m * k + c] + v } else { v };
                }
            }
        }
    }

    /// dw[off + n·k + c] += alpha·Σ_m dy[m, n]·x[m, c];  db[boff + n] += Σ_m dy[m, n].
    pub fn dw(
        dy: &[f64],
        n: usize,
        x: &[f64],
        k: usize,
        problems: &[GemmProblem],
        dw: &mut [f64],
        mut db: Option<&mut [f64]>,
    ) {
        for p in problems {
            let rows = p.row0..p.row0 + p.rows;
            let alpha = p.alpha as f64;
            for j in 0..n {
                for c in 0..k {
                    let s: f64 = rows.clone().map(|m| dy[m * n + j] * x[m * k + c]).sum();
                    dw[p.weight_offset + j * k + c] += alpha * s;
                }
                if let Some(db) = db.as_deref_mut() {
                    db[p.bias_offset + j] += rows.clone().map(|m| dy[m * n + j]).sum::<f64>();
                }
            }
        }
    }

    /// The LoRA gradients of [`super::launch_lora_grads`]: returns dt; updates da, db, dx.
    #[allow(clippy::too_many_arguments)]
    pub fn lora_grads(
        x: &[f64],
        k: usize,
        dy: &[f64],
        n: usize,
        t: &[f64],
        a: &[f64],
        b: &[f64],
        rank: usize,
        problems: &[LoraProblem],
        da: &mut [f64],
        db: &mut [f64],
        dx: Option<&mut [f64]>,
    ) -> Vec<f64> {
        let m = x.len() / k;
        let on_b = |p: &LoraProblem, s: f32| GemmProblem::rows(p.row0, p.rows).weight(p.b_offset).alpha(s);
        let pb1: Vec<_> = problems.iter().map(|p| on_b(p, 1.0)).collect();
        let pbs: Vec<_> = problems.iter().map(|p| on_b(p, p.scale)).collect();
        let pa: Vec<_> = problems.iter().map(|p| GemmProblem::rows(p.row0, p.rows).weight(p.a_offset)).collect();
        dw(dy, n, t, rank, &pb1, db, None);
        let mut dt = vec![0.0; m * rank];
        self::dx(dy, n, b, rank, &pbs, &mut dt, false);
        dw(&dt, rank, x, k, &pa, da, None);
        if let Some(dxv) = dx {
            self::dx(&dt, rank, a, k, &pa, dxv, true);
        }
        dt
    }
}
