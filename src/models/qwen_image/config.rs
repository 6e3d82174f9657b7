//! `QwenImageTransformer2DModel` configuration: diffusers' `config.json` keys and the built-in
//! `qwen-image` preset (spec qwen-image-dit.md §1.1).

use crate::error::{Error, Result};
use serde_json::Value;
use std::path::Path;

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct DitConfig {
    pub patch_size: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub num_layers: usize,
    pub attention_head_dim: usize,
    pub num_attention_heads: usize,
    pub joint_attention_dim: usize,
    /// Head-dim split of the 3-axis RoPE: [frame, height, width]; sums to `attention_head_dim`.
    pub axes_dims_rope: [usize; 3],
    /// Qwen-Image-Edit-2511: reference tokens are modulated with the t = 0 embedding.
    pub zero_cond_t: bool,
}

/// Keys that exist in real configs but change nothing (spec §1.1, §9.7).
const INERT_KEYS: &[&str] = &["guidance_embeds", "pooled_projection_dim"];
/// Keys of variants wgdit does not implement: refused when true.
const UNSUPPORTED_FLAGS: &[(&str, &str)] = &[
    ("use_layer3d_rope", "Qwen-Image-Layered's 3D RoPE"),
    ("use_additional_t_cond", "Qwen-Image-Layered's additional timestep condition"),
];

impl DitConfig {
    /// The real Qwen-Image / Edit / 2509 model (20.4B parameters).
    pub fn qwen_image() -> DitConfig {
        DitConfig {
            patch_size: 2,
            in_channels: 64,
            out_channels: 16,
            num_layers: 60,
            attention_head_dim: 128,
            num_attention_heads: 24,
            joint_attention_dim: 3584,
            axes_dims_rope: [16, 56, 56],
            zero_cond_t: false,
        }
    }

    /// A tiny model of the real architecture for tests: 2 blocks, 2 heads × 16 (D = 32), text
    /// width 24, 16 packed latent channels.
    pub fn tiny() -> DitConfig {
        DitConfig {
            patch_size: 2,
            in_channels: 16,
            out_channels: 4,
            num_layers: 2,
            attention_head_dim: 16,
            num_attention_heads: 2,
            joint_attention_dim: 24,
            axes_dims_rope: [4, 6, 6],
            zero_cond_t: false,
        }
    }

    /// A scaled-down Qwen-Image for the quickstart and benches: 4 blocks, 4 heads × 32 (D = 128),
    /// text width 64.
    pub fn small() -> DitConfig {
        DitConfig {
            num_layers: 4,
            attention_head_dim: 32,
            num_attention_heads: 4,
            joint_attention_dim: 64,
            axes_dims_rope: [8, 12, 12],
            ..DitConfig::tiny()
        }
    }

    /// A built-in preset by name (`qwen-image`, `qwen-image-edit-2511`).
    pub fn preset(name: &str) -> Result<DitConfig> {
        match name {
            "qwen-image" | "qwen-image-edit" | "qwen-image-edit-2509" | "qwen-image-2512" => Ok(DitConfig::qwen_image()),
            "qwen-image-edit-2511" => Ok(DitConfig { zero_cond_t: true, ..DitConfig::qwen_image() }),
            other => Err(Error::input(format!(
                "unknown preset `{other}`: use qwen-image, qwen-image-edit, qwen-image-edit-2509, qwen-image-edit-2511 or qwen-image-2512"
            ))),
        }
    }

