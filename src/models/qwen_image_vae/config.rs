//! `AutoencoderKLQwenImage` configuration: diffusers' `vae/config.json` keys (spec
//! vae-and-text-encoder.md §1.1); defaults are the real checkpoint's, as in diffusers' constructor.

use crate::error::{Error, Result};
use serde_json::Value;
use std::path::Path;

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct VaeConfig {
    pub base_dim: usize,
    pub z_dim: usize,
    pub dim_mult: Vec<usize>,
    pub num_res_blocks: usize,
    /// diffusers' spelling. One entry per downsampling stage; `true` stages also have a
    /// `time_conv`, which a single image never runs (spec §1.4).
    pub temperal_downsample: Vec<bool>,
    pub input_channels: usize,
    pub latents_mean: Vec<f32>,
    pub latents_std: Vec<f32>,
}

const MEAN: [f32; 16] = [
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134, -0.0715, 0.5517, -0.3632, -0.1922,
    -0.9497, 0.2503, -0.2921,
];
const STD: [f32; 16] = [
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253,
    2.8251, 1.9160,
];

impl VaeConfig {
    /// The Qwen-Image VAE (base_dim 96, z_dim 16, 8× spatial compression).
    pub fn qwen_image() -> VaeConfig {
        VaeConfig {
            base_dim: 96,
            z_dim: 16,
            dim_mult: vec![1, 2, 4, 4],
            num_res_blocks: 2,
            temperal_downsample: vec![false, true, true],
            input_channels: 3,
            latents_mean: MEAN.to_vec(),
            latents_std: STD.to_vec(),
        }
    }

    /// Pixels per latent along each axis: `2 ** len(temperal_downsample)`, as diffusers'
    /// `spatial_compression_ratio` (checked at parse time to equal the encoder's real number of
    /// downsamplings, `len(dim_mult) − 1`).
    pub fn spatial_factor(&self) -> usize {
        1 << self.temperal_downsample.len()
    }

    /// Channel widths of the encoder stages: `base_dim · [1] + dim_mult`.
    pub fn encoder_dims(&self) -> Vec<usize> {
        std::iter::once(1).chain(self.dim_mult.iter().copied()).map(|m| m * self.base_dim).collect()
    }

    /// Channel widths of the decoder stages: `base_dim · [dim_mult[-1]] + dim_mult[::-1]`.
    pub fn decoder_dims(&self) -> Vec<usize> {
        let last = *self.dim_mult.last().expect("validated: dim_mult is not empty");
        std::iter::once(last).chain(self.dim_mult.iter().rev().copied()).map(|m| m * self.base_dim).collect()
    }

