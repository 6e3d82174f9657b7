//! f64 references of the tile programs (`attention::cpu::{tile_forward, tile_backward}`): the
//! function of `attention::cpu` on the operands the tile programs multiply — f16(q·scale) with
//! the f32 product, f16 k, and v, dO rounded to f16 after the power-of-two shift of their
//! (b, head) (`row_shift` of the head's max |x|, the shaders' headers) — with P (forward: relative
//! to the running max of each key tile of `bc` keys, as the kernel) and the shifted dS rounded to
//! f16 where the kernel rounds them, so the GPU results differ from these by f32 summation order
//! and rare one-ulp rounding flips only.

use super::cpu::Visibility;
use crate::kernels::gemm::cpu::{round_f16, row_shift};
use crate::layout::JointShape;

/// `DS_SHIFT` in flash_backward.wgsl: dS' = 2^(a+c−DS_SHIFT)·dS.
const DS_SHIFT: i32 = 21;

fn rounded(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| round_f16(v) as f64).collect()
}

/// f16(2^s·x) (the f32 product is exact) in f64, still shifted.
fn shifted(x: f32, s: i32) -> f64 {
    round_f16((x as f64 * 2f64.powi(s)) as f32) as f64
}

fn shift_of<'a>(xs: impl Iterator<Item = &'a f32>) -> i32 {
    row_shift(xs.fold(0f32, |m, v| m.max(v.abs())))
}

/// A head-major tensor of heads of `head_len` values, each head shifted by its own `row_shift`
/// and rounded: (the shifted operand, the shift per head).
fn shifted_heads(x: &[f32], head_len: usize) -> (Vec<f64>, Vec<i32>) {
    let shifts: Vec<i32> = x.chunks(head_len).map(|h| shift_of(h.iter())).collect();
    let xs = x.chunks(head_len).zip(&shifts).flat_map(|(h, &s)| h.iter().map(move |&v| shifted(v, s))).collect();
    (xs, shifts)
}

/// dO in stream-major joint rows, each (b, head) shifted by its own `row_shift` over its S rows
/// and rounded: (the shifted operand, the shift per b·heads + h).
fn shifted_d_o(sh: &JointShape, d_o: &[f32]) -> (Vec<f64>, Vec<i32>) {
    let (dh, hd) = (sh.head_dim, sh.heads * sh.head_dim);
    let rows = |b: usize, h: usize| (0..sh.seq()).map(move |i| sh.joint_row(b, i) * hd + h * dh);
    let mut out = vec![0.0; d_o.len()];
    let mut shifts = Vec::new();
    for b in 0..sh.batch {
        for h in 0..sh.heads {
            let a = shift_of(rows(b, h).flat_map(|r| &d_o[r..r + dh]));
            rows(b, h).for_each(|r| (r..r + dh).for_each(|x| out[x] = shifted(d_o[x], a)));
            shifts.push(a);
        }
    }
    (out, shifts)
}

