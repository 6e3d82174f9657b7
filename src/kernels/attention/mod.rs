//! Joint flash attention, forward and backward (`shaders/attention/attention.wgsl`,
//! `shaders/attention/attention_backward.wgsl`); reference: diffusers `QwenDoubleStreamAttnProcessor2_0`
//! (spec qwen-image-dit.md §3.6): `O = softmax(Q·Kᵀ/sqrt(Dh) + maskbias)·V`, non-causal.
//!
//! q, k, v are head-major `[B, H, S, Dh]` f32 (S = s_txt + s_img, text first); the mask `[B, s_txt]`
//! marks valid text keys (nonzero; image keys are always valid, so `s_img >= 1` gives every query a
//! key); O is written in stream-major joint rows `[B·S, H·Dh]`, and lse `[B, H, S]` (natural log of
//! the masked softmax denominator) is saved for the backward, which writes dq, dk, dv with `=` in
//! two dispatches (`delta` = rowsum(dO ⊙ O) is scratch). head_dim: a multiple of 4, at most 128.
//!
//! Forward-only options ([`AttnOptions`] and the `segments` operand), for the Qwen2.5-VL text
//! encoder (spec vae-and-text-encoder.md §2.6-2.8): grouped-query attention (k, v `[B, Hkv, S, Dh]`,
//! query head h reads K/V head `h / (H / Hkv)`), causal (key j visible to query i iff j ≤ i), and
//! block-diagonal segments (flash-attn's `cu_seqlens` as f32 boundaries `[0, .., S]`, shared by
//! the batch: query i sees key j only inside its own segment); all combine with the text mask.
//! `s_img = 0` is allowed (the language model is one text stream, s_txt = L); a row that sees no key
//! (left padding + causal) writes O = 0 and lse = [`EMPTY_ROW_LSE`] (finite). The backward
//! implements full attention only: `graph::autodiff` refuses the options, and the backward launcher
//! keeps `s_img >= 1`. With [`AttnOptions::full`] and no segments the forward performs the same f32
//! operations in the same order as before the options existed (bit-identical DiT results).
//!
//! Memory is O(S·Dh): no S×S buffer. Dispatch geometry and tiling are described in the shaders.
//!
//! Two implementations, chosen by [`Variant`] (`Auto`: by `gpu.kernel_choice()` through
//! [`Tiles::of`]): the portable f32 kernels above (one row per invocation; the `portable` family,
//! bit-identical to before the tile programs existed), and the tile programs
//! `shaders/attention/flash.wgsl` / `flash_backward.wgsl` (FlashAttention-2 on the fragment API:
//! f16 operands, V and dO shifted by a power of two per (b, head) into f16's range, f32 softmax
//! and accumulation; the forward with causal and GQA, not segments) for
//! the `coop`, `f16` and `coop-emulated` families, laid out by [`FlashConfig`] to fit the adapter's
//! workgroup memory. `Auto` keeps the portable kernels for segments, a head_dim that is not a
//! multiple of the fragment edge, or when no layout fits; `Tile` then returns `Error::TooLarge`.
//! Their numerics, layouts and timings: docs/kernels.md; their references:
//! [`cpu::tile_forward`], [`cpu::tile_backward`] (the same roundings, in f64).
//!
//! Performance notes (measured on lavapipe, 2-core VM shared with other jobs, so noisy):
//! about 0.1-0.2 GFLOP/s forward and backward at Dh 16-128. The inner loop reads one staged K/V vec4
//! per 4 FMAs, and llvmpipe turns every (same-address) workgroup read into an 8-lane gather; reading
//! K/V straight from the storage buffers (no staging, no barriers) was about 2× faster there at
//! Dh 16 and 1.7× at Dh 128, and removing exp() changed nothing. Staging is kept because it is the
//! right design for real GPUs (one broadcast shared-memory read per key for 64 rows). Open items for
//! real GPUs: at Dh 128 each invocation holds q and the accumulator (256 floats; 3-4×Dh in the
//! backward), which exceeds NVIDIA's 255 registers and spills; the tile programs split Dh across
//! lanes (at most 64 O floats per lane). Not measured on a real GPU yet.

