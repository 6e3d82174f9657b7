//! Rotary position embedding of Qwen-Image (diffusers `transformer_qwenimage.py`, `QwenEmbedRope`,
//! θ = 10000, `scale_rope=True`): the CPU-built cos/sin table that `qkv_post` applies on the GPU.
//!
//! Positions (3 axes: frame | height | width; the head dim splits into `axes_dims`, e.g. [16, 56, 56]):
//! - image number `idx` of `img_shapes` (0 = target, 1.. = edit references), token (f, r, c) in
//!   row-major order: `(idx + f, r − ceil(gh/2), c − ceil(gw/2))`;
//! - text token j: `max_vid_index + j` on all three axes, where
//!   `max_vid_index = max over all images of max(gh/2, gw/2)` (integer division).
//!
//! Numerics match diffusers in f32: `inv[k] = 1 / 10000^(f32(2k) / d)` (f32 pow and division), the
//! angle is the f32 product `f32(p) · inv[k]`, then f32 cos/sin. The table has one row per joint
//! position, text first: `[S_txt + S_img, Dh/2, 2]` holding (cos, sin) per interleaved pair.
//! It is built once per shape and uploaded.

/// RoPE base of every Qwen-Image model.
pub const THETA: f32 = 10000.0;

/// The (frame, height, width) position of every joint token, text first then the images in
/// `img_shapes` order (each row-major). `img_shapes` holds `(frames, gh, gw)` in patch units.
pub fn positions(img_shapes: &[(usize, usize, usize)], s_txt: usize) -> Vec<[i64; 3]> {
    let max_vid = img_shapes.iter().map(|&(_, h, w)| (h / 2).max(w / 2)).max().unwrap_or(0) as i64;
    let mut out: Vec<[i64; 3]> = (0..s_txt as i64).map(|j| [max_vid + j; 3]).collect();
    for (idx, &(f, h, w)) in img_shapes.iter().enumerate() {
        let (h0, w0) = (h.div_ceil(2) as i64, w.div_ceil(2) as i64);
        for fi in 0..f {
            for r in 0..h as i64 {
                for c in 0..w as i64 {
                    out.push([(idx + fi) as i64, r - h0, c - w0]);
                }
            }
        }
    }
    out
}

/// Inverse frequencies of one axis of even dim `d`, as diffusers computes them in f32:
/// `1.0 / torch.pow(10000, torch.arange(0, d, 2).float().div(d))`. The pow here is libm's
/// (correctly rounded); torch's vectorised pow (2.15, AVX2) is 1 ulp off it at one frequency of a
/// 56-dim axis (k = 11), which moves that angle by |p|·1.9e-9 (≤ 1e-6 for |p| ≤ 400; tests/rope.rs).
pub fn inv_freq(d: usize) -> Vec<f32> {
    assert!(d % 2 == 0, "rope: axis dim {d} must be even");
    (0..d / 2).map(|k| 1.0f32 / THETA.powf((2 * k) as f32 / d as f32)).collect()
}

/// The cos/sin table `[S_txt + S_img, Dh/2, 2]` (Dh = sum of `axes_dims`), text rows first.
pub fn table(axes_dims: &[usize], img_shapes: &[(usize, usize, usize)], s_txt: usize) -> Vec<f32> {
    assert_eq!(axes_dims.len(), 3, "rope: Qwen-Image has 3 axes (frame, height, width)");
    let inv: Vec<Vec<f32>> = axes_dims.iter().map(|&d| inv_freq(d)).collect();
    let pos = positions(img_shapes, s_txt);
    let half: usize = axes_dims.iter().sum::<usize>() / 2;
    let mut out = Vec::with_capacity(pos.len() * half * 2);
    for p in &pos {
        for (axis, inv) in inv.iter().enumerate() {
            for &f in inv {
                let angle = p[axis] as f32 * f;
                out.push(angle.cos());
                out.push(angle.sin());
            }
        }
    }
    out
}

/// Number of image tokens of `img_shapes`.
pub fn image_tokens(img_shapes: &[(usize, usize, usize)]) -> usize {
    img_shapes.iter().map(|&(f, h, w)| f * h * w).sum()
}

pub mod cpu {
    //! Applying the table on the CPU (diffusers `apply_rotary_emb_qwen(..., use_real=False)`:
    //! interleaved pairs x[2i] + i·x[2i+1] times cos + i·sin).

    /// Rotates one head vector `x` [Dh] in place by the table row `cs` [Dh/2, 2]:
    /// `out[2i] = x[2i]·cos − x[2i+1]·sin`, `out[2i+1] = x[2i]·sin + x[2i+1]·cos`.
    /// `inverse` rotates by −θ (the backward: the transpose of the rotation).
    pub fn rotate(x: &mut [f64], cs: &[f32], inverse: bool) {
        assert_eq!(x.len(), cs.len(), "rope::cpu::rotate: head dim vs table row");
        for i in 0..x.len() / 2 {
            let (c, s) = (cs[2 * i] as f64, cs[2 * i + 1] as f64);
            let s = if inverse { -s } else { s };
            let (a, b) = (x[2 * i], x[2 * i + 1]);
            x[2 * i] = a * c - b * s;
            x[2 * i + 1] = a * s + b * c;
        }
    }

    /// Rotates every head of `x` `[S_joint, H·Dh]` (joint positions in table order, text first) by
    /// its row of `table` `[S_joint, Dh/2, 2]`.
    pub fn apply(x: &mut [f64], table: &[f32], head_dim: usize) {
        let rows = table.len() / head_dim;
        assert_eq!(x.len() % rows, 0, "rope::cpu::apply: x rows vs table rows");
        let width = x.len() / rows;
        for (s, row) in x.chunks_mut(width).enumerate() {
            for head in row.chunks_mut(head_dim) {
                rotate(head, &table[s * head_dim..(s + 1) * head_dim], false);
            }
        }
    }
}
