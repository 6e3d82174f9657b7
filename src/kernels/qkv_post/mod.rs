//! The fused QKV epilogue (`shaders/qkv_post/qkv_post.wgsl`): split, per-head QK-RMSNorm, interleaved RoPE
//! and head-major write, in one dispatch for both streams; and its backward
//! (`shaders/qkv_post/qkv_post_backward.wgsl`, `shaders/qkv_post/qkv_post_norm_grad.wgsl`).
//! Reference: diffusers `transformer_qwenimage.py`, `QwenDoubleStreamAttnProcessor2_0`.
//!
//! The input layout is a uniform (row stride + q/k/v column offsets), not an override constant:
//! one pipeline per head_dim serves both layouts, and a merged buffer is simply bound three times
//! (read-only in the forward, read-write in the backward; wgpu allows both). One RoPE table serves
//! every sample (diffusers builds it from `img_shapes[0]`). The norm-weight gradient allocates its
//! partial-sum scratch when the launches are built; the returned launches hold it.
//!
//! Forward-only options ([`Options`]), for the Qwen2.5-VL language model and vision tower
//! (transformers `apply_rotary_pos_emb` / `apply_rotary_pos_emb_vision`): no QK-norm, rotate-half
//! RoPE (pairs `(i, i + Dh/2)`, the table's entry i holding the (cos, sin) shared by both dims), and
//! grouped-query heads (merged input rows `[q (H·Dh) | k (Hkv·Dh) | v (Hkv·Dh)]`, outputs q
//! `[B, H, S, Dh]`, k and v `[B, Hkv, S, Dh]`). The table may also be per sample
//! (`[B, S, Dh/2, 2]`, e.g. positions shifted by left padding). The backward implements the DiT's
//! options only ([`Options::dit`], shared table).
//!
//! Constraints: head_dim % 4 == 0 and head_dim <= 1024 (rotate-half: head_dim % 8 == 0). All buffers f32.

use crate::gpu::{Gpu, Launch};
pub use crate::layout::RopeStyle;
use crate::layout::{JointShape, QkvLayout};
use crate::shaders::{QKV_POST, QKV_POST_BACKWARD, QKV_POST_NORM_GRAD};
use crate::tensor::{DType, Tensor};
use crate::Result;
use std::sync::Arc;

/// RMSNorm epsilon of `norm_q`, `norm_k`, `norm_added_q`, `norm_added_k`.
pub const EPS: f32 = 1e-6;
/// Invocations per workgroup in all three shaders.
const WG: usize = 256;

/// Kernel geometry of the QK-norm + RoPE kernels.
trait Geometry {
    fn check(&self);
    fn per_lane(&self) -> usize;
    fn lanes(&self) -> usize;
    fn units_per_group(&self) -> usize;
}

impl Geometry for JointShape {
    fn check(&self) {
        let dh = self.head_dim;
        assert!(dh % 4 == 0 && dh <= 1024 && dh > 0, "qkv_post: head_dim {dh} must be a multiple of 4 in 4..=1024");
        assert!(self.batch > 0 && self.heads > 0, "qkv_post: empty shape {self:?}");
    }
    /// vec4s per lane of the forward/backward shaders: 4 (16 floats) when the head allows it.
    fn per_lane(&self) -> usize {
        [4, 2, 1].into_iter().find(|k| (self.head_dim / 4) % k == 0).unwrap_or(1)
    }
    fn lanes(&self) -> usize {
        self.head_dim / (4 * self.per_lane())
    }
    fn units_per_group(&self) -> usize {
        WG / self.lanes()
    }
}

/// What the forward epilogue does besides the head split.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// Per-head QK-RMSNorm with the four stream weights (and rstd saved).
    pub norm: bool,
    pub rope: RopeStyle,
    /// Heads of k and v (divides `shape.heads`; below it only with the merged layout and no norm).
    pub kv_heads: usize,
}

