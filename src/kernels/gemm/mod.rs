//! Linear layers: `y = epilogue(x·Wᵀ + b + t·Bᵀ)` with weights in any [`DType`], up to 4
//! row-range problems per dispatch, fused epilogues and a LoRA side path (`shaders/gemm/gemm.wgsl`).
//!
//! Weights stay in their storage dtype on the GPU: f16/bf16 packed 2 per u32, the GGML block
//! formats and fp8 as their bytes, decoded in the kernels' load stage (`shaders/common/quant.wgsl`,
//! docs/quantize-kernels.md). Block formats need K and every weight offset in whole blocks
//! ([`check_weight`] says so as an error); otherwise any K works, with vector weight loads when
//! K and the offset suit the packing (even for halves, multiples of 4 for fp8) and scalar loads
//! otherwise (slower, same result).

use crate::gpu::{Gpu, Launch};
use crate::kernels::Tiles;
use crate::layout::PerSampleRef;
use crate::shaders::{
    Shader, GEMM, GEMM_COOP16, GEMM_COOP8, GEMM_DX, GEMM_DX_COOP16, GEMM_DX_COOP8, GEMM_DX_EMULATED8, GEMM_DX_F16,
    GEMM_EMULATED8, GEMM_F16,
};
use crate::tensor::{DType, Tensor};
use crate::{Error, Result};

/// Most problems per dispatch (the size of the Params problem table).
pub const MAX_PROBLEMS: usize = 4;
/// Output tile of one `gemm` workgroup (8x8 invocations, 4x4 outputs each).
pub const TILE: u32 = 32;
/// Output tile of one `gemm_tiled` workgroup (16x16 invocations, 4x4 outputs each).
pub const TILE_WG: u32 = 64;

/// Which entry point of `shaders/gemm/gemm.wgsl` runs a GEMM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// The device's kernel family (`gpu.kernel_choice()`): the tile program `gemm_coop` on its
    /// fragment backend for `coop`, `f16` and `coop-emulated` (except skinny GEMMs, N <
    /// [`SKINNY_N`] or rows < [`SKINNY_M`]: LoRA down-projections and GEMVs stay f32); for `portable`, `Registers` on CPU adapters
    /// (lavapipe: barriers and workgroup memory are ~10x slower there, field-notes §2),
    /// `Workgroup` elsewhere.
    Auto,
    /// `gemm`: register tiling only, f32.
    Registers,
    /// `gemm_tiled`: 64x64 tiles staged through workgroup memory with coalesced loads, f32.
    Workgroup,
    /// `gemm_coop` on a fragment backend, f16 operands, its default [`TileConfig`].
    Tile(Tiles),
    /// `gemm_coop` with an explicit tile configuration (tests, the kernel bench).
    TileWith(Tiles, TileConfig),
}

/// Below this many output columns `Auto` keeps a mixed-precision device on the f32 kernels: a
/// 64- or 128-column tile would be mostly idle (LoRA down-projections, N = rank).
pub const SKINNY_N: usize = 64;
/// Below this many rows likewise (the modulation and timestep GEMVs, M = batch): a 64- or
/// 128-row tile would be mostly idle, and a GEMV is bound by reading W, not by FLOPs.
pub const SKINNY_M: usize = 16;

/// The tile of one `gemm_coop` workgroup: `warps_m × warps_n` subgroups, each owning a `wtm × wtn`
/// warp tile (multiples of the fragment edge, at most 64), K staged `bk` at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TileConfig {
    pub warps_m: usize,
    pub warps_n: usize,
    pub wtm: usize,
    pub wtn: usize,
    pub bk: usize,
}

/// Padding of each staged row, in elements (`PAD` in the shader).
const TILE_PAD: usize = 8;

