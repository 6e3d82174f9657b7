//! The text encoder's checkpoint: `text_encoder/model.safetensors` or a sharded
//! `model.safetensors.index.json` (as the Qwen-Image repos ship it), keys in either layout
//! ([`super::names`]), bf16 / f16 / f32. Tensors are read under their canonical names; the
//! embedding table is never uploaded: the rows of a prompt's tokens are gathered on the host.

use super::config::EncoderConfig;
use super::names;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::models::qwen_image::load::TensorSource;
use crate::weights::checkpoint::Checkpoint;
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

pub const SINGLE_NAME: &str = "model.safetensors";
pub const INDEX_NAME: &str = "model.safetensors.index.json";

/// An opened text-encoder checkpoint with its canonical-name index.
pub struct EncoderWeights {
    pub ckpt: Checkpoint,
    /// canonical name → stored key
    keys: HashMap<String, String>,
    /// Vision tensors the checkpoint lacks (empty for a full Qwen2.5-VL checkpoint).
    pub vision_missing: Vec<String>,
}

impl EncoderWeights {
    /// Opens `dir` (a `text_encoder/` folder or one safetensors file) and checks every language
    /// model tensor the config needs: present, readable dtype, right shape. All problems are
    /// reported in one error.
    pub fn open(dir: &Path, cfg: &EncoderConfig) -> Result<EncoderWeights> {
        let ckpt = Checkpoint::open_named(dir, SINGLE_NAME, INDEX_NAME)?;
        EncoderWeights::from_checkpoint(ckpt, cfg)
    }

    pub fn from_checkpoint(ckpt: Checkpoint, cfg: &EncoderConfig) -> Result<EncoderWeights> {
        let mut keys = HashMap::new();
        let (mut missing, mut bad) = (Vec::new(), Vec::new());
        for (name, shape) in names::text_tensors(cfg) {
            let Some(key) = names::candidates(&name).into_iter().find(|k| ckpt.get(k).is_some()) else {
                missing.push(name);
                continue;
            };
            let info = ckpt.info(ckpt.get(&key).expect("cannot fail: found"));
            match readable(&info.dtype) {
                None => bad.push(format!("{key}: dtype {} ({READABLE})", info.dtype)),
                Some(_) if info.shape != shape => {
                    bad.push(format!("{key}: shape {:?}, expected {shape:?}", info.shape))
                }
                Some(_) => {}
            }
            keys.insert(name, key);
        }
        // The vision tower's tensors: indexed when present (a text-only checkpoint still encodes
        // prompts; images then fail with the missing names), shapes checked.
        let mut vision_missing = Vec::new();
        for (name, shape) in super::vision::vision_tensors(&cfg.vision) {
            let Some(key) = names::candidates(&name).into_iter().find(|k| ckpt.get(k).is_some()) else {
                vision_missing.push(name);
                continue;
            };
            let info = ckpt.info(ckpt.get(&key).expect("cannot fail: found"));
            if readable(&info.dtype).is_none() {
                bad.push(format!("{key}: dtype {} ({READABLE})", info.dtype));
            } else if info.shape != shape {
                bad.push(format!("{key}: shape {:?}, expected {shape:?}", info.shape));
            }
            keys.insert(name, key);
        }
        if missing.is_empty() && bad.is_empty() {
            return Ok(EncoderWeights { ckpt, keys, vision_missing });
        }
        let list = |v: &[String]| {
            let head: Vec<&str> = v.iter().take(6).map(String::as_str).collect();
            format!(
                "{}{}",
                head.join(", "),
                if v.len() > 6 { format!(", … ({} in all)", v.len()) } else { String::new() }
            )
        };
        let mut msg = String::from("not the text encoder this config describes:");
        if !missing.is_empty() {
            msg += &format!("\n  missing: {}", list(&missing));
        }
        if !bad.is_empty() {
            msg += &format!("\n  wrong: {}", list(&bad));
        }
        msg += "\n  (expected Qwen2.5-VL keys, `model.layers.N.*` or `model.language_model.layers.N.*`, matching text_encoder/config.json)";
        Err(Error::file(&ckpt.path, msg))
    }

    /// The embedding rows of `ids` as f32 [ids.len(), hidden] (`embed_tokens(input_ids)`).
    pub fn embed_rows(&self, ids: &[u32], cfg: &EncoderConfig) -> Result<Vec<f32>> {
        let d = cfg.text.hidden_size;
        let key = &self.keys["model.embed_tokens.weight"];
        let view = self.ckpt.view(key)?;
        let scale = self.ckpt.fp8_scale(key).transpose()?.unwrap_or(1.0);
        let row_bytes = view.dtype.bytes(d);
        let mut out = Vec::with_capacity(ids.len() * d);
        for &id in ids {
            if id as usize >= cfg.text.vocab_size {
                return Err(Error::input(format!(
                    "token id {id} is outside the embedding table ({} rows)",
                    cfg.text.vocab_size
                )));
            }
            let at = id as usize * row_bytes;
            out.extend(view.dtype.decode(&view.bytes[at..at + row_bytes]).into_iter().map(|v| v * scale));
        }
        Ok(out)
    }
}