impl Options {
    /// The DiT's: QK-RMSNorm, interleaved RoPE, as many K/V heads as query heads.
    pub fn dit(shape: &JointShape) -> Options {
        Options { norm: true, rope: RopeStyle::Interleaved, kv_heads: shape.heads }
    }
    /// Qwen2.5-VL's: no norm, rotate-half RoPE, `kv_heads` K/V heads.
    pub fn rotate_half(kv_heads: usize) -> Options {
        Options { norm: false, rope: RopeStyle::Half, kv_heads }
    }
    /// Elements of k or v `[B, kv_heads, S, Dh]`.
    pub fn kv_len(&self, shape: &JointShape) -> usize {
        shape.batch * self.kv_heads * shape.seq() * shape.head_dim
    }
}

impl QkvLayout {
    /// (row stride, q, k, v column offsets) in elements, for `kv` K/V heads.
    fn strides(self, shape: &JointShape, kv: usize) -> (usize, [usize; 3]) {
        let (dq, dkv) = (shape.hidden(), kv * shape.head_dim);
        match self {
            QkvLayout::Merged => (dq + 2 * dkv, [0, dq, dq + dkv]),
            QkvLayout::Standard => (dq, [0, 0, 0]),
        }
    }
    /// The three buffers bound as q, k, v (the merged buffer three times), for `kv` K/V heads.
    fn bind3<'a>(self, shape: &JointShape, kv: usize, t: &[&'a Tensor], what: &str) -> [&'a Tensor; 3] {
        let (rows, d) = (shape.rows(), shape.hidden());
        let ok = |x: &Tensor, cols| x.dtype == DType::F32 && x.numel() == rows * cols;
        match (self, t) {
            (QkvLayout::Merged, [x]) => {
                let cols = self.strides(shape, kv).0;
                assert!(ok(x, cols), "qkv_post: {what} must be f32 [{rows}, {cols}], got {:?}", x.shape);
                [x, x, x]
            }
            (QkvLayout::Standard, [a, b, c]) => {
                assert_eq!(kv, shape.heads, "qkv_post: grouped K/V heads need the merged layout");
                for x in [a, b, c] {
                    assert!(ok(x, d), "qkv_post: {what} must be f32 [{rows}, {d}], got {:?}", x.shape);
                }
                [a, b, c]
            }
            _ => panic!(
                "qkv_post: layout {self:?} needs {} {what} tensors, got {}",
                if self == QkvLayout::Merged { 1 } else { 3 },
                t.len()
            ),
        }
    }
}

/// Mirrors `Params` of qkv_post.wgsl and qkv_post_backward.wgsl (the backward ignores `eps`,
/// `kv_heads` and `rope_b4`: it supports the DiT's options only).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    pub batch: u32,
    pub heads: u32,
    pub s_txt: u32,
    pub s_img: u32,
    pub in_stride4: u32,
    pub q_off4: u32,
    pub k_off4: u32,
    pub v_off4: u32,
    pub units: u32,
    pub eps: f32,
    pub kv_heads: u32,
    /// vec4 offset between consecutive samples' RoPE tables (0: one table for the batch).
    pub rope_b4: u32,
}
crate::assert_params!(Params);

/// Mirrors `Params` of qkv_post_norm_grad.wgsl.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct NormGradParams {
    pub batch: u32,
    pub heads: u32,
    pub s_txt: u32,
    pub s_img: u32,
    pub in_stride4: u32,
    pub q_off4: u32,
    pub k_off4: u32,
    pub units: u32,
    pub chunk_units: u32,
    pub chunks: u32,
    pub _pad: [u32; 2],
}
crate::assert_params!(NormGradParams);

fn params(shape: &JointShape, layout: QkvLayout, kv_heads: usize, rope_b4: usize) -> Params {
    let (stride, off) = layout.strides(shape, kv_heads);
    Params {
        batch: shape.batch as u32,
        heads: shape.heads as u32,
        s_txt: shape.s_txt as u32,
        s_img: shape.s_img as u32,
        in_stride4: (stride / 4) as u32,
        q_off4: (off[0] / 4) as u32,
        k_off4: (off[1] / 4) as u32,
        v_off4: (off[2] / 4) as u32,
        units: shape.units() as u32,
        eps: EPS,
        kv_heads: kv_heads as u32,
        rope_b4: rope_b4 as u32,
    }
}

