//! Opening a model for `wgdit forward` / `train` / `bench`: a diffusers folder (config.json +
//! single or sharded safetensors), a pipeline folder (its `transformer/`), or a single
//! .safetensors file (diffusers, ComfyUI-prefixed or merged keys) plus `--config`.

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::models::qwen_image::load::TensorSource;
use crate::models::qwen_image::DitConfig;
use crate::weights::checkpoint::{is_fp8_scale_tensor, looks_like_lora, Checkpoint};
use std::borrow::Cow;
use std::path::{Path, PathBuf};

impl TensorSource for Checkpoint {
    fn names(&self) -> Vec<String> {
        let names = self.entries.iter().filter(|e| !e.foreign).map(|e| e.name.clone());
        names.filter(|n| !is_fp8_scale_tensor(n)).collect()
    }
    fn meta(&self, name: &str) -> Option<(DType, Vec<usize>)> {
        self.model_meta(name)
    }
    fn bytes(&self, name: &str) -> Result<Cow<'_, [u8]>> {
        self.model_bytes(name)
    }
    fn describe(&self) -> String {
        self.path.display().to_string()
    }
    fn unsupported_dtype(&self, name: &str) -> Option<String> {
        let info = self.info(self.get(name)?);
        crate::weights::safetensors::dtype_from_str(&info.dtype).is_none().then(|| info.dtype.clone())
    }
}

/// The config of a model path: `config` if given, else `<dir>/config.json`, else a
/// `config.json` beside a single file.
pub fn config_path(model: &Path, config: Option<&Path>) -> Result<PathBuf> {
    if let Some(c) = config {
        return Ok(c.to_path_buf());
    }
    let dir =
        if model.is_dir() { model.to_path_buf() } else { model.parent().map(Path::to_path_buf).unwrap_or_default() };
    let c = dir.join("config.json");
    if c.is_file() {
        return Ok(c);
    }
    Err(Error::input(format!(
        "no config.json for {}: pass --config <config.json> (a diffusers transformer config)",
        model.display()
    )))
}

/// A diffusers pipeline folder (`model_index.json` beside `transformer/`) stands for its
/// transformer: `wgdit train --model <pipeline>` and `forward --model <pipeline>` read
/// `<pipeline>/transformer`.
pub fn transformer_of(model: &Path) -> Option<PathBuf> {
    let t = model.join("transformer");
    (model.join("model_index.json").is_file() && t.is_dir()).then_some(t)
}

/// Opens the checkpoint (memory-mapped) and its config. A single file with no config (a GGUF or
/// ComfyUI file as downloaded) whose tensors are exactly the released Qwen-Image architecture's
/// is read with that config ([`DitConfig::qwen_image`]); Edit-2511's `zero_cond_t` cannot be seen
/// in the weights, so such a file needs `--config` (or, in `generate`, its pipeline folder's).
pub fn open(model: &Path, config: Option<&Path>) -> Result<(DitConfig, Checkpoint)> {
    let transformer = transformer_of(model);
    let model = transformer.as_deref().unwrap_or(model);
    let cfg_path = config_path(model, config);
    let ckpt = Checkpoint::open(model)?;
    if looks_like_lora(ckpt.entries.iter().map(|e| e.key.as_str())) {
        return Err(Error::file(model, "this is a LoRA file, not a model checkpoint: pass it with --lora"));
    }
    if let Some(arch) = ckpt.metadata.get("general.architecture").filter(|a| a.as_str() != "qwen_image") {
        return Err(Error::file(
            model,
            format!("a GGUF file of architecture `{arch}`, not a Qwen-Image DiT (`qwen_image`)"),
        ));
    }
    let cfg = match cfg_path {
        Ok(p) => DitConfig::from_file(&p)?,
        Err(e) if ckpt.is_folder => return Err(e),
        Err(e) => {
            let real = DitConfig::qwen_image();
            if crate::models::qwen_image::load::validate(&real, &ckpt).is_err() {
                return Err(e);
            }
            real
        }
    };
    Ok((cfg, ckpt))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pipeline_folder_opens_as_its_transformer() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pipeline/t2i");
        let (cfg, ckpt) = open(&root, None).unwrap();
        let (want, _) = open(&root.join("transformer"), None).unwrap();
        assert_eq!(format!("{cfg:?}"), format!("{want:?}"));
        assert!(ckpt.path.starts_with(root.join("transformer")), "{}", ckpt.path.display());
        // A folder without model_index.json is read as it is (here: no config, a clear error).
        assert!(open(&root.join("scheduler"), None).is_err());
    }
}