impl TileConfig {
    /// The default per backend: 128x128 tiles of four 64x64 warp tiles on real cooperative
    /// matrices (BK 32 with 16x16 fragments, 16 on Metal's 32 KiB of threadgroup memory); 64x64
    /// tiles of four 32x32 warp tiles on SIMT backends (BK 32 in f16, 16 in the f32 emulation,
    /// which fits lavapipe's 32 KiB). Shrinks BK (then the tile) until it fits `max_bytes`.
    pub fn default_for(tiles: Tiles, max_bytes: usize) -> TileConfig {
        let mut c = match tiles {
            Tiles::Coop16 => TileConfig { warps_m: 2, warps_n: 2, wtm: 64, wtn: 64, bk: 32 },
            Tiles::Coop8 => TileConfig { warps_m: 2, warps_n: 2, wtm: 64, wtn: 64, bk: 16 },
            Tiles::F16 => TileConfig { warps_m: 2, warps_n: 2, wtm: 32, wtn: 32, bk: 32 },
            Tiles::Emulated16 | Tiles::Emulated8 => TileConfig { warps_m: 2, warps_n: 2, wtm: 32, wtn: 32, bk: 16 },
        };
        while c.workgroup_bytes(tiles) > max_bytes {
            if c.bk > tiles.frag() {
                c.bk /= 2;
            } else if c.wtm > tiles.frag() * 2 {
                c.wtm /= 2;
                c.wtn /= 2;
            } else {
                break;
            }
        }
        c
    }
    pub fn tm(&self) -> usize {
        self.warps_m * self.wtm
    }
    pub fn tn(&self) -> usize {
        self.warps_n * self.wtn
    }
    /// Workgroup memory of the shader's arrays: two staging buffers, one fragment per
    /// subgroup, the row maxima and scales.
    pub fn workgroup_bytes(&self, tiles: Tiles) -> usize {
        let stage = (self.tm() + self.tn()) * (self.bk + TILE_PAD);
        let frag = tiles.frag();
        2 * stage * tiles.elem_bytes() + self.warps_m * self.warps_n * frag * frag * 4 + self.tm() * 8
    }
    /// The override constants of the tile layout.
    pub(crate) fn constants(&self, gpu: &Gpu, tiles: Tiles) -> Vec<(&'static str, f64)> {
        let f = |v: usize| v as f64;
        vec![
            ("WARPS_M", f(self.warps_m)),
            ("WARPS_N", f(self.warps_n)),
            ("WTM", f(self.wtm)),
            ("WTN", f(self.wtn)),
            ("BK", f(self.bk)),
            ("LANES", f(tiles.lanes(gpu))),
        ]
    }
    fn check(&self, tiles: Tiles) {
        let f = tiles.frag();
        assert!(
            self.wtm % f == 0 && self.wtn % f == 0 && self.wtm <= 64 && self.wtn <= 64 && self.bk % f == 0,
            "gemm_coop: tile {self:?} does not suit {f}x{f} fragments"
        );
    }
}

/// The `gemm/gemm_dx` composition of a fragment backend.
pub(crate) fn tile_shader_dx(tiles: Tiles) -> &'static Shader {
    match tiles {
        Tiles::Coop16 => &GEMM_DX_COOP16,
        Tiles::Coop8 => &GEMM_DX_COOP8,
        Tiles::F16 => &GEMM_DX_F16,
        Tiles::Emulated16 => &GEMM_DX,
        Tiles::Emulated8 => &GEMM_DX_EMULATED8,
    }
}

/// The `gemm/gemm` composition of a fragment backend.
pub(crate) fn tile_shader(tiles: Tiles) -> &'static Shader {
    match tiles {
        Tiles::Coop16 => &GEMM_COOP16,
        Tiles::Coop8 => &GEMM_COOP8,
        Tiles::F16 => &GEMM_F16,
        Tiles::Emulated16 => &GEMM,
        Tiles::Emulated8 => &GEMM_EMULATED8,
    }
}