fn check_f32(t: &Tensor, n: usize, what: &str) {
    assert!(
        t.dtype == DType::F32 && t.numel() == n,
        "qkv_post: {what} must be f32 with {n} elements, got {:?} {:?}",
        t.dtype,
        t.shape
    );
}

/// Checks the backward's side tensors (the DiT's options: norm weights, saved rstd, shared table).
fn check_common(shape: &JointShape, norm_weights: &Tensor, rope_table: &Tensor, saved: &Tensor) {
    shape.check();
    check_f32(norm_weights, 4 * shape.head_dim, "norm_weights [4, Dh]");
    check_f32(rope_table, shape.seq() * shape.head_dim, "rope_table [S_joint, Dh/2, 2]");
    check_f32(saved, 2 * shape.units(), "saved rstd [2, rows, H]");
}

fn head_dim_const(shape: &JointShape) -> [(&'static str, f64); 1] {
    [("HEAD_DIM", shape.head_dim as f64)]
}

fn lane_consts(shape: &JointShape) -> [(&'static str, f64); 2] {
    [("HEAD_DIM", shape.head_dim as f64), ("PER_LANE", shape.per_lane() as f64)]
}

/// Operands of the forward epilogue.
pub struct Args<'a> {
    pub shape: JointShape,
    pub layout: QkvLayout,
    pub opts: Options,
    /// The projections: [qkv] (merged) or [q, k, v] (standard), joint rows.
    pub x: &'a [&'a Tensor],
    /// The four QK-norm weights [4, Dh]: norm_q, norm_k, norm_added_q, norm_added_k (with `opts.norm`).
    pub norm_weights: Option<&'a Tensor>,
    /// [S_joint, Dh/2, 2] (cos, sin), shared by the batch, or [B, S_joint, Dh/2, 2] per sample.
    pub rope: &'a Tensor,
    /// Head-major outputs q [B, H, S_joint, Dh], k and v [B, kv_heads, S_joint, Dh].
    pub q: &'a Tensor,
    pub k: &'a Tensor,
    pub v: &'a Tensor,
    /// rstd of q then k, [2, rows, H] (with `opts.norm`).
    pub saved: Option<&'a Tensor>,
}

/// Checks the forward's options and side tensors; returns the per-sample table offset in vec4.
fn check_forward(a: &Args) -> usize {
    let (shape, o) = (&a.shape, &a.opts);
    shape.check();
    assert!(
        o.kv_heads >= 1 && shape.heads % o.kv_heads == 0,
        "qkv_post: kv_heads {} must divide heads {}",
        o.kv_heads,
        shape.heads
    );
    assert!(!o.norm || o.kv_heads == shape.heads, "qkv_post: QK-norm with grouped K/V heads is not implemented");
    assert!(
        o.rope == RopeStyle::Interleaved || shape.head_dim % 8 == 0,
        "qkv_post: rotate-half RoPE needs head_dim % 8 == 0, got {}",
        shape.head_dim
    );
    match (o.norm, a.norm_weights, a.saved) {
        (true, Some(w), Some(saved)) => {
            check_f32(w, 4 * shape.head_dim, "norm_weights [4, Dh]");
            check_f32(saved, 2 * shape.units(), "saved rstd [2, rows, H]");
        }
        (false, None, None) => {}
        _ => panic!("qkv_post: norm_weights and saved are given exactly when opts.norm ({o:?})"),
    }
    let table = shape.seq() * shape.head_dim;
    let n = a.rope.numel();
    assert!(
        a.rope.dtype == DType::F32 && (n == table || n == shape.batch * table),
        "qkv_post: rope table must be f32 [S_joint, Dh/2, 2] or [B, S_joint, Dh/2, 2], got {:?} {:?}",
        a.rope.dtype,
        a.rope.shape
    );
    if n == table {
        0
    } else {
        table / 4
    }
}

