//! True classifier-free guidance with norm rescaling, as every diffusers Qwen-Image pipeline
//! (`pipeline_qwenimage.py`, `_edit.py`, `_edit_plus.py`, 0.42.1) applies it to the two DiT outputs:
//!
//! ```text
//! comb_pred  = neg_noise_pred + true_cfg_scale * (noise_pred - neg_noise_pred)
//! cond_norm  = torch.norm(noise_pred, dim=-1, keepdim=True)
//! noise_norm = torch.norm(comb_pred, dim=-1, keepdim=True)
//! noise_pred = comb_pred * (cond_norm / noise_norm)
//! ```
//!
//! on the packed `[B, S, C]` predictions (C = 64 for Qwen-Image; the Edit pipelines first slice both
//! to the target tokens). Every op is elementwise f32 except the norm, a reduction whose summation
//! order torch fixes per CPU kernel; [`l2_norm`] reproduces torch 2.15's x86-64 AVX2/AVX-512 kernel.
//! The pipelines enable this only when `true_cfg_scale > 1` and a negative prompt is given.

/// Lanes of torch's `Vectorized<float>` accumulator in the AVX2 norm kernel.
const NORM_LANES: usize = 8;

/// `torch.norm(x)` of one row (`p = 2`, float32), with the summation order of torch's
/// `norm_kernel_tensor_iterator_impl` "reduce last dim" fast path on x86-64 AVX2/AVX-512:
/// 8 lane accumulators `acc[l] += x²` (square rounded, then add) over the full 8-blocks; the lanes
/// summed left to right; then the tail: squares of the first ⌊t/4⌋·4 tail elements rounded then
/// added (GCC's 4-wide SSE epilogue), the last t mod 4 fused (`fma(x, x, sum)`); finally `sqrt`.
/// For rows whose length is a multiple of 8 (C = 64) this also equals torch's portable kernel,
/// which differs only in the tail (no fused multiply-adds).
pub fn l2_norm(row: &[f32]) -> f32 {
    let blocks = row.len() / NORM_LANES * NORM_LANES;
    let mut acc = [0.0f32; NORM_LANES];
    for chunk in row[..blocks].chunks_exact(NORM_LANES) {
        for (a, &x) in acc.iter_mut().zip(chunk) {
            *a += x * x;
        }
    }
    let mut sum = acc[0];
    for &a in &acc[1..] {
        sum += a;
    }
    let tail = &row[blocks..];
    let unfused = tail.len() / 4 * 4;
    for &x in &tail[..unfused] {
        sum += x * x;
    }
    for &x in &tail[unfused..] {
        sum = x.mul_add(x, sum);
    }
    sum.sqrt()
}

/// True CFG with norm rescaling over rows of `channels` values: `cond` (the prompt's prediction)
/// and `neg` (the negative prompt's) are `[B, S, channels]` row-major, and the result has that
/// shape too. `scale` is `true_cfg_scale`, rounded to f32 as torch does with a Python scalar.
///
/// Each op rounds to f32 in the reference order. A row whose combined prediction is all zeros
/// divides by zero exactly as torch does (NaN or ±inf), no special case. Panics if the slices
/// differ in length or are not a whole number of rows (caller contract).
pub fn true_cfg(cond: &[f32], neg: &[f32], scale: f64, channels: usize) -> Vec<f32> {
    assert_eq!(cond.len(), neg.len(), "true_cfg: cond and neg lengths differ");
    assert!(
        channels > 0 && cond.len() % channels == 0,
        "true_cfg: length {} is not a multiple of {channels}",
        cond.len()
    );
    let s = scale as f32;
    let mut out = Vec::with_capacity(cond.len());
    let mut comb = vec![0.0f32; channels];
    for (c_row, n_row) in cond.chunks_exact(channels).zip(neg.chunks_exact(channels)) {
        for ((o, &c), &n) in comb.iter_mut().zip(c_row).zip(n_row) {
            *o = n + s * (c - n);
        }
        let ratio = l2_norm(c_row) / l2_norm(&comb);
        out.extend(comb.iter().map(|&v| v * ratio));
    }
    out
}