/// One row-range problem of a grouped GEMM (see the module doc). Build with
/// `GemmProblem::rows(row0, rows)` and the setters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GemmProblem {
    pub row0: usize,
    pub rows: usize,
    /// Rows per sample S: row r is sample (r - row0) / S, token (r - row0) % S.
    pub rows_per_sample: usize,
    /// Element offset of this problem's W [N, K] (backward: also of its dW).
    pub weight_offset: usize,
    /// Element offset of its bias [N] (backward: of its db).
    pub bias_offset: usize,
    /// Element offset of its LoRA B [N, R].
    pub lora_offset: usize,
    /// Scale of x·Wᵀ (1 for a linear layer).
    pub alpha: f32,
    pub gate: PerSampleRef,
}

impl GemmProblem {
    pub fn rows(row0: usize, rows: usize) -> GemmProblem {
        GemmProblem {
            row0,
            rows,
            rows_per_sample: rows.max(1),
            weight_offset: 0,
            bias_offset: 0,
            lora_offset: 0,
            alpha: 1.0,
            gate: PerSampleRef::per_sample(0, 0),
        }
    }
    pub fn samples(self, rows_per_sample: usize) -> Self {
        GemmProblem { rows_per_sample, ..self }
    }
    pub fn weight(self, offset: usize) -> Self {
        GemmProblem { weight_offset: offset, ..self }
    }
    pub fn bias(self, offset: usize) -> Self {
        GemmProblem { bias_offset: offset, ..self }
    }
    pub fn lora(self, offset: usize) -> Self {
        GemmProblem { lora_offset: offset, ..self }
    }
    pub fn alpha(self, alpha: f32) -> Self {
        GemmProblem { alpha, ..self }
    }
    pub fn gate(self, gate: PerSampleRef) -> Self {
        GemmProblem { gate, ..self }
    }
    fn end(&self) -> usize {
        self.row0 + self.rows
    }
    /// Highest gate element index read, plus one.
    fn gate_end(&self, n: usize) -> usize {
        let samples = self.rows.div_ceil(self.rows_per_sample);
        let alt = if self.gate.split < self.rows_per_sample { self.gate.alt_shift } else { 0 };
        self.gate.offset + (samples.saturating_sub(1) + alt) * self.gate.sample_stride + n
    }
}

/// The LoRA side path `y += t·Bᵀ`: t [M, R] f32 (the caller pre-scales it: [`launch_lora_down`]),
/// B: each problem's [N, R] f32 block at its `lora_offset`. Stacked LoRAs = concatenated columns.
#[derive(Clone, Copy, Debug)]
pub struct Lora<'a> {
    pub t: &'a Tensor,
    pub b: &'a Tensor,
    pub rank: usize,
}

/// How the output combines with what was there.
#[derive(Clone, Copy, Debug, Default)]
pub enum Residual<'a> {
    /// `y = acc`.
    #[default]
    None,
    /// `y = res + acc` (res: same shape as y, a different buffer).
    From(&'a Tensor),
    /// `y += acc` (y is read and written; use this when the residual is y itself).
    InPlace,
}

/// Fused epilogue, applied in this order: `acc = alpha·x·Wᵀ (+ bias) (+ t·Bᵀ)`, `GELU`, `·gate`,
/// `+ residual`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Epilogue<'a> {
    pub bias: Option<&'a Tensor>,
    pub lora: Option<Lora<'a>>,
    pub gelu: bool,
    /// Per-sample gate rows (f32), addressed by each problem's [`PerSampleRef`].
    pub gate: Option<&'a Tensor>,
    pub residual: Residual<'a>,
}