/// The forward epilogue: see the module docs.
pub fn launch_forward(gpu: &Gpu, a: &Args) -> Result<Launch> {
    let (shape, o) = (a.shape, a.opts);
    let rope_b4 = check_forward(a);
    let [xq, xk, xv] = a.layout.bind3(&shape, o.kv_heads, a.x, "inputs");
    check_f32(a.q, shape.head_major_len(), "q");
    check_f32(a.k, o.kv_len(&shape), "k");
    check_f32(a.v, o.kv_len(&shape), "v");
    crate::kernels::check_index("qkv_post", &[("q", a.q), ("k", a.k), ("v", a.v)])?;
    let p = params(&shape, a.layout, o.kv_heads, rope_b4);
    // Without the norm, bindings 4 and 9 are never accessed: the table and q stand in.
    let (nw, saved) = (a.norm_weights.unwrap_or(a.rope), a.saved.unwrap_or(a.q));
    let [hd, pl] = lane_consts(&shape);
    let consts = [hd, pl, ("NORM", o.norm as u8 as f64), ("ROPE_HALF", (o.rope == RopeStyle::Half) as u8 as f64)];
    Ok(Launch {
        kernel: gpu.kernel(&QKV_POST, "qkv_post", &consts)?,
        params: bytemuck::bytes_of(&p).to_vec(),
        buffers: [xq, xk, xv, nw, a.rope, a.q, a.k, a.v, saved].iter().map(|t| t.buffer.clone()).collect(),
        groups: crate::kernels::grid_2d(shape.units().div_ceil(shape.units_per_group()) as u32),
    })
}

/// Outputs of [`forward`].
pub struct QkvOut {
    pub q: Tensor,
    pub k: Tensor,
    pub v: Tensor,
    /// rstd of q then k, `[2, rows, H]`.
    pub saved: Tensor,
}

/// Convenience for tests and one-off use: allocates the outputs and runs the DiT's epilogue.
pub fn run_forward(
    gpu: &Arc<Gpu>,
    shape: JointShape,
    layout: QkvLayout,
    inputs: &[&Tensor],
    norm_weights: &Tensor,
    rope_table: &Tensor,
) -> Result<QkvOut> {
    let hm = [shape.batch, shape.heads, shape.seq(), shape.head_dim];
    let out = QkvOut {
        q: Tensor::zeros(gpu, &hm, DType::F32, "q")?,
        k: Tensor::zeros(gpu, &hm, DType::F32, "k")?,
        v: Tensor::zeros(gpu, &hm, DType::F32, "v")?,
        saved: Tensor::zeros(gpu, &[2, shape.rows(), shape.heads], DType::F32, "qk rstd")?,
    };
    let a = Args {
        shape,
        layout,
        opts: Options::dit(&shape),
        x: inputs,
        norm_weights: Some(norm_weights),
        rope: rope_table,
        q: &out.q,
        k: &out.k,
        v: &out.v,
        saved: Some(&out.saved),
    };
    let l = launch_forward(gpu, &a)?;
    gpu.run(&[l])?;
    Ok(out)
}

/// Operands of the backward; the forward's, then the output gradients and the input gradients.
pub struct BackwardArgs<'a> {
    pub shape: JointShape,
    pub layout: QkvLayout,
    pub x: &'a [&'a Tensor],
    pub norm_weights: &'a Tensor,
    pub rope: &'a Tensor,
    pub saved: &'a Tensor,
    pub dq: &'a Tensor,
    pub dk: &'a Tensor,
    pub dv: &'a Tensor,
    /// Gradients of `x` (`=`), in the layout of `x`.
    pub d_x: &'a [&'a Tensor],
    /// `+=` when given (two more dispatches).
    pub d_norm_weights: Option<&'a Tensor>,
}

