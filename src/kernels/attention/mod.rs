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
//! Memory is O(S·Dh): no S×S buffer. Dispatch geometry and tiling are described in the shaders.
//!
//! Performance notes (measured on lavapipe, 2-core VM shared with other jobs, so noisy):
//! about 0.1-0.2 GFLOP/s forward and backward at Dh 16-128. The inner loop reads one staged K/V vec4
//! per 4 FMAs, and llvmpipe turns every (same-address) workgroup read into an 8-lane gather; reading
//! K/V straight from the storage buffers (no staging, no barriers) was about 2× faster there at
//! Dh 16 and 1.7× at Dh 128, and removing exp() changed nothing. Staging is kept because it is the
//! right design for real GPUs (one broadcast shared-memory read per key for 64 rows). Open items for
//! real GPUs: at Dh 128 each invocation holds q and the accumulator (256 floats; 3-4×Dh in the
//! backward), which exceeds NVIDIA's 255 registers and spills; splitting Dh across 2-4 lanes
//! (subgroup shuffles) or cooperative matrices would fix that. Not measured on a real GPU yet.

use crate::gpu::{Buffer, Gpu, Launch};
use crate::layout::JointShape;
use crate::shaders::{ATTENTION, ATTENTION_BACKWARD};
use crate::tensor::{DType, Tensor};
use crate::Result;
use std::sync::Arc;

/// Query rows (forward, dQ) or key rows (dK/dV) per workgroup; `WG` in the shaders.
const ROWS_PER_GROUP: usize = 64;
/// vec4 per staged K/V (or Q/dO) tile; `TILE` in the shaders.
const TILE_VEC4: usize = 512;
/// Largest staged tile in rows; `MAX_BK` in the shaders.
const MAX_TILE_ROWS: usize = 32;