/// f16(q·scale) (f32 product): the tile programs' Q operand.
pub fn scaled_q(sh: &JointShape, q: &[f32]) -> Vec<f64> {
    let scale = 1.0 / (sh.head_dim as f32).sqrt();
    q.iter().map(|&v| round_f16(v * scale) as f64).collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The forward (flash.wgsl) in f64 with its roundings: (O in stream-major joint rows, lse).
pub fn tile_forward(
    sh: &JointShape,
    vis: &Visibility,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    bc: usize,
) -> (Vec<f64>, Vec<f64>) {
    let (s, dh, hd) = (sh.seq(), sh.head_dim, sh.heads * sh.head_dim);
    let (qs, kr) = (scaled_q(sh, q), rounded(k));
    let (vr, v_shift) = shifted_heads(v, s * dh); // V' = f16(2^c·V) per K/V head
    let mut o = vec![0.0; sh.head_major_len()];
    let mut lse = vec![super::EMPTY_ROW_LSE as f64; sh.lse_len()];
    for b in 0..sh.batch {
        for h in 0..sh.heads {
            let base = (b * sh.heads + h) * s;
            let kv_head = b * vis.opts.kv_heads + h / vis.opts.group(sh);
            let (kv_base, unshift) = (kv_head * s, 2f64.powi(-v_shift[kv_head]));
            for i in 0..s {
                let qi = &qs[(base + i) * dh..][..dh];
                let (mut m, mut l, mut acc) = (f64::NEG_INFINITY, 0.0, vec![0.0; dh]);
                for j0 in (0..s).step_by(bc) {
                    let keys: Vec<(usize, f64)> = (j0..s.min(j0 + bc))
                        .filter(|&j| vis.sees(sh, b, i, j))
                        .map(|j| (j, dot(qi, &kr[(kv_base + j) * dh..][..dh])))
                        .collect();
                    let mt = keys.iter().fold(m, |a, &(_, x)| a.max(x));
                    if mt == f64::NEG_INFINITY {
                        continue; // nothing visible yet
                    }
                    let alpha = (m - mt).exp();
                    l *= alpha;
                    acc.iter_mut().for_each(|a| *a *= alpha);
                    for &(j, x) in &keys {
                        let pj = (x - mt).exp();
                        l += pj;
                        let pr = round_f16(pj as f32) as f64;
                        let vj = &vr[(kv_base + j) * dh..][..dh];
                        acc.iter_mut().zip(vj).for_each(|(a, &vd)| *a += pr * vd);
                    }
                    m = mt;
                }
                if l > 0.0 {
                    let orow = sh.joint_row(b, i) * hd + h * dh;
                    o[orow..orow + dh].iter_mut().zip(&acc).for_each(|(y, a)| *y = a / l * unshift);
                    lse[base + i] = m + l.ln();
                }
            }
        }
    }
    (o, lse)
}

/// Inputs of [`tile_backward`], as the backward reads them (the forward's `o` and `lse`).
pub struct TileBackward<'a> {
    pub q: &'a [f32],
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub mask: Option<&'a [f32]>,
    pub o: &'a [f32],
    pub lse: &'a [f32],
    pub d_o: &'a [f32],
}

/// The backward (flash_backward.wgsl, full attention) in f64 with its roundings:
/// ((dq, dk, dv) head-major, delta).
pub fn tile_backward(sh: &JointShape, a: &TileBackward) -> ([Vec<f64>; 3], Vec<f64>) {
    let (s, dh, hd) = (sh.seq(), sh.head_dim, sh.heads * sh.head_dim);
    let scale = 1.0 / (dh as f64).sqrt();
    let (qs, kr) = (scaled_q(sh, a.q), rounded(a.k));
    let ((vr, v_shift), (dor, do_shift)) = (shifted_heads(a.v, s * dh), shifted_d_o(sh, a.d_o));
    let vis = Visibility::full(sh, a.mask);
    let (mut dq, mut dk, mut dv) = (vec![0.0; qs.len()], vec![0.0; qs.len()], vec![0.0; qs.len()]);
    let mut delta = vec![0.0; sh.lse_len()];
    for b in 0..sh.batch {
        for h in 0..sh.heads {
            let base = (b * sh.heads + h) * s;
            let row = |t: &[f64], i: usize| t[(base + i) * dh..][..dh].to_vec();
            // dP' = 2^(a+c)·dP, dS' = f16(2^(a+c−DS_SHIFT)·dS), dV' = 2^a·dV (the shader's header)
            let (a_do, c_v) = (do_shift[b * sh.heads + h], v_shift[b * sh.heads + h]);
            let (d_up, ds_down) = (2f64.powi(a_do + c_v), 2f64.powi(-DS_SHIFT));
            let (ds_unshift, dv_unshift) = (2f64.powi(DS_SHIFT - a_do - c_v), 2f64.powi(-a_do));
            for i in 0..s {
                let jr = sh.joint_row(b, i) * hd + h * dh;
                let di: f64 = (0..dh).map(|d| a.d_o[jr + d] as f64 * a.o[jr + d] as f64).sum();
                delta[base + i] = di;
                let (qi, doi) = (row(&qs, i), dor[jr..jr + dh].to_vec());
                for j in (0..s).filter(|&j| vis.sees(sh, b, i, j)) {
                    let (kj, vj) = (row(&kr, j), row(&vr, j));
                    let p = (dot(&qi, &kj) - a.lse[base + i] as f64).exp();
                    let ds = round_f16((p * (dot(&doi, &vj) - di * d_up) * ds_down) as f32) as f64;
                    let pr = round_f16(p as f32) as f64;
                    for d in 0..dh {
                        dq[(base + i) * dh + d] += ds * kj[d] * scale * ds_unshift;
                        dk[(base + j) * dh + d] += ds * qi[d] * ds_unshift;
                        dv[(base + j) * dh + d] += pr * doi[d] * dv_unshift;
                    }
                }
            }
        }
    }
    ([dq, dk, dv], delta)
}
