//! Opening a model for `wgdit forward` / `bench`: a diffusers folder (config.json + single or
//! sharded safetensors), or a single .safetensors file (diffusers, ComfyUI-prefixed or merged
//! keys) plus `--config`.

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::models::qwen_image::load::TensorSource;
use crate::models::qwen_image::DitConfig;
use crate::weights::checkpoint::{looks_like_lora, Checkpoint};
use std::borrow::Cow;
use std::path::{Path, PathBuf};

impl TensorSource for Checkpoint {
    fn names(&self) -> Vec<String> {
        self.entries.iter().filter(|e| !e.foreign).map(|e| e.name.clone()).collect()
    }
    fn meta(&self, name: &str) -> Option<(DType, Vec<usize>)> {
        self.get(name)?;
        self.view(name).ok().map(|v| (v.dtype, v.shape.to_vec()))
    }
    fn bytes(&self, name: &str) -> Result<Cow<'_, [u8]>> {
        Ok(Cow::Borrowed(self.view(name)?.bytes))
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

/// Opens the checkpoint (memory-mapped) and its config.
pub fn open(model: &Path, config: Option<&Path>) -> Result<(DitConfig, Checkpoint)> {
    let cfg = DitConfig::from_file(&config_path(model, config)?)?;
    let ckpt = Checkpoint::open(model)?;
    if looks_like_lora(ckpt.entries.iter().map(|e| e.key.as_str())) {
        return Err(Error::file(model, "this is a LoRA file, not a model checkpoint: pass it with --lora"));
    }
    Ok((cfg, ckpt))
}