/// One grouped GEMM dispatch. K = `x.shape[1]`; y: [M, ldy] f32 with columns
/// `[y_col0, y_col0 + n)` written (and residual read at the same positions).
#[derive(Clone, Copy, Debug)]
pub struct GemmArgs<'a> {
    pub x: &'a Tensor,
    /// Any dtype; problems index into it by element offset.
    pub weight: &'a Tensor,
    pub n: usize,
    pub problems: &'a [GemmProblem],
    pub epilogue: Epilogue<'a>,
    pub y: &'a Tensor,
    pub y_col0: usize,
}

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct ProblemParams {
    pub row0: u32,
    pub rows: u32,
    pub w_off: u32,
    pub bias_off: u32,
    pub lora_off: u32,
    pub rows_per_sample: u32,
    pub gate_off: u32,
    pub gate_stride: u32,
    pub gate_split: u32,
    pub gate_alt: u32,
    pub alpha: f32,
    pub _pad: u32,
}
crate::assert_params!(ProblemParams);

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    pub n: u32,
    pub k: u32,
    pub rank: u32,
    pub problems: u32,
    pub ldy: u32,
    pub y_col0: u32,
    pub _pad: [u32; 2],
    pub prob: [ProblemParams; MAX_PROBLEMS],
}
crate::assert_params!(Params);

pub(crate) fn u32_of(v: usize, what: &str) -> u32 {
    u32::try_from(v).unwrap_or_else(|_| panic!("gemm: {what} = {v} exceeds u32"))
}

fn problem_params(p: &GemmProblem) -> ProblemParams {
    ProblemParams {
        row0: u32_of(p.row0, "row0"),
        rows: u32_of(p.rows, "rows"),
        w_off: u32_of(p.weight_offset, "weight offset"),
        bias_off: u32_of(p.bias_offset, "bias offset"),
        lora_off: u32_of(p.lora_offset, "lora offset"),
        rows_per_sample: u32_of(p.rows_per_sample, "rows_per_sample"),
        gate_off: u32_of(p.gate.offset, "gate offset"),
        gate_stride: u32_of(p.gate.sample_stride, "gate stride"),
        gate_split: p.gate.split.min(u32::MAX as usize) as u32,
        gate_alt: u32_of(p.gate.alt_shift, "gate alt shift"),
        alpha: p.alpha,
        _pad: 0,
    }
}

/// Workgroup grid for output columns `cols` and the problems' largest row count.
pub(crate) fn grid(cols: usize, problems: &[GemmProblem], tile: u32, name: &str) -> [u32; 3] {
    grid2(cols, problems, tile, tile, name)
}

/// [`grid`] with tiles of `tile_n` columns and `tile_m` rows.
pub(crate) fn grid2(cols: usize, problems: &[GemmProblem], tile_n: u32, tile_m: u32, name: &str) -> [u32; 3] {
    let rows = problems.iter().map(|p| p.rows).max().unwrap_or(0);
    let gy = (rows as u32).div_ceil(tile_m).max(1);
    assert!(gy <= 65535, "{name}: {rows} rows per problem exceed the grid");
    [(cols as u32).div_ceil(tile_n).max(1), gy, problems.len() as u32]
}

fn check(a: &GemmArgs) {
    let (m, k) = (a.x.shape[0], a.x.shape[1]);
    let e = &a.epilogue;
    assert!(a.x.dtype == DType::F32 && a.x.shape.len() == 2, "gemm: x must be f32 [M, K]");
    assert!(a.y.dtype == DType::F32 && a.y.shape.len() == 2, "gemm: y must be f32 [M, ldy]");
    assert!((1..=MAX_PROBLEMS).contains(&a.problems.len()), "gemm: 1 to {MAX_PROBLEMS} problems");
    assert!(a.y_col0 + a.n <= a.y.shape[1] && a.n > 0 && k > 0, "gemm: columns out of range");
    for p in a.problems {
        assert!(p.end() <= m && p.end() <= a.y.shape[0], "gemm: problem rows {p:?} exceed M = {m}");
        assert!(p.rows_per_sample > 0, "gemm: rows_per_sample must be positive");
        assert!(p.weight_offset + a.n * k <= a.weight.numel(), "gemm: weight too small for {p:?}");
        if let Some(b) = e.bias {
            assert!(b.dtype == DType::F32 && p.bias_offset + a.n <= b.numel(), "gemm: bias too small");
        }
        if let Some(l) = e.lora {
            assert!(l.rank > 0 && l.t.shape == [m, l.rank], "gemm: LoRA t must be [M, R]");
            assert!(p.lora_offset + a.n * l.rank <= l.b.numel(), "gemm: LoRA B too small for {p:?}");
        }
        if let Some(g) = e.gate {
            assert!(p.gate_end(a.n) <= g.numel(), "gemm: gate rows out of range for {p:?}");
        }
    }
    if let Residual::From(r) = e.residual {
        assert!(
            r.shape == a.y.shape && !r.buffer.same(&a.y.buffer),
            "gemm: residual must match y, in another buffer (else InPlace)"
        );
    }
}

