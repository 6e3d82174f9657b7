//! `text_encoder/config.json` of `Qwen2_5_VLForConditionalGeneration` (transformers
//! `configuration_qwen2_5_vl.py`; spec vae-and-text-encoder.md §2.6-2.7), as transformers 4.x
//! writes it (the text keys flat at the top level, `rope_scaling` + `rope_theta`) and as 5.x does
//! (`text_config` / `vision_config` objects, `rope_parameters`). Every size is bounded before
//! anything is sized from it.

use crate::error::{Error, Result};
use serde_json::Value;

/// The language model (text part).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct TextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    /// M-RoPE frequency sections (t, h, w), summing to head_dim / 2.
    pub mrope_section: [usize; 3],
    pub tie_word_embeddings: bool,
}

/// The vision tower.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct VisionConfig {
    pub depth: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_heads: usize,
    pub out_hidden_size: usize,
    pub patch_size: usize,
    pub temporal_patch_size: usize,
    pub spatial_merge_size: usize,
    pub window_size: usize,
    pub fullatt_block_indexes: Vec<usize>,
    pub in_channels: usize,
}

/// Token ids the encoder treats specially.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct TokenIds {
    pub image: u32,
    pub vision_start: u32,
    pub vision_end: u32,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct EncoderConfig {
    pub text: TextConfig,
    pub vision: VisionConfig,
    pub tokens: TokenIds,
}

/// Bounds: the real 7B model ×16 where it is large, so that a config can never size a buffer
/// beyond what a plan would allow.
const MAX_VOCAB: u64 = 1 << 22;
const MAX_HIDDEN: u64 = 1 << 16;
const MAX_LAYERS: u64 = 1000;
const MAX_HEADS: u64 = 1024;

impl EncoderConfig {
    /// Qwen2.5-VL-7B-Instruct as the Qwen-Image text encoder (spec §2.6-2.7), for planning
    /// without the files.
    pub fn qwen2_5_vl_7b() -> EncoderConfig {
        EncoderConfig {
            text: TextConfig {
                vocab_size: 152_064,
                hidden_size: 3584,
                intermediate_size: 18_944,
                num_hidden_layers: 28,
                num_attention_heads: 28,
                num_key_value_heads: 4,
                head_dim: 128,
                rms_norm_eps: 1e-6,
                rope_theta: 1e6,
                mrope_section: [16, 24, 24],
                tie_word_embeddings: false,
            },
            vision: VisionConfig {
                depth: 32,
                hidden_size: 1280,
                intermediate_size: 3420,
                num_heads: 16,
                out_hidden_size: 3584,
                patch_size: 14,
                temporal_patch_size: 2,
                spatial_merge_size: 2,
                window_size: 112,
                fullatt_block_indexes: vec![7, 15, 23, 31],
                in_channels: 3,
            },
            tokens: TokenIds { image: 151_655, vision_start: 151_652, vision_end: 151_653 },
        }
    }

    pub fn from_json_str(text: &str) -> Result<EncoderConfig> {
        let v: Value = serde_json::from_str(text).map_err(|e| Error::input(format!("not JSON: {e}")))?;
        EncoderConfig::from_json(&v)
    }

    pub fn from_json(v: &Value) -> Result<EncoderConfig> {
        if !v.is_object() {
            return Err(Error::input("the config is not a JSON object"));
        }
        // 5.x nests the text keys in text_config; 4.x keeps them at the top level.
        let t = v.get("text_config").filter(|t| t.is_object()).unwrap_or(v);
        let vis = v.get("vision_config").filter(|t| t.is_object()).ok_or_else(|| {
            Error::input("no `vision_config` object (is this a Qwen2.5-VL text_encoder/config.json?)")
        })?;
        let text = text_config(t, v)?;
        let vision = vision_config(vis)?;
        let id = |k: &str, d: u64| -> Result<u32> {
            let x = num(v, k, Some(d), 1 << 24)?;
            Ok(x as u32)
        };
        let tokens = TokenIds {
            image: id("image_token_id", 151_655)?,
            vision_start: id("vision_start_token_id", 151_652)?,
            vision_end: id("vision_end_token_id", 151_653)?,
        };
        for (k, tok) in [("image_token_id", tokens.image), ("vision_start_token_id", tokens.vision_start)] {
            if tok as usize >= text.vocab_size {
                return Err(Error::input(format!("{k} {tok} is not below vocab_size {}", text.vocab_size)));
            }
        }
        if vision.out_hidden_size != text.hidden_size {
            return Err(Error::input(format!(
                "vision_config.out_hidden_size {} differs from the text hidden_size {}: the image features could not replace token embeddings",
                vision.out_hidden_size, text.hidden_size
            )));
        }
        Ok(EncoderConfig { text, vision, tokens })
    }
}