use crate::gpu::{Buffer, Gpu, Launch};
use crate::kernels::Tiles;
use crate::layout::{AttnOptions, JointShape};
use crate::shaders::{ATTENTION, ATTENTION_BACKWARD};
use crate::tensor::{DType, Tensor};
use crate::{Error, Result};
pub use flash::{FlashConfig, Pass};
use std::sync::Arc;

mod cpu_tile;
mod flash;

/// Query rows (forward, dQ) or key rows (dK/dV) per workgroup; `WG` in the shaders.
const ROWS_PER_GROUP: usize = 64;
/// vec4 per staged K/V (or Q/dO) tile; `TILE` in the shaders.
const TILE_VEC4: usize = 512;
/// Largest staged tile in rows; `MAX_BK` in the shaders.
const MAX_TILE_ROWS: usize = 32;
/// The lse of a query row without any visible key (`NEG_BIG` in attention.wgsl): a finite stand-in
/// for −∞ (WGSL implementations may assume no infinities).
pub const EMPTY_ROW_LSE: f32 = -3.0e38;
/// Segment boundaries are f32 integers, exact below 2^24.
const MAX_SEGMENTED_SEQ: usize = 1 << 24;

/// Kernel geometry of a joint attention call.
trait Geometry {
    fn check(&self, who: &str);
    fn tile_rows(&self) -> usize;
    fn constants(&self) -> [(&'static str, f64); 2];
    fn groups(&self) -> [u32; 3];
    fn backward_params(&self, mask: Option<&Tensor>) -> BackwardParams;
}

impl Geometry for JointShape {
    /// The forward's contract: any S ≥ 1 (s_img may be 0).
    fn check(&self, who: &str) {
        assert!(
            self.head_dim % 4 == 0 && (4..=128).contains(&self.head_dim),
            "{who}: head_dim {} must be a multiple of 4 in 4..=128",
            self.head_dim
        );
        assert!(self.batch >= 1 && self.heads >= 1 && self.seq() >= 1, "{who}: empty shape {self:?}");
        assert!(self.batch * self.heads <= 65535, "{who}: batch·heads {} over 65535", self.batch * self.heads);
        assert!(self.seq().div_ceil(ROWS_PER_GROUP) <= 65535, "{who}: S = {} over 64·65535", self.seq());
    }
    /// Rows per staged tile: as many as fit TILE_VEC4, at most MAX_TILE_ROWS.
    fn tile_rows(&self) -> usize {
        (TILE_VEC4 / (self.head_dim / 4)).min(MAX_TILE_ROWS)
    }
    fn constants(&self) -> [(&'static str, f64); 2] {
        [("DH4", (self.head_dim / 4) as f64), ("BK", self.tile_rows() as f64)]
    }
    fn groups(&self) -> [u32; 3] {
        [self.seq().div_ceil(ROWS_PER_GROUP) as u32, (self.batch * self.heads) as u32, 1]
    }
    fn backward_params(&self, mask: Option<&Tensor>) -> BackwardParams {
        BackwardParams {
            batch: self.batch as u32,
            heads: self.heads as u32,
            s_txt: self.s_txt as u32,
            s_img: self.s_img as u32,
            has_mask: mask.is_some() as u32,
            scale: 1.0 / (self.head_dim as f32).sqrt(),
            _pad: [0; 2],
        }
    }
}

/// Mirrors `Params` of attention.wgsl (the forward).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    pub batch: u32,
    pub heads: u32,
    pub s_txt: u32,
    pub s_img: u32,
    pub has_mask: u32,
    pub scale: f32,
    pub kv_heads: u32,
    pub causal: u32,
    /// Segment count (0: no segments, the boundary binding is unused).
    pub segments: u32,
    pub _pad: [u32; 3],
}
crate::assert_params!(Params);

/// Mirrors `Params` of attention_backward.wgsl (full attention only).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BackwardParams {
    pub batch: u32,
    pub heads: u32,
    pub s_txt: u32,
    pub s_img: u32,
    pub has_mask: u32,
    pub scale: f32,
    pub _pad: [u32; 2],
}
crate::assert_params!(BackwardParams);

fn forward_params(shape: &JointShape, a: &Args) -> Params {
    let b = shape.backward_params(a.mask);
    Params {
        batch: b.batch,
        heads: b.heads,
        s_txt: b.s_txt,
        s_img: b.s_img,
        has_mask: b.has_mask,
        scale: b.scale,
        kv_heads: a.opts.kv_heads as u32,
        causal: a.opts.causal as u32,
        segments: a.segments.map_or(0, |t| t.numel() - 1) as u32,
        _pad: [0; 3],
    }
}

/// The forward's option contract: GQA grouping, segment boundaries.
fn check_options(who: &str, shape: &JointShape, a: &Args) {
    let kv = a.opts.kv_heads;
    assert!(kv >= 1 && shape.heads % kv == 0, "{who}: kv_heads {kv} must divide heads {}", shape.heads);
    for (n, t) in [("k", a.k), ("v", a.v)] {
        check_f32(who, n, t, a.opts.kv_len(shape));
    }
    if let Some(sg) = a.segments {
        assert!(
            sg.dtype == DType::F32 && sg.numel() >= 2,
            "{who}: segments must be f32 boundaries [0, .., S] (at least 2), got {:?} {:?}",
            sg.dtype,
            sg.shape
        );
        assert!(shape.seq() < MAX_SEGMENTED_SEQ, "{who}: S = {} too long for f32 segment boundaries", shape.seq());
    }
}

fn check_f32(who: &str, name: &str, t: &Tensor, len: usize) {
    assert!(
        t.dtype == DType::F32 && t.numel() == len,
        "{who}: {name} must be f32 with {len} elements, got {:?} {:?}",
        t.dtype,
        t.shape
    );
}

/// The mask buffer, or `fallback` (a read-only input, never read: has_mask = 0) when there is none.
fn mask_buffer(who: &str, shape: &JointShape, mask: Option<&Tensor>, fallback: &Tensor) -> Buffer {
    match mask {
        Some(m) => {
            check_f32(who, "mask", m, shape.batch * shape.s_txt);
            m.buffer.clone()
        }
        None => fallback.buffer.clone(),
    }
}

/// Operands of the forward: head-major q [B, H, S_joint, Dh], k and v [B, Hkv, S_joint, Dh], the
/// text mask [B, S_txt] (1 = valid), the segment boundaries, `o` in stream-major joint rows
/// [B·S, H·Dh] and `lse` [B, H, S_joint].
pub struct Args<'a> {
    pub q: &'a Tensor,
    pub k: &'a Tensor,
    pub v: &'a Tensor,
    pub mask: Option<&'a Tensor>,
    /// Block-diagonal segments: f32 boundaries `[0, b1, .., S]` (cu_seqlens; n + 1 values for n
    /// segments, non-decreasing), shared by every sample. The kernel cannot check the values.
    pub segments: Option<&'a Tensor>,
    pub opts: AttnOptions,
    pub o: &'a Tensor,
    pub lse: &'a Tensor,
}