/// Whether the GEMM kernels can read problems' `[n, k]` weights at their offsets in `w`: a block
/// format needs K and each offset in whole blocks (then every 4-aligned run of k lies in one
/// block), and the kernels index elements in u32. An error, not a panic: a checkpoint decides
/// the dtype and K, and the loader reports it with the tensor's name.
pub fn check_weight(kernel: &str, w: &Tensor, n: usize, k: usize, problems: &[GemmProblem]) -> Result<()> {
    let (dt, be) = (w.dtype, w.dtype.block_elems());
    if k % be != 0 {
        return Err(Error::input(format!(
            "{kernel}: K = {k} is not a multiple of {}'s {be}-element blocks (each weight row must be whole \
             blocks; store this tensor as f16/bf16 or in a format whose block divides K)",
            dt.name()
        )));
    }
    for (i, p) in problems.iter().enumerate() {
        if p.weight_offset % be != 0 {
            return Err(Error::input(format!(
                "{kernel}: problem {i}'s weight offset {} is not on a {} block boundary ({be} elements)",
                p.weight_offset,
                dt.name()
            )));
        }
        let end = p.weight_offset + n * k;
        if end > u32::MAX as usize {
            return Err(Error::TooLarge(format!(
                "{kernel}: weight elements up to {end} exceed the kernels' u32 indexing; split the tensor"
            )));
        }
    }
    Ok(())
}

/// `y = epilogue(alpha·x·Wᵀ + b + t·Bᵀ)` per problem (see [`Epilogue`] for the order).
pub fn launch_forward(gpu: &Gpu, a: &GemmArgs) -> Result<Launch> {
    launch_variant(gpu, a, Variant::Auto)
}

/// What `Variant::Auto` runs for `rows` (the problems' largest) × `n` outputs on this device.
pub fn auto_variant(gpu: &Gpu, rows: usize, n: usize) -> Variant {
    match Tiles::of(gpu.kernel_choice()) {
        Some(t) if n >= SKINNY_N && rows >= SKINNY_M => Variant::Tile(t),
        _ if gpu.is_cpu() => Variant::Registers,
        _ => Variant::Workgroup,
    }
}

/// `Auto` and `Tile` resolved to a concrete entry point (`TileWith` checked against the
/// adapter's workgroup memory) for `rows` × `n` outputs.
pub(crate) fn resolve_variant(gpu: &Gpu, variant: Variant, rows: usize, n: usize) -> Result<Variant> {
    let variant = match variant {
        Variant::Auto => auto_variant(gpu, rows, n),
        v => v,
    };
    let max = gpu.limits().max_workgroup_storage as usize;
    Ok(match variant {
        Variant::Tile(t) => Variant::TileWith(t, TileConfig::default_for(t, max)),
        Variant::TileWith(t, c) => {
            c.check(t);
            let bytes = c.workgroup_bytes(t);
            if bytes > max {
                return Err(Error::TooLarge(format!(
                    "gemm_coop: tile {c:?} needs {bytes} B of workgroup memory; the adapter allows {max}"
                )));
            }
            variant
        }
        v => v,
    })
}

