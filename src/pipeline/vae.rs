//! `wgdit vae encode|decode`: PNG ↔ pixels ↔ latents files around [`Vae`], with every input
//! checked before any GPU work and outputs written to a temporary file, then renamed.
//!
//! - encode: a PNG, JPEG or WebP read as Pillow's `convert("RGB")` (no resizing; sides multiples of
//!   the spatial factor), x = `2·(pixels/255) − 1` as diffusers' `VaeImageProcessor`, → `latents` `[1, z, 1, h, w]` f32 =
//!   `vae.encode(x).latent_dist.mode()` (tiled as diffusers' `tiled_encode` when asked or needed).
//! - decode: `latents` `[1, z, 1, h, w]` (or `[1, z, h, w]`) f32, raw (no mean/std applied), →
//!   `image` `[1, 3, H, W]` f32 = `vae.decode(z).sample[:, :, 0]` (.safetensors) or an 8-bit RGB
//!   PNG `round((x/2 + 0.5).clamp(0, 1)·255)` (numpy's round half to even, as `numpy_to_pil`).

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::image::pixels;
use crate::models::qwen_image_vae::{Pass, Tiling, Vae};
use crate::outputs::{check_finite, check_outputs, NONFINITE_OUTPUT_HINT};
use crate::weights::writer::write_f32_tensor;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

pub struct EncodeTask {
    pub model: PathBuf,
    pub image: PathBuf,
    pub output: PathBuf,
    pub tiling: Tiling,
    /// Write latents with NaN/Inf values instead of refusing them.
    pub allow_nonfinite: bool,
}

pub struct DecodeTask {
    pub model: PathBuf,
    pub latents: PathBuf,
    pub output: PathBuf,
    pub tiling: Tiling,
    /// Write an image with NaN/Inf values instead of refusing it.
    pub allow_nonfinite: bool,
}

/// What a run did, for the CLI's one-line report.
#[derive(Clone, Debug)]
pub struct VaeReport {
    pub output_shape: Vec<usize>,
    pub dispatches: usize,
    /// Planned activation peak of the untiled pass at this size (what `auto` compared).
    pub planned_peak_bytes: u64,
    /// Decode tiles (0: untiled).
    pub tiles: usize,
    pub run_ms: f64,
}

/// Parses a latents file: one f32 tensor `latents` `[1, z_dim, 1, h, w]` or `[1, z_dim, h, w]`;
/// returns `(values [z, h, w], h, w)`. Never panics on malformed bytes (a fuzz entry point).
pub fn latents_from_bytes(bytes: &[u8], z_dim: usize) -> Result<(Vec<f32>, usize, usize)> {
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| Error::input(format!("not a valid safetensors file: {e}")))?;
    let t = st.tensor("latents").map_err(|_| {
        let names: Vec<&str> = st.names().into_iter().collect();
        Error::input(format!("no tensor `latents` (found: {})", names.join(", ")))
    })?;
    if t.dtype() != safetensors::Dtype::F32 {
        return Err(Error::input(format!("`latents` is {:?}; the VAE decode takes F32", t.dtype())));
    }
    let (h, w) = match *t.shape() {
        [1, c, 1, h, w] | [1, c, h, w] if c == z_dim && h > 0 && w > 0 => (h, w),
        ref s => {
            return Err(Error::input(format!(
                "`latents` has shape {s:?}; expected [1, {z_dim}, 1, h, w] (z_dim {z_dim} from the VAE config)"
            )))
        }
    };
    let data = t.data();
    if data.len() != 4 * z_dim * h * w {
        return Err(Error::input("`latents` byte length does not match its shape"));
    }
    let v: Vec<f32> = data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    check_finite("latents", &v, &[1, z_dim, h, w], "")?;
    Ok((v, h, w))
}

fn write_tensor(path: &Path, name: &str, shape: Vec<usize>, data: &[f32], producer: &str) -> Result<()> {
    let meta = BTreeMap::from([("producer".to_string(), producer.to_string())]);
    write_f32_tensor(path, name, data, &shape, &meta)
}

fn extension(p: &Path) -> String {
    p.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase()
}