/// Which kernels run an attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// The device's kernel family (`gpu.kernel_choice()` through [`Tiles::of`]): the tile
    /// programs at their default [`FlashConfig`] for `coop`, `f16` and `coop-emulated`, the
    /// portable kernels for `portable`, and also where the tile programs do not apply (segments,
    /// a head_dim that is not a multiple of the fragment edge, no layout fitting the adapter's
    /// workgroup memory or subgroup width).
    Auto,
    /// `attention.wgsl` / `attention_backward.wgsl`: f32, one row per invocation.
    Portable,
    /// The tile programs on a fragment backend at its default configuration for the adapter
    /// (`Error::TooLarge` when none fits).
    Tile(Tiles),
    /// The tile programs with an explicit configuration (tests, benches).
    TileWith(Tiles, FlashConfig),
}

/// `Auto` and `Tile` resolved to `Portable` or `TileWith` for this call.
fn resolve(gpu: &Gpu, shape: &JointShape, pass: Pass, segments: bool, variant: Variant) -> Result<Variant> {
    let usable = |t: Tiles| !segments && shape.head_dim % t.frag() == 0;
    Ok(match variant {
        Variant::Auto => match Tiles::of(gpu.kernel_choice()).filter(|&t| usable(t)) {
            Some(t) => {
                flash::default_config(gpu, t, pass, shape).map_or(Variant::Portable, |c| Variant::TileWith(t, c))
            }
            None => Variant::Portable,
        },
        Variant::Tile(t) => {
            assert!(usable(t), "attention: the {t:?} tile program needs no segments and head_dim % {} == 0", t.frag());
            match flash::default_config(gpu, t, pass, shape) {
                Some(c) => Variant::TileWith(t, c),
                None => {
                    return Err(Error::TooLarge(format!(
                        "attention {pass:?}: no {t:?} tile layout for head_dim {} fits {} B of workgroup memory \
                         and {} lanes (use the portable kernels)",
                        shape.head_dim,
                        gpu.limits().max_workgroup_storage,
                        t.lanes(gpu)
                    )))
                }
            }
        }
        v => v,
    })
}