/// Kernel geometry of a joint attention call.
trait Geometry {
    fn check(&self, who: &str);
    fn tile_rows(&self) -> usize;
    fn constants(&self) -> [(&'static str, f64); 2];
    fn groups(&self) -> [u32; 3];
    fn params(&self, mask: Option<&Tensor>) -> Params;
}

impl Geometry for JointShape {
    fn check(&self, who: &str) {
        assert!(
            self.head_dim % 4 == 0 && (4..=128).contains(&self.head_dim),
            "{who}: head_dim {} must be a multiple of 4 in 4..=128",
            self.head_dim
        );
        assert!(self.batch >= 1 && self.heads >= 1 && self.s_img >= 1, "{who}: empty shape {self:?}");
        assert!(self.batch * self.heads <= 65535, "{who}: batch·heads {} over 65535", self.batch * self.heads);
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
    fn params(&self, mask: Option<&Tensor>) -> Params {
        Params {
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

/// Mirrors `Params` of both attention shaders.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    pub batch: u32,
    pub heads: u32,
    pub s_txt: u32,
    pub s_img: u32,
    pub has_mask: u32,
    pub scale: f32,
    pub _pad: [u32; 2],
}
crate::assert_params!(Params);

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

/// Operands of the forward: head-major q, k, v [B, H, S_joint, Dh], the text mask [B, S_txt]
/// (1 = valid), `o` in stream-major joint rows and `lse` [B, H, S_joint].
pub struct Args<'a> {
    pub q: &'a Tensor,
    pub k: &'a Tensor,
    pub v: &'a Tensor,
    pub mask: Option<&'a Tensor>,
    pub o: &'a Tensor,
    pub lse: &'a Tensor,
}

/// Forward: writes `o` (stream-major joint rows) and `lse`. See the module doc.
pub fn launch_forward(gpu: &Gpu, shape: &JointShape, a: &Args) -> Result<Launch> {
    const WHO: &str = "attention::launch_forward";
    shape.check(WHO);
    for (n, t) in [("q", a.q), ("k", a.k), ("v", a.v), ("o", a.o)] {
        check_f32(WHO, n, t, shape.head_major_len());
    }
    check_f32(WHO, "lse", a.lse, shape.lse_len());
    let p = shape.params(a.mask);
    Ok(Launch {
        kernel: gpu.kernel(&ATTENTION, "attention", &shape.constants())?,
        params: bytemuck::bytes_of(&p).to_vec(),
        buffers: vec![
            a.q.buffer.clone(),
            a.k.buffer.clone(),
            a.v.buffer.clone(),
            mask_buffer(WHO, shape, a.mask, a.q),
            a.o.buffer.clone(),
            a.lse.buffer.clone(),
        ],
        groups: shape.groups(),
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
    const WHO: &str = "attention::launch_backward";
    shape.check(WHO);
    for (n, t) in
        [("q", a.q), ("k", a.k), ("v", a.v), ("o", a.o), ("d_o", a.d_o), ("dq", a.dq), ("dk", a.dk), ("dv", a.dv)]
    {
        check_f32(WHO, n, t, shape.head_major_len());
    }
    check_f32(WHO, "lse", a.lse, shape.lse_len());
    check_f32(WHO, "delta", a.delta, shape.lse_len());
    let p = bytemuck::bytes_of(&shape.params(a.mask)).to_vec();
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
    let c = shape.constants();
    let launch = |entry: &'static str| -> Result<Launch> {
        Ok(Launch {
            kernel: gpu.kernel(&ATTENTION_BACKWARD, entry, &c)?,
            params: p.clone(),
            buffers: buffers.clone(),
            groups: shape.groups(),
        })
    };
    Ok(vec![launch("attention_backward_dq")?, launch("attention_backward_dkdv")?])
}

/// Convenience: runs the forward and returns `(o, lse)`.
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
    gpu.run(&[launch_forward(gpu, shape, &Args { q, k, v, mask, o: &o, lse: &lse })?])?;
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
    use crate::layout::JointShape;

    /// Softmax probabilities P [S, S] of head (b, h) and the lse per query, in f64.
    pub fn probs(
        sh: &JointShape,
        q: &[f64],
        k: &[f64],
        mask: Option<&[f32]>,
        b: usize,
        h: usize,
    ) -> (Vec<f64>, Vec<f64>) {
        let (s, dh) = (sh.seq(), sh.head_dim);
        let base = (b * sh.heads + h) * s * dh;
        let scale = 1.0 / (dh as f64).sqrt();
        let valid = |j: usize| j >= sh.s_txt || mask.is_none_or(|m| m[b * sh.s_txt + j] != 0.0);
        let mut p = vec![0.0; s * s];
        let mut lse = vec![0.0; s];
        for i in 0..s {
            let row = &mut p[i * s..(i + 1) * s];
            let mut mx = f64::NEG_INFINITY;
            for (j, r) in row.iter_mut().enumerate() {
                let dot: f64 = (0..dh).map(|d| q[base + i * dh + d] * k[base + j * dh + d]).sum();
                *r = if valid(j) { dot * scale } else { f64::NEG_INFINITY };
                mx = mx.max(*r);
            }
            let sum: f64 = row.iter().map(|x| (x - mx).exp()).sum();
            row.iter_mut().for_each(|x| *x = (*x - mx).exp() / sum);
            lse[i] = mx + sum.ln();
        }
        (p, lse)
    }

    /// Forward in f64: (O in stream-major joint rows [B·S, H·Dh], lse [B, H, S]).
    pub fn forward(sh: &JointShape, q: &[f64], k: &[f64], v: &[f64], mask: Option<&[f32]>) -> (Vec<f64>, Vec<f64>) {
        let (s, dh, hd) = (sh.seq(), sh.head_dim, sh.heads * sh.head_dim);
        let mut o = vec![0.0; sh.head_major_len()];
        let mut lse = vec![0.0; sh.lse_len()];
        for b in 0..sh.batch {
            for h in 0..sh.heads {
                let base = (b * sh.heads + h) * s * dh;
                let (p, l) = probs(sh, q, k, mask, b, h);
                lse[(b * sh.heads + h) * s..][..s].copy_from_slice(&l);
                for i in 0..s {
                    let orow = sh.joint_row(b, i) * hd + h * dh;
                    for j in 0..s {
                        for d in 0..dh {
                            o[orow + d] += p[i * s + j] * v[base + j * dh + d];
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
                let (p, _) = probs(sh, q, k, mask, b, h);
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