/// `wgdit vae encode`.
pub fn run_encode(gpu: &Arc<Gpu>, t: &EncodeTask) -> Result<VaeReport> {
    if extension(&t.output) != "safetensors" {
        return Err(Error::input(format!("--output {}: latents are written as .safetensors", t.output.display())));
    }
    check_outputs(&[&t.model, &t.image], &[&t.output])?;
    let img = pixels::load_rgb(&t.image)?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut vae = Vae::open(gpu, &t.model)?;
    let f = vae.spatial_factor();
    if w % f != 0 || h % f != 0 {
        return Err(Error::input(format!(
            "{}: {w}×{h} is not a multiple of {f} (the VAE's spatial factor) on both sides; resize or crop it first",
            t.image.display()
        )));
    }
    let t0 = Instant::now();
    let (z, info) = vae.encode_with(&pixels::vae_input(&img), h, w, t.tiling)?;
    let run_ms = t0.elapsed().as_secs_f64() * 1e3;
    let m = vae.planned_memory(Pass::Encode, h, w);
    let shape = vec![1, vae.config.z_dim, 1, h / f, w / f];
    if !t.allow_nonfinite {
        check_finite("latents", &z, &shape, NONFINITE_OUTPUT_HINT)?;
    }
    write_tensor(&t.output, "latents", shape.clone(), &z, "wgdit vae encode")?;
    Ok(VaeReport {
        output_shape: shape,
        dispatches: info.dispatches,
        planned_peak_bytes: m.peak_bytes,
        tiles: info.tiles,
        run_ms,
    })
}

/// `wgdit vae decode`.
pub fn run_decode(gpu: &Arc<Gpu>, t: &DecodeTask) -> Result<VaeReport> {
    let ext = extension(&t.output);
    if ext != "png" && ext != "safetensors" {
        return Err(Error::input(format!("--output {}: write .png or .safetensors", t.output.display())));
    }
    check_outputs(&[&t.model, &t.latents], &[&t.output])?;
    // A 16384² image's latents at factor 8 and z_dim 16 are 64 MiB: 1 GiB leaves ample room.
    let bytes = crate::pipeline::folder::read_bounded_bytes(&t.latents, 1 << 30)?;
    let mut vae = Vae::open(gpu, &t.model)?;
    let (z, h, w) = latents_from_bytes(&bytes, vae.config.z_dim).map_err(|e| Error::file(&t.latents, e.to_string()))?;
    let t0 = Instant::now();
    let (img, info) = vae.decode(&z, h, w, t.tiling)?;
    let run_ms = t0.elapsed().as_secs_f64() * 1e3;
    let (f, c) = (vae.spatial_factor(), vae.config.input_channels);
    let (oh, ow) = (h * f, w * f);
    if !t.allow_nonfinite {
        check_finite("image", &img, &[1, c, oh, ow], NONFINITE_OUTPUT_HINT)?;
    }
    if ext == "png" {
        if c != 3 {
            return Err(Error::input(format!("PNG output needs 3 channels, this VAE decodes {c}")));
        }
        pixels::write_png(&t.output, &pixels::vae_output_to_rgb8(&img, ow as u32, oh as u32)?, &[])?;
    } else {
        write_tensor(&t.output, "image", vec![1, c, oh, ow], &img, "wgdit vae decode")?;
    }
    let m = vae.planned_memory(Pass::Decode { clamp: true }, h, w);
    Ok(VaeReport {
        output_shape: vec![1, c, oh, ow],
        dispatches: info.dispatches,
        planned_peak_bytes: m.peak_bytes,
        tiles: info.tiles,
        run_ms,
    })
}

/// `wgdit vae plan`: planned peak, largest activation and dispatches (per op) of encode and
/// decode of an `h × w` image, from a VAE folder's config or the Qwen-Image one; no GPU, no weights.
pub fn plan_table(model: Option<&Path>, h: usize, w: usize, scores_budget: u64) -> Result<String> {
    use crate::models::qwen_image_vae::{planned_memory, resolve_dir, VaeConfig};
    let cfg = match model {
        Some(m) => VaeConfig::from_file(&resolve_dir(m)?.join("config.json"))?,
        None => VaeConfig::qwen_image(),
    };
    let f = cfg.spatial_factor();
    if h % f != 0 || w % f != 0 {
        return Err(Error::input(format!("--size {h}x{w}: sides must be multiples of the spatial factor {f}")));
    }
    let mib = |b: u64| b as f64 / 1048576.0;
    let mut out = String::from("pass     size        peak MiB  largest activation MiB  dispatches  (by op)\n");
    for (name, pass, ph, pw) in [("encode", Pass::Encode, h, w), ("decode", Pass::Decode { clamp: true }, h / f, w / f)]
    {
        let m = planned_memory(&cfg, pass, ph, pw, scores_budget);
        let ops: Vec<String> = m.by_op.iter().map(|(k, n)| format!("{k} {n}")).collect();
        out += &format!(
            "{name:<8} {h:>5}x{w:<5} {:>9.1}  {:>22.1}  {:>10}  ({})\n",
            mib(m.peak_bytes),
            mib(m.largest_activation_bytes),
            m.dispatches,
            ops.join(", ")
        );
    }
    Ok(out)
}