/// The backward: `d_x` (`=`, layout of `x`) and, if given, `d_norm_weights += ...`.
/// forward: y = rope(x·rstd·w)  =>  dx = rstd·(w·g − x̂·mean(w·g·x̂)), g = rope⁻¹(dy), x̂ = x·rstd;
/// dw += Σ_units g·x̂; dv = dV.
pub fn launch_backward(gpu: &Gpu, a: &BackwardArgs) -> Result<Vec<Launch>> {
    let shape = a.shape;
    check_common(&shape, a.norm_weights, a.rope, a.saved);
    let [xq, xk, _] = a.layout.bind3(&shape, shape.heads, a.x, "inputs");
    let [gq, gk, gv] = a.layout.bind3(&shape, shape.heads, a.d_x, "dinputs");
    for (t, n) in [(a.dq, "dq"), (a.dk, "dk"), (a.dv, "dv")] {
        check_f32(t, shape.head_major_len(), n);
        crate::kernels::check_index("qkv_post_backward", &[(n, t)])?;
    }
    let p = params(&shape, a.layout, shape.heads, 0);
    let mut out = vec![Launch {
        kernel: gpu.kernel(&QKV_POST_BACKWARD, "qkv_post_backward", &lane_consts(&shape))?,
        params: bytemuck::bytes_of(&p).to_vec(),
        buffers: [a.dq, a.dk, a.dv, xq, xk, a.norm_weights, a.rope, a.saved, gq, gk, gv]
            .iter()
            .map(|t| t.buffer.clone())
            .collect(),
        groups: crate::kernels::grid_2d(shape.units().div_ceil(shape.units_per_group()) as u32),
    }];
    if let Some(dw) = a.d_norm_weights {
        check_f32(dw, 4 * shape.head_dim, "dnorm_weights [4, Dh]");
        out.extend(norm_grad_launches(gpu, &shape, p, [a.dq, a.dk, xq, xk, a.rope, a.saved], dw)?);
    }
    Ok(out)
}

/// Units per partial-sum workgroup of the norm-weight gradient (whose sub-rows hold one vec4 per
/// lane): each of the workgroup's 256 / (Dh/4) sub-rows walks 64 units.
fn chunk_units(shape: &JointShape) -> usize {
    WG / (shape.head_dim / 4) * 64
}

/// The two dispatches of `dw += Σ g·x̂`: per-chunk partial sums into a scratch buffer, then the sum.
fn norm_grad_launches(gpu: &Gpu, shape: &JointShape, p: Params, t: [&Tensor; 6], dw: &Tensor) -> Result<[Launch; 2]> {
    let cu = chunk_units(shape);
    let most = (shape.batch * shape.s_txt).max(shape.batch * shape.s_img) * shape.heads;
    let chunks = most.div_ceil(cu).max(1);
    let partial = gpu.buffer((chunks * 4 * shape.head_dim * 4) as u64, "qkv_post norm-grad partials")?;
    let np = NormGradParams {
        batch: p.batch,
        heads: p.heads,
        s_txt: p.s_txt,
        s_img: p.s_img,
        in_stride4: p.in_stride4,
        q_off4: p.q_off4,
        k_off4: p.k_off4,
        units: p.units,
        chunk_units: cu as u32,
        chunks: chunks as u32,
        _pad: [0; 2],
    };
    let mut buffers: Vec<_> = t.iter().map(|t| t.buffer.clone()).collect();
    buffers.push(partial);
    buffers.push(dw.buffer.clone());
    let c = head_dim_const(shape);
    let launch = |entry, groups| -> Result<Launch> {
        Ok(Launch {
            kernel: gpu.kernel(&QKV_POST_NORM_GRAD, entry, &c)?,
            params: bytemuck::bytes_of(&np).to_vec(),
            buffers: buffers.clone(),
            groups,
        })
    };
    assert!(chunks <= 65535, "qkv_post: {chunks} norm-grad chunks exceed one grid dimension");
    Ok([
        launch("norm_grad_partial", [chunks as u32, 2, 1])?,
        launch("norm_grad_sum", [(4 * shape.head_dim).div_ceil(WG) as u32, 1, 1])?,
    ])
}

pub mod cpu {
    //! Naive f64 reference. Inputs in the standard layout (`[rows, D]` each; [`split_merged`]
    //! converts), outputs head-major `[B, H, S_joint, Dh]`.
    use super::EPS;
    use crate::layout::JointShape;
    use crate::models::qwen_image::rope;