/// Forward: writes `o` (stream-major joint rows) and `lse`. See the module doc.
pub fn launch_forward(gpu: &Gpu, shape: &JointShape, a: &Args) -> Result<Launch> {
    launch_forward_variant(gpu, shape, a, Variant::Auto)
}

/// [`launch_forward`] on an explicit variant.
pub fn launch_forward_variant(gpu: &Gpu, shape: &JointShape, a: &Args, variant: Variant) -> Result<Launch> {
    const WHO: &str = "attention::launch_forward";
    shape.check(WHO);
    check_options(WHO, shape, a);
    for (n, t) in [("q", a.q), ("o", a.o)] {
        check_f32(WHO, n, t, shape.head_major_len());
        crate::kernels::check_index(WHO, &[(n, t)])?;
    }
    check_f32(WHO, "lse", a.lse, shape.lse_len());
    crate::kernels::check_index(WHO, &[("q", a.q), ("k", a.k), ("v", a.v), ("o", a.o)])?;
    let p = forward_params(shape, a);
    let (kernel, groups) = match resolve(gpu, shape, Pass::Forward, a.segments.is_some(), variant)? {
        Variant::TileWith(t, c) => {
            assert!(a.segments.is_none(), "{WHO}: the tile program has no segments");
            c.check(gpu, t, Pass::Forward, shape)?;
            (gpu.kernel(flash::shaders(t).0, "flash", &c.constants(gpu, t, shape))?, c.groups(shape))
        }
        _ => (gpu.kernel(&ATTENTION, "attention", &shape.constants())?, shape.groups()),
    };
    Ok(Launch {
        kernel,
        params: bytemuck::bytes_of(&p).to_vec(),
        buffers: vec![
            a.q.buffer.clone(),
            a.k.buffer.clone(),
            a.v.buffer.clone(),
            mask_buffer(WHO, shape, a.mask, a.q),
            a.segments.unwrap_or(a.q).buffer.clone(),
            a.o.buffer.clone(),
            a.lse.buffer.clone(),
        ],
        groups,
    })
}

