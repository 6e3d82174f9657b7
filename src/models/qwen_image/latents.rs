//! Latent packing of the DiT's image tokens (diffusers `QwenImagePipeline._pack_latents` /
//! `_unpack_latents`, spec qwen-image-dit.md §3.2): used by training collation, and by the sampling
//! pipeline before the VAE decode and for edit references.

/// diffusers `_pack_latents`: [C, h, w] → [(h/p)·(w/p), C·p·p]; token = row-major over the
/// (h/p, w/p) grid, channel = c·p² + dy·p + dx (spec §3.2).
pub fn pack(x: &[f32], shape: [usize; 3], p: usize) -> Vec<f32> {
    let [c, h, w] = shape;
    assert_eq!(x.len(), c * h * w, "pack: data does not match {shape:?}");
    let (gh, gw, k) = (h / p, w / p, c * p * p);
    let mut out = vec![0f32; gh * gw * k];
    for ch in 0..c {
        for y in 0..h {
            for xx in 0..w {
                let tok = (y / p) * gw + xx / p;
                let col = ch * p * p + (y % p) * p + xx % p;
                out[tok * k + col] = x[(ch * h + y) * w + xx];
            }
        }
    }
    out
}

/// diffusers `_unpack_latents`: the inverse of [`pack`].
pub fn unpack(tokens: &[f32], shape: [usize; 3], p: usize) -> Vec<f32> {
    let [c, h, w] = shape;
    assert_eq!(tokens.len(), c * h * w, "unpack: data does not match {shape:?}");
    let (gw, k) = (w / p, c * p * p);
    let mut out = vec![0f32; c * h * w];
    for ch in 0..c {
        for y in 0..h {
            for xx in 0..w {
                let tok = (y / p) * gw + xx / p;
                out[(ch * h + y) * w + xx] = tokens[tok * k + ch * p * p + (y % p) * p + xx % p];
            }
        }
    }
    out
}