    /// Splits a merged `[rows, 3D]` buffer into q, k, v `[rows, D]`.
    pub fn split_merged<T: Copy>(shape: &JointShape, qkv: &[T]) -> [Vec<T>; 3] {
        let d = shape.hidden();
        let part = |j: usize| qkv.chunks(3 * d).flat_map(|r| r[j * d..(j + 1) * d].to_vec()).collect();
        [part(0), part(1), part(2)]
    }

    /// The inverse of [`split_merged`].
    pub fn merge<T: Copy>(shape: &JointShape, parts: [&[T]; 3]) -> Vec<T> {
        let d = shape.hidden();
        (0..shape.rows()).flat_map(|r| parts.iter().flat_map(move |p| p[r * d..(r + 1) * d].to_vec())).collect()
    }

    /// Where (row, head) lives: input offset, head-major output offset, norm-weight row of q, table row.
    fn locate(shape: &JointShape, row: usize, h: usize) -> (usize, usize, usize, usize) {
        let (b, s, txt) = shape.token(row);
        let dh = shape.head_dim;
        let input = row * shape.hidden() + h * dh;
        let out = ((b * shape.heads + h) * shape.seq() + s) * dh;
        (input, out, if txt { 2 } else { 0 }, s)
    }

    fn rstd(x: &[f64]) -> f64 {
        1.0 / (x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64 + EPS as f64).sqrt()
    }

    pub struct Forward {
        pub q: Vec<f64>,
        pub k: Vec<f64>,
        pub v: Vec<f64>,
        /// rstd of q then k, `[2, rows, H]`.
        pub rstd: Vec<f64>,
    }

    /// `x` = (q, k, v) `[rows, D]`; `norm_w` `[4, Dh]`; `table` from [`rope::table`].
    pub fn forward(shape: &JointShape, x: [&[f64]; 3], norm_w: &[f64], table: &[f32]) -> Forward {
        let (dh, n) = (shape.head_dim, shape.head_major_len());
        let mut f = Forward { q: vec![0.0; n], k: vec![0.0; n], v: vec![0.0; n], rstd: vec![0.0; 2 * shape.units()] };
        for row in 0..shape.rows() {
            for h in 0..shape.heads {
                let (i, o, w0, s) = locate(shape, row, h);
                let cs = &table[s * dh..(s + 1) * dh];
                for (j, out) in [&mut f.q, &mut f.k].into_iter().enumerate() {
                    let xs = &x[j][i..i + dh];
                    let r = rstd(xs);
                    let w = &norm_w[(w0 + j) * dh..(w0 + j + 1) * dh];
                    let mut y: Vec<f64> = (0..dh).map(|e| xs[e] * r * w[e]).collect();
                    rope::cpu::rotate(&mut y, cs, false);
                    out[o..o + dh].copy_from_slice(&y);
                    f.rstd[j * shape.units() + row * shape.heads + h] = r;
                }
                f.v[o..o + dh].copy_from_slice(&x[2][i..i + dh]);
            }
        }
        f
    }

    /// Rotate-half RoPE of one head in place (transformers `apply_rotary_pos_emb`):
    /// `x' = x·cos + rotate_half(x)·sin`, `rotate_half(x) = cat(−x[Dh/2:], x[:Dh/2])`, with
    /// `cos = cat(c, c)`, `sin = cat(s, s)` and (c_i, s_i) = `cs[2i], cs[2i + 1]`, i < Dh/2.
    pub fn rotate_half(x: &mut [f64], cs: &[f32]) {
        let half = x.len() / 2;
        assert_eq!(cs.len(), x.len(), "rotate_half: head dim vs table row");
        let rot: Vec<f64> = (0..x.len()).map(|d| if d < half { -x[d + half] } else { x[d - half] }).collect();
        for (d, xd) in x.iter_mut().enumerate() {
            let i = d % half;
            *xd = *xd * cs[2 * i] as f64 + rot[d] * cs[2 * i + 1] as f64;
        }
    }

