//! Synthetic cached-sample datasets: the built-in data of the training examples and tests.

use crate::models::qwen_image::DitConfig;
use crate::{Error, Result};
use std::path::Path;

/// What the latents of a synthetic dataset look like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LatentKind {
    /// i.i.d. N(0, 1): nothing to learn but each sample by heart.
    Normal,
    /// Per channel, a few low-frequency cosines (std about 1): image-like structure.
    Smooth,
    /// All zero: the target is then the noise itself (x_t = σ·noise), a task of scale only.
    Zero,
}

fn synthetic_latents(rng: &mut crate::rng::Rng, kind: LatentKind, c: usize, h: usize, w: usize) -> Vec<f32> {
    match kind {
        LatentKind::Normal => rng.vec_normal(c * h * w, 1.0),
        LatentKind::Zero => vec![0.0; c * h * w],
        LatentKind::Smooth => {
            let pi = std::f32::consts::PI;
            let mut v = Vec::with_capacity(c * h * w);
            for _ in 0..c {
                let a = rng.vec_normal(6, 1.0);
                for y in 0..h {
                    for x in 0..w {
                        let (fy, fx) = (y as f32 / h as f32 * pi, x as f32 / w as f32 * pi);
                        let val = a[0]
                            + a[1] * fy.cos()
                            + a[2] * fx.cos()
                            + a[3] * fy.cos() * fx.cos()
                            + 0.5 * (a[4] * (2.0 * fy).cos() + a[5] * (2.0 * fx).cos());
                        v.push(val / 1.6);
                    }
                }
            }
            v
        }
    }
}

/// Writes a synthetic dataset of `n` cached samples for `cfg` (latents [C, h, w] ~ N(0, 1) and
/// prompt_embeds [s_txt, joint_attention_dim] ~ N(0, 1), seeded) plus its metadata.jsonl: the
/// built-in data of the training example and tests.
pub fn write_synthetic(dir: &Path, cfg: &DitConfig, n: usize, hw: [usize; 2], s_txt: usize, seed: u64) -> Result<()> {
    write_synthetic_with(dir, cfg, n, hw, s_txt, seed, LatentKind::Normal)
}

/// [`write_synthetic`] with latents of the given kind.
pub fn write_synthetic_with(
    dir: &Path,
    cfg: &DitConfig,
    n: usize,
    hw: [usize; 2],
    s_txt: usize,
    seed: u64,
    kind: LatentKind,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let c = cfg.in_channels / (cfg.patch_size * cfg.patch_size);
    let mut rng = crate::rng::Rng::new(seed);
    let mut meta = String::new();
    for i in 0..n {
        let lat = synthetic_latents(&mut rng, kind, c, hw[0], hw[1]);
        let txt = rng.vec_normal(s_txt * cfg.joint_attention_dim, 1.0);
        let tensors =
            [("latents", vec![c, hw[0], hw[1]], lat), ("prompt_embeds", vec![s_txt, cfg.joint_attention_dim], txt)];
        let views = tensors
            .iter()
            .map(|(k, s, v)| {
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), bytemuck::cast_slice(v))
                    .map(|t| (*k, t))
                    .map_err(|e| Error::input(format!("synthetic sample: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let name = format!("sample{i:03}.safetensors");
        let path = dir.join(&name);
        safetensors::serialize_to_file(views, None, &path).map_err(|e| Error::file(&path, e.to_string()))?;
        meta += &format!("{{\"file\": \"{name}\", \"caption\": \"synthetic sample {i}\"}}\n");
    }
    let m = dir.join("metadata.jsonl");
    std::fs::write(&m, meta).map_err(|e| Error::io(&m, e))
}