/// The text encoder reads float and fp8 safetensors (ComfyUI's `qwen_2.5_vl_7b_fp8_scaled`); its
/// GGUF releases use llama.cpp's own tensor names, which it does not map.
const READABLE: &str = "the text encoder reads BF16, F16, F32 and F8_E4M3/F8_E5M2, scaled or not";

fn readable(dtype: &str) -> Option<DType> {
    crate::weights::safetensors::dtype_from_str(dtype).filter(|d| !d.is_blocked())
}

impl TensorSource for EncoderWeights {
    fn names(&self) -> Vec<String> {
        self.keys.keys().cloned().collect()
    }
    fn meta(&self, name: &str) -> Option<(DType, Vec<usize>)> {
        self.ckpt.model_meta(self.keys.get(name)?)
    }
    fn bytes(&self, name: &str) -> Result<Cow<'_, [u8]>> {
        let key =
            self.keys.get(name).ok_or_else(|| Error::input(format!("tensor {name} missing from the text encoder")))?;
        self.ckpt.model_bytes(key)
    }
    fn describe(&self) -> String {
        self.ckpt.path.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::unpacked_fixture;

    /// A tensor of a reference case as f32 (f32 or i64 stored).
    pub(crate) fn case_tensor(case: &str, name: &str) -> Vec<f32> {
        let dir = unpacked_fixture("text/cases").unwrap();
        let bytes = std::fs::read(dir.join(format!("{case}.safetensors"))).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let t = st.tensor(name).unwrap();
        match t.dtype() {
            safetensors::Dtype::F32 => bytemuck::pod_collect_to_vec(t.data()),
            safetensors::Dtype::I64 => {
                t.data().chunks(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f32).collect()
            }
            d => panic!("{name}: {d:?}"),
        }
    }

    fn fixture_weights() -> (EncoderWeights, EncoderConfig) {
        let dir = unpacked_fixture("text/text_encoder").unwrap();
        let cfg = EncoderConfig::from_json_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
        (EncoderWeights::open(&dir, &cfg).unwrap(), cfg)
    }

    #[test]
    fn the_embedding_rows_of_the_prompt_equal_transformers_inputs_embeds() {
        let (w, cfg) = fixture_weights();
        let ids: Vec<u32> = case_tensor("t2i", "input_ids").iter().map(|&x| x as u32).collect();
        let got = w.embed_rows(&ids, &cfg).unwrap();
        assert_eq!(got, case_tensor("t2i", "lm.inputs_embeds"));
        let e = w.embed_rows(&[152_064], &cfg).unwrap_err().to_string();
        assert!(e.contains("outside the embedding table"), "{e}");
    }

    #[test]
    fn the_new_key_layout_loads_and_missing_or_misshaped_tensors_are_listed() {
        let (w, cfg) = fixture_weights();
        let rename = |k: &str| {
            k.strip_prefix("model.")
                .map_or_else(|| k.replacen("visual.", "model.visual.", 1), |r| format!("model.language_model.{r}"))
        };
        let mut out = Vec::new();
        for e in &w.ckpt.entries {
            let v = w.ckpt.view_entry(e).unwrap();
            let dt = match v.dtype {
                DType::BF16 => safetensors::Dtype::BF16,
                DType::F16 => safetensors::Dtype::F16,
                _ => safetensors::Dtype::F32,
            };
            out.push((rename(&e.key), safetensors::tensor::TensorView::new(dt, v.shape.to_vec(), v.bytes).unwrap()));
        }
        let dir = crate::testing::TempDir::new("te-layout");
        let file = dir.path().join("model.safetensors");
        std::fs::write(&file, safetensors::serialize(out, None).unwrap()).unwrap();
        let new = EncoderWeights::open(&file, &cfg).unwrap();
        assert_eq!(new.embed_rows(&[7, 151_655], &cfg).unwrap(), w.embed_rows(&[7, 151_655], &cfg).unwrap());
        let mut small = cfg.clone();
        small.text.num_hidden_layers = 3;
        small.text.intermediate_size = 41;
        let e = EncoderWeights::open(&file, &small).err().unwrap().to_string();
        assert!(e.contains("missing: model.layers.2.input_layernorm.weight"), "{e}");
        assert!(e.contains("mlp.gate_proj.weight: shape [40, 24], expected [41, 24]"), "{e}");
    }
}