    /// Hidden size D = heads × head_dim.
    pub fn hidden(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    /// Reads a diffusers `config.json`.
    pub fn from_file(path: &Path) -> Result<DitConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| Error::file(path, format!("not valid JSON: {e}")))?;
        DitConfig::from_json(&v).map_err(|e| Error::file(path, e.to_string()))
    }

    /// Parses the JSON object of a diffusers config; defaults are the real model's, as in
    /// diffusers' constructor.
    pub fn from_json(v: &Value) -> Result<DitConfig> {
        let obj = v.as_object().ok_or_else(|| Error::input("config is not a JSON object"))?;
        for (flag, what) in UNSUPPORTED_FLAGS {
            if obj.get(*flag).and_then(Value::as_bool) == Some(true) {
                return Err(Error::input(format!("`{flag}: true` ({what}) is not supported by wgdit")));
            }
        }
        let d = DitConfig::qwen_image();
        let num = |k: &str, def: usize| -> Result<usize> {
            match obj.get(k) {
                None | Some(Value::Null) => Ok(def),
                Some(x) => x
                    .as_u64()
                    .map(|n| n as usize)
                    .ok_or_else(|| Error::input(format!("config key `{k}` must be a positive integer, got {x}"))),
            }
        };
        let axes = match obj.get("axes_dims_rope") {
            None => d.axes_dims_rope,
            Some(a) => {
                let v: Vec<usize> = a
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_u64).map(|n| n as usize).collect())
                    .unwrap_or_default();
                <[usize; 3]>::try_from(v)
                    .map_err(|_| Error::input(format!("config key `axes_dims_rope` must be 3 integers, got {a}")))?
            }
        };
        let c = DitConfig {
            patch_size: num("patch_size", d.patch_size)?,
            in_channels: num("in_channels", d.in_channels)?,
            out_channels: num("out_channels", d.out_channels)?,
            num_layers: num("num_layers", d.num_layers)?,
            attention_head_dim: num("attention_head_dim", d.attention_head_dim)?,
            num_attention_heads: num("num_attention_heads", d.num_attention_heads)?,
            joint_attention_dim: num("joint_attention_dim", d.joint_attention_dim)?,
            axes_dims_rope: axes,
            zero_cond_t: obj.get("zero_cond_t").and_then(Value::as_bool).unwrap_or(false),
        };
        let _ = INERT_KEYS; // accepted and ignored, like diffusers (spec §1.1)
        c.validate()?;
        Ok(c)
    }

    fn validate(&self) -> Result<()> {
        // Bounds: the real model's values with ≥ 16× headroom, so that no count derived from a
        // config (tensor names, weight bytes, RoPE tables) can overflow or allocate without limit.
        let bounds: [(&str, usize, usize); 7] = [
            ("patch_size", self.patch_size, 32),
            ("in_channels", self.in_channels, 4096),
            ("out_channels", self.out_channels, 4096),
            ("num_layers", self.num_layers, 1000),
            ("attention_head_dim", self.attention_head_dim, 4096),
            ("num_attention_heads", self.num_attention_heads, 1024),
            ("joint_attention_dim", self.joint_attention_dim, 65536),
        ];
        for (key, v, max) in bounds {
            if v == 0 || v > max {
                return Err(Error::input(format!("config key `{key}` is {v}; wgdit supports 1..={max}")));
            }
        }
        if self.hidden() > 65536 {
            return Err(Error::input(format!(
                "num_attention_heads × attention_head_dim = {} × {} exceeds 65536",
                self.num_attention_heads, self.attention_head_dim
            )));
        }
        let sum = self.axes_dims_rope.iter().try_fold(0usize, |a, &d| a.checked_add(d));
        if sum != Some(self.attention_head_dim) {
            return Err(Error::input(format!(
                "axes_dims_rope {:?} does not sum to attention_head_dim {}",
                self.axes_dims_rope, self.attention_head_dim
            )));
        }
        if self.axes_dims_rope.iter().any(|d| d % 2 != 0) || self.attention_head_dim % 2 != 0 {
            return Err(Error::input("RoPE axis dims and attention_head_dim must be even (rotations act on pairs)"));
        }
        if self.in_channels % (self.patch_size * self.patch_size) != 0 {
            return Err(Error::input(format!(
                "in_channels {} is not a multiple of patch_size² ({})",
                self.in_channels,
                self.patch_size * self.patch_size
            )));
        }
        Ok(())
    }

    /// Output channels per token: patch_size² · out_channels.
    pub fn out_features(&self) -> usize {
        self.patch_size * self.patch_size * self.out_channels
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_config_keys_parse_and_inert_keys_are_accepted() {
        let v = serde_json::json!({"_class_name": "QwenImageTransformer2DModel", "patch_size": 2, "in_channels": 64,
            "out_channels": 16, "num_layers": 60, "attention_head_dim": 128, "num_attention_heads": 24,
            "joint_attention_dim": 3584, "axes_dims_rope": [16, 56, 56], "guidance_embeds": false, "pooled_projection_dim": 768});
        assert_eq!(DitConfig::from_json(&v).unwrap(), DitConfig::qwen_image());
    }

    #[test]
    fn layered_variant_is_refused() {
        let v = serde_json::json!({"use_layer3d_rope": true});
        assert!(DitConfig::from_json(&v).unwrap_err().to_string().contains("use_layer3d_rope"));
    }

    #[test]
    fn huge_or_zero_sizes_are_refused_before_anything_is_derived_from_them() {
        for (key, v) in [
            ("num_layers", 1_000_000_000u64),
            ("patch_size", 1 << 33),
            ("attention_head_dim", 1 << 40),
            ("num_layers", 0),
        ] {
            let e = DitConfig::from_json(&serde_json::json!({ key: v })).unwrap_err().to_string();
            assert!(e.contains(key), "{key}: {e}");
        }
        let v = serde_json::json!({"num_attention_heads": 1024, "attention_head_dim": 4096, "axes_dims_rope": [1024, 1536, 1536]});
        assert!(DitConfig::from_json(&v).unwrap_err().to_string().contains("exceeds 65536"));
        let v = serde_json::json!({"axes_dims_rope": [usize::MAX, 2, 128]});
        assert!(DitConfig::from_json(&v).unwrap_err().to_string().contains("does not sum"));
    }

    #[test]
    fn zero_cond_t_is_read_from_the_config() {
        let v = serde_json::json!({"zero_cond_t": true});
        assert!(DitConfig::from_json(&v).unwrap().zero_cond_t);
    }
}