/// Inputs, scratch and outputs of the backward; same order and layouts as the forward.
pub struct BackwardArgs<'a> {
    pub q: &'a Tensor,
    pub k: &'a Tensor,
    pub v: &'a Tensor,
    pub mask: Option<&'a Tensor>,
    /// Forward output, stream-major joint rows.
    pub o: &'a Tensor,
    /// Forward log-sum-exp [B, H, S].
    pub lse: &'a Tensor,
    /// Gradient of O, stream-major joint rows like `o`.
    pub d_o: &'a Tensor,
    /// Scratch [B, H, S]: D = rowsum(dO ⊙ O), written by the first dispatch, read by the second.
    pub delta: &'a Tensor,
    pub dq: &'a Tensor,
    pub dk: &'a Tensor,
    pub dv: &'a Tensor,
}

/// Backward (FlashAttention-2 from the saved lse), two dispatches in order:
/// forward `O = P V, P = softmax(Q Kᵀ·scale + maskbias)`  =>  `dS = P ⊙ (dO Vᵀ − rowsum(dO ⊙ O))`,
/// `dQ = dS K·scale` (+ delta) then `dK = dSᵀ Q·scale, dV = Pᵀ dO`. Activation gradients: `=`.
pub fn launch_backward(gpu: &Gpu, shape: &JointShape, a: &BackwardArgs) -> Result<Vec<Launch>> {
    launch_backward_variant(gpu, shape, a, Variant::Auto)
}

/// [`launch_backward`] on an explicit variant.
pub fn launch_backward_variant(
    gpu: &Gpu,
    shape: &JointShape,
    a: &BackwardArgs,
    variant: Variant,
) -> Result<Vec<Launch>> {
    const WHO: &str = "attention::launch_backward";
    shape.check(WHO);
    // Every row needs a visible key (the lse of an empty row is a sentinel, not a log-sum).
    assert!(shape.s_img >= 1, "{WHO}: the backward needs s_img >= 1 (every query sees an image key), got {shape:?}");
    for (n, t) in
        [("q", a.q), ("k", a.k), ("v", a.v), ("o", a.o), ("d_o", a.d_o), ("dq", a.dq), ("dk", a.dk), ("dv", a.dv)]
    {
        check_f32(WHO, n, t, shape.head_major_len());
        crate::kernels::check_index(WHO, &[(n, t)])?;
    }
    check_f32(WHO, "lse", a.lse, shape.lse_len());
    check_f32(WHO, "delta", a.delta, shape.lse_len());
    let p = bytemuck::bytes_of(&shape.backward_params(a.mask)).to_vec();
    let buffers = vec![
        a.q.buffer.clone(),
        a.k.buffer.clone(),
        a.v.buffer.clone(),
        mask_buffer(WHO, shape, a.mask, a.q),
        a.o.buffer.clone(),
        a.d_o.buffer.clone(),
        a.lse.buffer.clone(),
        a.delta.buffer.clone(),
        a.dq.buffer.clone(),
        a.dk.buffer.clone(),
        a.dv.buffer.clone(),
    ];
    let (shader, entries, constants, groups) = match resolve(gpu, shape, Pass::Backward, false, variant)? {
        Variant::TileWith(t, c) => {
            c.check(gpu, t, Pass::Backward, shape)?;
            (
                flash::shaders(t).1,
                ["flash_backward_dq", "flash_backward_dkdv"],
                c.constants(gpu, t, shape),
                c.groups(shape),
            )
        }
        _ => (
            &ATTENTION_BACKWARD,
            ["attention_backward_dq", "attention_backward_dkdv"],
            shape.constants().to_vec(),
            shape.groups(),
        ),
    };
    let launch = |entry: &'static str| -> Result<Launch> {
        Ok(Launch {
            kernel: gpu.kernel(shader, entry, &constants)?,
            params: p.clone(),
            buffers: buffers.clone(),
            groups,
        })
    };
    Ok(vec![launch(entries[0])?, launch(entries[1])?])
}