/// [`launch_forward`] with an explicit choice of entry point.
pub fn launch_variant(gpu: &Gpu, a: &GemmArgs, variant: Variant) -> Result<Launch> {
    check(a);
    check_weight("gemm", a.weight, a.n, a.x.shape[1], a.problems)?;
    crate::kernels::check_index("gemm", &[("x", a.x), ("y", a.y)])?;
    let mut tile_constants = Vec::new();
    let rows = a.problems.iter().map(|p| p.rows).max().unwrap_or(0);
    let (shader, entry, tile_m, tile_n) = match resolve_variant(gpu, variant, rows, a.n)? {
        Variant::Registers => (&GEMM, "gemm", TILE, TILE),
        Variant::Workgroup => (&GEMM, "gemm_tiled", TILE_WG, TILE_WG),
        Variant::TileWith(t, c) => {
            tile_constants = c.constants(gpu, t);
            (tile_shader(t), "gemm_coop", c.tm() as u32, c.tn() as u32)
        }
        Variant::Auto | Variant::Tile(_) => unreachable!("resolve_variant resolves these"),
    };
    let e = &a.epilogue;
    let residual = match e.residual {
        Residual::None => 0.0,
        Residual::From(_) => 1.0,
        Residual::InPlace => 2.0,
    };
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    let mut constants = vec![
        ("DTYPE", a.weight.dtype.code()),
        ("HAS_BIAS", flag(e.bias.is_some())),
        ("LORA", flag(e.lora.is_some())),
        ("GELU", flag(e.gelu)),
        ("GATE", flag(e.gate.is_some())),
        ("RESIDUAL", residual),
    ];
    constants.extend(tile_constants);
    let kernel = gpu.kernel(shader, entry, &constants)?;
    let mut prob = [ProblemParams::default(); MAX_PROBLEMS];
    for (d, p) in prob.iter_mut().zip(a.problems) {
        *d = problem_params(p);
    }
    let p = Params {
        n: u32_of(a.n, "n"),
        k: u32_of(a.x.shape[1], "k"),
        rank: e.lora.map_or(0, |l| u32_of(l.rank, "rank")),
        problems: a.problems.len() as u32,
        ldy: u32_of(a.y.shape[1], "ldy"),
        y_col0: u32_of(a.y_col0, "y_col0"),
        _pad: [0; 2],
        prob,
    };
    // Unused bindings get x (read-only, never the output).
    let or_x = |t: Option<&Tensor>| t.unwrap_or(a.x).buffer.clone();
    let res = match e.residual {
        Residual::From(r) => Some(r),
        _ => None,
    };
    Ok(Launch {
        kernel,
        params: bytemuck::bytes_of(&p).to_vec(),
        buffers: vec![
            a.x.buffer.clone(),
            a.weight.buffer.clone(),
            or_x(e.bias),
            or_x(res),
            or_x(e.gate),
            or_x(e.lora.map(|l| l.t)),
            or_x(e.lora.map(|l| l.b)),
            a.y.buffer.clone(),
        ],
        groups: grid2(a.n, a.problems, tile_n, tile_m, entry),
    })
}

/// One problem of a LoRA: rows `[row0, row0 + rows)`, A [R, K] and B [N, R] at element offsets
/// `a_offset` / `b_offset` of their (f32) buffers, scale `s = alpha/r · strength`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoraProblem {
    pub row0: usize,
    pub rows: usize,
    pub a_offset: usize,
    pub b_offset: usize,
    pub scale: f32,
}

/// The LoRA down-projection `t[:, t_col0..t_col0+R] = s·x·Aᵀ` per problem (A: [R, K] f32 at
/// `a_offset`). Stacked LoRAs: one launch per LoRA into its own column range of t.
pub fn launch_lora_down(
    gpu: &Gpu,
    x: &Tensor,
    a: &Tensor,
    rank: usize,
    problems: &[LoraProblem],
    t: &Tensor,
    t_col0: usize,
) -> Result<Launch> {
    assert_eq!(a.dtype, DType::F32, "gemm::launch_lora_down: A must be f32");
    let probs: Vec<GemmProblem> =
        problems.iter().map(|p| GemmProblem::rows(p.row0, p.rows).weight(p.a_offset).alpha(p.scale)).collect();
    let args =
        GemmArgs { x, weight: a, n: rank, problems: &probs, epilogue: Epilogue::default(), y: t, y_col0: t_col0 };
    launch_forward(gpu, &args)
}