/// A non-negative integer key in 1..=max (or `default` when absent).
fn num(v: &Value, key: &str, default: Option<u64>, max: u64) -> Result<u64> {
    let x = match v.get(key) {
        None | Some(Value::Null) => default.ok_or_else(|| Error::input(format!("config key `{key}` is missing")))?,
        Some(x) => x.as_u64().ok_or_else(|| Error::input(format!("config key `{key}` is {x}, not a whole number")))?,
    };
    if x == 0 || x > max {
        return Err(Error::input(format!("config key `{key}` is {x}; wgdit supports 1..={max}")));
    }
    Ok(x)
}

fn float(v: &Value, key: &str, default: f64) -> Result<f64> {
    let x = match v.get(key) {
        None | Some(Value::Null) => default,
        Some(x) => x.as_f64().ok_or_else(|| Error::input(format!("config key `{key}` is {x}, not a number")))?,
    };
    if !(x.is_finite() && x > 0.0) {
        return Err(Error::input(format!("config key `{key}` is {x}; expected a finite number > 0")));
    }
    Ok(x)
}

fn text_config(t: &Value, top: &Value) -> Result<TextConfig> {
    let hidden = num(t, "hidden_size", None, MAX_HIDDEN)?;
    let heads = num(t, "num_attention_heads", None, MAX_HEADS)?;
    let kv = num(t, "num_key_value_heads", Some(heads), MAX_HEADS)?;
    if hidden % heads != 0 || heads % kv != 0 {
        return Err(Error::input(format!(
            "hidden_size {hidden}, num_attention_heads {heads}, num_key_value_heads {kv}: heads must divide hidden_size and key/value heads must divide heads"
        )));
    }
    let head_dim = hidden / heads;
    // 5.x: rope_parameters {rope_theta, mrope_section}; 4.x: rope_scaling {mrope_section} + rope_theta.
    let rope = t.get("rope_parameters").or_else(|| t.get("rope_scaling")).filter(|r| r.is_object());
    let theta_src = rope.filter(|r| r.get("rope_theta").is_some()).unwrap_or(t);
    let rope_theta = float(theta_src, "rope_theta", 1e6)?;
    let section = rope
        .and_then(|r| r.get("mrope_section"))
        .and_then(Value::as_array)
        .ok_or_else(|| Error::input("no `mrope_section` in rope_parameters / rope_scaling (Qwen2.5-VL uses M-RoPE)"))?;
    let s: Vec<u64> = section.iter().filter_map(Value::as_u64).collect();
    if s.len() != 3 || section.len() != 3 || s.iter().sum::<u64>() * 2 != head_dim {
        return Err(Error::input(format!(
            "mrope_section {section:?} must be three whole numbers summing to head_dim/2 = {}",
            head_dim / 2
        )));
    }
    let tie = t.get("tie_word_embeddings").or_else(|| top.get("tie_word_embeddings")).and_then(Value::as_bool);
    Ok(TextConfig {
        vocab_size: num(t, "vocab_size", None, MAX_VOCAB)? as usize,
        hidden_size: hidden as usize,
        intermediate_size: num(t, "intermediate_size", None, MAX_HIDDEN * 8)? as usize,
        num_hidden_layers: num(t, "num_hidden_layers", None, MAX_LAYERS)? as usize,
        num_attention_heads: heads as usize,
        num_key_value_heads: kv as usize,
        head_dim: head_dim as usize,
        rms_norm_eps: float(t, "rms_norm_eps", 1e-6)?,
        rope_theta,
        mrope_section: [s[0] as usize, s[1] as usize, s[2] as usize],
        tie_word_embeddings: tie.unwrap_or(false),
    })
}