    /// Reads a diffusers `vae/config.json`.
    pub fn from_file(path: &Path) -> Result<VaeConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        VaeConfig::from_json_str(&text).map_err(|e| Error::file(path, e.to_string()))
    }

    /// Parses the text of a config (the fuzz entry point: never panics).
    pub fn from_json_str(text: &str) -> Result<VaeConfig> {
        let v: Value = serde_json::from_str(text).map_err(|e| Error::input(format!("not valid JSON: {e}")))?;
        VaeConfig::from_json(&v)
    }

    pub fn from_json(v: &Value) -> Result<VaeConfig> {
        let obj = v.as_object().ok_or_else(|| Error::input("config is not a JSON object"))?;
        if let Some(c) = obj.get("_class_name").and_then(Value::as_str) {
            if c != "AutoencoderKLQwenImage" {
                return Err(Error::input(format!(
                    "`_class_name` is {c}, expected AutoencoderKLQwenImage (is this the pipeline's vae/ folder?)"
                )));
            }
        }
        let d = VaeConfig::qwen_image();
        let c = VaeConfig {
            base_dim: uint(obj, "base_dim", d.base_dim)?,
            z_dim: uint(obj, "z_dim", d.z_dim)?,
            dim_mult: list(obj, "dim_mult", d.dim_mult, |x| x.as_u64().map(|n| n as usize))?,
            num_res_blocks: uint(obj, "num_res_blocks", d.num_res_blocks)?,
            temperal_downsample: list(obj, "temperal_downsample", d.temperal_downsample, Value::as_bool)?,
            input_channels: uint(obj, "input_channels", d.input_channels)?,
            latents_mean: list(obj, "latents_mean", d.latents_mean, |x| x.as_f64().map(|f| f as f32))?,
            latents_std: list(obj, "latents_std", d.latents_std, |x| x.as_f64().map(|f| f as f32))?,
        };
        let attn = list(obj, "attn_scales", Vec::new(), Value::as_f64)?;
        if !attn.is_empty() {
            return Err(Error::input(format!("`attn_scales` {attn:?} is not supported: wgdit's VAE has mid-block attention only (Qwen-Image uses [])")));
        }
        c.validate()?;
        Ok(c)
    }

    fn validate(&self) -> Result<()> {
        let positive = [("base_dim", self.base_dim), ("z_dim", self.z_dim), ("input_channels", self.input_channels)];
        for (k, v) in positive {
            if v == 0 || v > 1 << 16 {
                return Err(Error::input(format!("config key `{k}` = {v} is out of range 1..=65536")));
            }
        }
        if self.dim_mult.is_empty() || self.dim_mult.len() > 8 || self.dim_mult.iter().any(|&m| m == 0 || m > 64) {
            return Err(Error::input(format!("`dim_mult` {:?} must hold 1 to 8 values in 1..=64", self.dim_mult)));
        }
        if self.num_res_blocks > 16 {
            return Err(Error::input(format!("`num_res_blocks` = {} is out of range 0..=16", self.num_res_blocks)));
        }
        if self.temperal_downsample.len() + 1 != self.dim_mult.len() {
            return Err(Error::input(format!(
                "`temperal_downsample` has {} entries but `dim_mult` has {}: diffusers' spatial factor 2**{} would not match the encoder's {} downsamplings",
                self.temperal_downsample.len(),
                self.dim_mult.len(),
                self.temperal_downsample.len(),
                self.dim_mult.len() - 1
            )));
        }
        // Upsample convs halve the channels: every decoder stage width must be even.
        if self.decoder_dims().iter().any(|d| d % 2 == 1) && self.dim_mult.len() > 1 {
            return Err(Error::input(
                "base_dim·dim_mult must be even (the decoder's upsample convs halve the channels)",
            ));
        }
        for (k, v) in [("latents_mean", &self.latents_mean), ("latents_std", &self.latents_std)] {
            if v.len() != self.z_dim {
                return Err(Error::input(format!("`{k}` has {} values, z_dim is {}", v.len(), self.z_dim)));
            }
            if v.iter().any(|x| !x.is_finite()) {
                return Err(Error::input(format!("`{k}` holds a non-finite value")));
            }
        }
        if self.latents_std.contains(&0.0) {
            return Err(Error::input("`latents_std` holds a zero"));
        }
        Ok(())
    }
}

fn uint(obj: &serde_json::Map<String, Value>, k: &str, def: usize) -> Result<usize> {
    match obj.get(k) {
        None | Some(Value::Null) => Ok(def),
        Some(x) => x
            .as_u64()
            .map(|n| n as usize)
            .ok_or_else(|| Error::input(format!("config key `{k}` must be a non-negative integer, got {x}"))),
    }
}

fn list<T>(
    obj: &serde_json::Map<String, Value>,
    k: &str,
    def: Vec<T>,
    item: impl Fn(&Value) -> Option<T>,
) -> Result<Vec<T>> {
    match obj.get(k) {
        None | Some(Value::Null) => Ok(def),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| item(x).ok_or_else(|| Error::input(format!("config key `{k}` holds an invalid value {x}"))))
            .collect(),
        Some(x) => Err(Error::input(format!("config key `{k}` must be a list, got {x}"))),
    }
}

/// `(z − mean) / std` per channel of latents `[z_dim, h·w]` (channel-major, as `[1, z, 1, h, w]`):
/// what the Edit pipelines apply to encoded references (`_encode_vae_image`).
pub fn normalize_latents(cfg: &VaeConfig, z: &mut [f32]) {
    let n = z.len() / cfg.z_dim;
    for (c, plane) in z.chunks_mut(n).enumerate() {
        let (m, s) = (cfg.latents_mean[c], cfg.latents_std[c]);
        plane.iter_mut().for_each(|v| *v = (*v - m) / s);
    }
}

/// The inverse before decoding, as the pipelines compute it: `z / (1 / std) + mean` (sic:
/// diffusers divides by the reciprocal; spec §1.8).
pub fn denormalize_latents(cfg: &VaeConfig, z: &mut [f32]) {
    let n = z.len() / cfg.z_dim;
    for (c, plane) in z.chunks_mut(n).enumerate() {
        let (m, inv) = (cfg.latents_mean[c], 1.0 / cfg.latents_std[c]);
        plane.iter_mut().for_each(|v| *v = *v / inv + m);
    }
}