/// Naive references in f64 (inputs already rounded to the storage dtype: `DType::round`).
pub mod cpu {
    use super::GemmProblem;
    use crate::kernels::elementwise::cpu::gelu_tanh;

    /// `v` rounded to f16 (nearest even, overflow to infinity), as f32.
    pub fn round_f16(v: f32) -> f32 {
        half::f16::from_f32(v).to_f32()
    }

    /// The power-of-two exponent `gemm_coop` scales a row by before rounding it to f16, from
    /// the row's largest |value| (`row_shift` in the shader).
    pub fn row_shift(amax: f32) -> i32 {
        let e = ((amax.to_bits() >> 23) & 0xff) as i32 - 127;
        (14 - e).clamp(-100, 100)
    }

    /// x [M, K] as the tile programs multiply it: each row scaled by 2^s, rounded to f16, scaled
    /// back (exact); the reference of `--precision mixed` is the f64 GEMM of these operands and
    /// the weights through [`round_f16`].
    pub fn mixed_rows(x: &[f32], k: usize) -> Vec<f32> {
        x.chunks(k)
            .flat_map(|row| {
                let amax = row.iter().fold(0f32, |m, v| m.max(v.abs()));
                let s = row_shift(amax);
                row.iter().map(move |&v| round_f16(v * 2f32.powi(s)) * 2f32.powi(-s))
            })
            .collect()
    }

    /// The reference twin of [`super::GemmArgs`]: f64 slices, same offsets and meanings.
    /// `residual`: `Some(res)` for both `Residual::From(res)` and `InPlace` (pass y's old values).
    #[derive(Clone, Copy, Debug)]
    pub struct Gemm<'a> {
        pub x: &'a [f64],
        pub k: usize,
        pub weight: &'a [f64],
        pub n: usize,
        pub problems: &'a [GemmProblem],
        pub bias: Option<&'a [f64]>,
        /// (t [M, R], B buffer, R)
        pub lora: Option<(&'a [f64], &'a [f64], usize)>,
        pub gelu: bool,
        pub gate: Option<&'a [f64]>,
        pub residual: Option<&'a [f64]>,
        pub ldy: usize,
        pub y_col0: usize,
    }

    /// Writes the problems' rows of `y` (other rows keep their values).
    pub fn gemm(g: &Gemm, y: &mut [f64]) {
        let k = g.k;
        for p in g.problems {
            for m in p.row0..p.row0 + p.rows {
                let (b, j) = ((m - p.row0) / p.rows_per_sample, (m - p.row0) % p.rows_per_sample);
                for n in 0..g.n {
                    let w = &g.weight[p.weight_offset + n * k..][..k];
                    let dot: f64 = g.x[m * k..][..k].iter().zip(w).map(|(a, b)| a * b).sum();
                    let mut a = p.alpha as f64 * dot;
                    if let Some(bias) = g.bias {
                        a += bias[p.bias_offset + n];
                    }
                    if let Some((t, bm, r)) = g.lora {
                        a += (0..r).map(|i| t[m * r + i] * bm[p.lora_offset + n * r + i]).sum::<f64>();
                    }
                    if g.gelu {
                        a = gelu_tanh(a);
                    }
                    if let Some(gate) = g.gate {
                        a *= gate[p.gate.offset + p.gate.sample_row(b, j) * p.gate.sample_stride + n];
                    }
                    let yi = m * g.ldy + g.y_col0 + n;
                    if let Some(res) = g.residual {
                        a += res[yi];
                    }
                    y[yi] = a;
                }
            }
        }
    }
}

pub mod backward;

#[cfg(test)]
mod tests;