fn vision_config(v: &Value) -> Result<VisionConfig> {
    let hidden = num(v, "hidden_size", Some(1280), MAX_HIDDEN)?;
    let heads = num(v, "num_heads", Some(16), MAX_HEADS)?;
    if hidden % heads != 0 || (hidden / heads) % 4 != 0 {
        return Err(Error::input(format!(
            "vision hidden_size {hidden} / num_heads {heads}: the head size must be a whole multiple of 4"
        )));
    }
    let depth = num(v, "depth", Some(32), MAX_LAYERS)?;
    let full = match v.get("fullatt_block_indexes") {
        None => vec![7, 15, 23, 31],
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| x.as_u64().filter(|&i| i < depth).map(|i| i as usize))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| Error::input(format!("fullatt_block_indexes {a:?}: block indices below depth {depth}")))?,
        Some(x) => return Err(Error::input(format!("fullatt_block_indexes is {x}, not a list"))),
    };
    let merge = num(v, "spatial_merge_size", Some(2), 8)?;
    let patch = num(v, "patch_size", Some(14), 64)?;
    let window = num(v, "window_size", Some(112), 4096)?;
    if window % (patch * merge) != 0 {
        return Err(Error::input(format!(
            "window_size {window} must be a multiple of patch_size × spatial_merge_size = {}",
            patch * merge
        )));
    }
    Ok(VisionConfig {
        depth: depth as usize,
        hidden_size: hidden as usize,
        intermediate_size: num(v, "intermediate_size", Some(3420), MAX_HIDDEN * 8)? as usize,
        num_heads: heads as usize,
        out_hidden_size: num(v, "out_hidden_size", Some(3584), MAX_HIDDEN)? as usize,
        patch_size: patch as usize,
        temporal_patch_size: num(v, "temporal_patch_size", Some(2), 8)? as usize,
        spatial_merge_size: merge as usize,
        window_size: window as usize,
        fullatt_block_indexes: full,
        in_channels: num(v, "in_channels", Some(3), 3).or_else(|_| num(v, "in_chans", Some(3), 3))? as usize,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> String {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/text/text_encoder/config.json");
        std::fs::read_to_string(p).unwrap()
    }

    #[test]
    fn the_nested_5x_config_of_the_fixture_parses() {
        let c = EncoderConfig::from_json_str(&fixture()).unwrap();
        assert_eq!((c.text.hidden_size, c.text.num_attention_heads, c.text.num_key_value_heads), (24, 3, 1));
        assert_eq!((c.text.head_dim, c.text.mrope_section, c.text.rope_theta), (8, [1, 1, 2], 1e6));
        assert!(c.text.tie_word_embeddings);
        assert_eq!((c.vision.depth, c.vision.hidden_size, c.vision.fullatt_block_indexes.clone()), (2, 16, vec![1]));
        assert_eq!(c.tokens, TokenIds { image: 151_655, vision_start: 151_652, vision_end: 151_653 });
    }

    #[test]
    fn the_flat_4x_layout_with_rope_scaling_gives_the_same_config() {
        let v: Value = serde_json::from_str(&fixture()).unwrap();
        let mut flat = v.as_object().unwrap().clone();
        let mut text = v["text_config"].as_object().unwrap().clone();
        let rope = text.remove("rope_parameters").unwrap();
        text.insert("rope_theta".into(), rope["rope_theta"].clone());
        text.insert(
            "rope_scaling".into(),
            serde_json::json!({"type": "mrope", "mrope_section": rope["mrope_section"]}),
        );
        flat.remove("text_config");
        flat.extend(text);
        let a = EncoderConfig::from_json(&v).unwrap();
        let b = EncoderConfig::from_json(&Value::Object(flat)).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn bad_configs_are_named_errors() {
        let v: Value = serde_json::from_str(&fixture()).unwrap();
        let edit = |f: &dyn Fn(&mut Value), needle: &str| {
            let mut c = v.clone();
            f(&mut c);
            let e = EncoderConfig::from_json(&c).unwrap_err().to_string();
            assert!(e.contains(needle), "`{needle}` not in: {e}");
        };
        edit(&|c| c["text_config"]["num_hidden_layers"] = 1_000_000_000u64.into(), "num_hidden_layers` is 1000000000");
        edit(&|c| c["text_config"]["num_key_value_heads"] = 2.into(), "key/value heads must divide heads");
        edit(&|c| c["text_config"]["rope_parameters"]["mrope_section"] = serde_json::json!([1, 1]), "mrope_section");
        edit(&|c| c["text_config"]["rms_norm_eps"] = serde_json::json!(-1.0), "rms_norm_eps");
        edit(&|c| c["vision_config"]["out_hidden_size"] = 8.into(), "out_hidden_size 8");
        edit(&|c| c["vision_config"]["fullatt_block_indexes"] = serde_json::json!([5]), "fullatt_block_indexes");
        edit(&|c| c["text_config"]["vocab_size"] = 100.into(), "not below vocab_size");
        edit(&|c| *c = serde_json::json!([]), "not a JSON object");
    }
}