/// Convenience: runs the full (DiT) forward and returns `(o, lse)`.
pub fn run_forward(
    gpu: &Arc<Gpu>,
    shape: &JointShape,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
) -> Result<(Tensor, Tensor)> {
    let rows = shape.batch * shape.seq();
    let o = Tensor::zeros(gpu, &[rows, shape.heads * shape.head_dim], DType::F32, "attention.o")?;
    let lse = Tensor::zeros(gpu, &[shape.batch, shape.heads, shape.seq()], DType::F32, "attention.lse")?;
    let args = Args { q, k, v, mask, segments: None, opts: AttnOptions::full(shape.heads), o: &o, lse: &lse };
    gpu.run(&[launch_forward(gpu, shape, &args)?])?;
    Ok((o, lse))
}

/// Convenience: runs the backward and returns `(dq, dk, dv)`.
#[allow(clippy::too_many_arguments)]
pub fn run_backward(
    gpu: &Arc<Gpu>,
    shape: &JointShape,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    o: &Tensor,
    lse: &Tensor,
    d_o: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    let hm = [shape.batch, shape.heads, shape.seq(), shape.head_dim];
    let dq = Tensor::zeros(gpu, &hm, DType::F32, "attention.dq")?;
    let dk = Tensor::zeros(gpu, &hm, DType::F32, "attention.dk")?;
    let dv = Tensor::zeros(gpu, &hm, DType::F32, "attention.dv")?;
    let delta = Tensor::zeros(gpu, &hm[..3], DType::F32, "attention.delta")?;
    let args = BackwardArgs { q, k, v, mask, o, lse, d_o, delta: &delta, dq: &dq, dk: &dk, dv: &dv };
    gpu.run(&launch_backward(gpu, shape, &args)?)?;
    Ok((dq, dk, dv))
}

/// f64 reference with materialised scores (fine on the CPU at test sizes).
pub mod cpu {
    pub use super::cpu_tile::{scaled_q, tile_backward, tile_forward, TileBackward};
    use crate::layout::{AttnOptions, JointShape};