    /// The Qwen2.5-VL epilogue ([`Options::rotate_half`](super::Options::rotate_half)): `qkv`
    /// `[rows, (H + 2·kv_heads)·Dh]` rows `[q | k | v]`, `table` `[S, Dh/2, 2]` or `[B, S, Dh/2, 2]`;
    /// returns q `[B, H, S, Dh]`, k and v `[B, kv_heads, S, Dh]`.
    pub fn forward_rotate_half(shape: &JointShape, kv_heads: usize, qkv: &[f64], table: &[f32]) -> [Vec<f64>; 3] {
        let (dh, h, s) = (shape.head_dim, shape.heads, shape.seq());
        let cols = (h + 2 * kv_heads) * dh;
        let per_sample = table.len() == shape.batch * s * dh;
        let n_kv = shape.batch * kv_heads * s * dh;
        let (mut q, mut k, mut v) = (vec![0.0; shape.head_major_len()], vec![0.0; n_kv], vec![0.0; n_kv]);
        for row in 0..shape.rows() {
            let (b, pos, _) = shape.token(row);
            let t = if per_sample { b * s + pos } else { pos };
            let cs = &table[t * dh..(t + 1) * dh];
            let x = &qkv[row * cols..(row + 1) * cols];
            for hq in 0..h {
                let mut y = x[hq * dh..(hq + 1) * dh].to_vec();
                rotate_half(&mut y, cs);
                q[((b * h + hq) * s + pos) * dh..][..dh].copy_from_slice(&y);
            }
            for hk in 0..kv_heads {
                let o = ((b * kv_heads + hk) * s + pos) * dh;
                let mut y = x[(h + hk) * dh..(h + hk + 1) * dh].to_vec();
                rotate_half(&mut y, cs);
                k[o..o + dh].copy_from_slice(&y);
                v[o..o + dh].copy_from_slice(&x[(h + kv_heads + hk) * dh..(h + kv_heads + hk + 1) * dh]);
            }
        }
        [q, k, v]
    }

    pub struct Backward {
        /// dq, dk, dv inputs, `[rows, D]` each.
        pub dx: [Vec<f64>; 3],
        /// Norm-weight gradient `[4, Dh]` (image q, image k, text q, text k).
        pub dw: Vec<f64>,
    }

    /// forward: y = rope(x·rstd·w)  =>  g = rope⁻¹(dy), x̂ = x·rstd,
    /// dx = rstd·(w·g − x̂·mean(w·g·x̂)), dw = Σ g·x̂; dv = dV. `dy` = (dQ, dK, dV) head-major.
    pub fn backward(shape: &JointShape, x: [&[f64]; 2], norm_w: &[f64], table: &[f32], dy: [&[f64]; 3]) -> Backward {
        let (dh, rd) = (shape.head_dim, shape.rows() * shape.hidden());
        let mut bw = Backward { dx: [vec![0.0; rd], vec![0.0; rd], vec![0.0; rd]], dw: vec![0.0; 4 * dh] };
        for row in 0..shape.rows() {
            for h in 0..shape.heads {
                let (i, o, w0, s) = locate(shape, row, h);
                let cs = &table[s * dh..(s + 1) * dh];
                for j in 0..2 {
                    let xs = &x[j][i..i + dh];
                    let r = rstd(xs);
                    let w = &norm_w[(w0 + j) * dh..(w0 + j + 1) * dh];
                    let mut g = dy[j][o..o + dh].to_vec();
                    rope::cpu::rotate(&mut g, cs, true);
                    let xh: Vec<f64> = xs.iter().map(|v| v * r).collect();
                    let m = (0..dh).map(|e| w[e] * g[e] * xh[e]).sum::<f64>() / dh as f64;
                    for e in 0..dh {
                        bw.dx[j][i + e] = r * (w[e] * g[e] - xh[e] * m);
                        bw.dw[(w0 + j) * dh + e] += g[e] * xh[e];
                    }
                }
                bw.dx[2][i..i + dh].copy_from_slice(&dy[2][o..o + dh]);
            }
        }
        bw
    }
}

#[cfg(test)]
mod tests;