    /// Which keys each query sees: the text mask, the options and the segment boundaries.
    pub struct Visibility<'a> {
        pub mask: Option<&'a [f32]>,
        pub opts: AttnOptions,
        /// Boundaries `[0, .., S]` of the block-diagonal segments.
        pub segments: Option<&'a [f32]>,
    }

    impl<'a> Visibility<'a> {
        /// Full attention with an optional text mask (the DiT's).
        pub fn full(sh: &JointShape, mask: Option<&'a [f32]>) -> Visibility<'a> {
            Visibility { mask, opts: AttnOptions::full(sh.heads), segments: None }
        }
        /// The segment index of position i (the rule in its plainest form: a linear scan).
        fn segment(&self, i: usize) -> usize {
            let b = self.segments.map_or(&[][..], |b| b);
            (1..b.len()).filter(|&t| b[t] as usize <= i).count()
        }
        /// Whether query i of sample b sees key j.
        pub fn sees(&self, sh: &JointShape, b: usize, i: usize, j: usize) -> bool {
            let text_ok = j >= sh.s_txt || self.mask.is_none_or(|m| m[b * sh.s_txt + j] != 0.0);
            text_ok && (!self.opts.causal || j <= i) && self.segment(i) == self.segment(j)
        }
    }

    /// Softmax probabilities P [S, S] of head (b, h) and the lse per query, in f64; a row without a
    /// visible key gets P = 0 and lse = EMPTY_ROW_LSE (as the kernel writes).
    pub fn probs(sh: &JointShape, vis: &Visibility, q: &[f64], k: &[f64], b: usize, h: usize) -> (Vec<f64>, Vec<f64>) {
        let (s, dh) = (sh.seq(), sh.head_dim);
        if let Some(bounds) = vis.segments {
            assert!(bounds[0] == 0.0 && bounds[bounds.len() - 1] as usize == s, "segments must span [0, S]");
            assert!(bounds.windows(2).all(|w| w[0] <= w[1]), "segment boundaries must not decrease");
        }
        let base = (b * sh.heads + h) * s * dh;
        let kv_base = (b * vis.opts.kv_heads + h / vis.opts.group(sh)) * s * dh;
        let scale = 1.0 / (dh as f64).sqrt();
        let mut p = vec![0.0; s * s];
        let mut lse = vec![super::EMPTY_ROW_LSE as f64; s];
        for i in 0..s {
            let row = &mut p[i * s..(i + 1) * s];
            let mut mx = f64::NEG_INFINITY;
            for (j, r) in row.iter_mut().enumerate() {
                let dot: f64 = (0..dh).map(|d| q[base + i * dh + d] * k[kv_base + j * dh + d]).sum();
                *r = if vis.sees(sh, b, i, j) { dot * scale } else { f64::NEG_INFINITY };
                mx = mx.max(*r);
            }
            if mx == f64::NEG_INFINITY {
                row.fill(0.0);
                continue;
            }
            let sum: f64 = row.iter().map(|x| (x - mx).exp()).sum();
            row.iter_mut().for_each(|x| *x = (*x - mx).exp() / sum);
            lse[i] = mx + sum.ln();
        }
        (p, lse)
    }

    /// Forward in f64: (O in stream-major joint rows [B·S, H·Dh], lse [B, H, S]); v is
    /// `[B, kv_heads, S, Dh]` like k.
    pub fn forward(sh: &JointShape, vis: &Visibility, q: &[f64], k: &[f64], v: &[f64]) -> (Vec<f64>, Vec<f64>) {
        let (s, dh, hd) = (sh.seq(), sh.head_dim, sh.heads * sh.head_dim);
        let mut o = vec![0.0; sh.head_major_len()];
        let mut lse = vec![0.0; sh.lse_len()];
        for b in 0..sh.batch {
            for h in 0..sh.heads {
                let kv_base = (b * vis.opts.kv_heads + h / vis.opts.group(sh)) * s * dh;
                let (p, l) = probs(sh, vis, q, k, b, h);
                lse[(b * sh.heads + h) * s..][..s].copy_from_slice(&l);
                for i in 0..s {
                    let orow = sh.joint_row(b, i) * hd + h * dh;
                    for j in 0..s {
                        for d in 0..dh {
                            o[orow + d] += p[i * s + j] * v[kv_base + j * dh + d];
                        }
                    }
                }
            }
        }
        (o, lse)
    }

    /// Backward in f64 (recomputes P): (dq, dk, dv) head-major, from `d_o` in stream-major rows.
    pub fn backward(
        sh: &JointShape,
        q: &[f64],
        k: &[f64],
        v: &[f64],
        mask: Option<&[f32]>,
        d_o: &[f64],
    ) -> [Vec<f64>; 3] {
        let (s, dh, hd) = (sh.seq(), sh.head_dim, sh.heads * sh.head_dim);
        let scale = 1.0 / (dh as f64).sqrt();
        let (mut dq, mut dk, mut dv) = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
        for b in 0..sh.batch {
            for h in 0..sh.heads {
                let base = (b * sh.heads + h) * s * dh;
                let (p, _) = probs(sh, &Visibility::full(sh, mask), q, k, b, h);
                let gout = |i: usize, d: usize| d_o[sh.joint_row(b, i) * hd + h * dh + d];
                for i in 0..s {
                    let dp: Vec<f64> =
                        (0..s).map(|j| (0..dh).map(|d| gout(i, d) * v[base + j * dh + d]).sum()).collect();
                    let dsum: f64 = (0..s).map(|j| p[i * s + j] * dp[j]).sum(); // = rowsum(dO ⊙ O)
                    for j in 0..s {
                        let pij = p[i * s + j];
                        let ds = pij * (dp[j] - dsum) * scale;
                        for d in 0..dh {
                            dq[base + i * dh + d] += ds * k[base + j * dh + d];
                            dk[base + j * dh + d] += ds * q[base + i * dh + d];
                            dv[base + j * dh + d] += pij * gout(i, d);
                        }
                    }
                }
            }
        }
        [dq, dk, dv]
    }
}

#[cfg(test)]
mod tests;
