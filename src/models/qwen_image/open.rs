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
        let names = self.entries.iter().filter(|e| !e.foreign).map(|e| e.name.clone());
        names.filter(|n| !is_fp8_scale_tensor(n)).collect()
    }
    fn meta(&self, name: &str) -> Option<(DType, Vec<usize>)> {
        self.get(name)?;
        let v = self.view(name).ok()?;
        let dtype = match (v.dtype, fp8_scale(self, name).is_some()) {
            (DType::F8E4M3, true) => DType::F8E4M3Scaled,
            (DType::F8E5M2, true) => DType::F8E5M2Scaled,
            (d, _) => d,
        };
        Some((dtype, v.shape.to_vec()))
    }
    fn bytes(&self, name: &str) -> Result<Cow<'_, [u8]>> {
        let v = self.view(name)?;
        match fp8_scale(self, name) {
            None => Ok(Cow::Borrowed(v.bytes)),
            Some(scale) => Ok(Cow::Owned(scaled_fp8_blocks(name, v.bytes, scale?)?)),
        }
    }
    fn describe(&self) -> String {
        self.path.display().to_string()
    }
    fn unsupported_dtype(&self, name: &str) -> Option<String> {
        let info = self.info(self.get(name)?);
        crate::weights::safetensors::dtype_from_str(&info.dtype).is_none().then(|| info.dtype.clone())
    }
}

/// The per-tensor scale tensors of ComfyUI's "scaled fp8" files (`<module>.scale_weight`, and the
/// `scale_input` of its fp8 matmul path, which a dequantizing reader does not need), and the
/// `scaled_fp8` marker tensor: read with their weights, not model tensors themselves.
fn is_fp8_scale_tensor(name: &str) -> bool {
    name == "scaled_fp8" || name.ends_with(".scale_weight") || name.ends_with(".scale_input")
}

/// The `scale_weight` of an fp8 weight `<module>.weight` of a scaled-fp8 file, if it has one.
fn fp8_scale(ck: &Checkpoint, name: &str) -> Option<Result<f32>> {
    let module = name.strip_suffix(".weight")?;
    let scale = ck.get(&format!("{module}.scale_weight"))?;
    let v = match ck.view_entry(scale) {
        Ok(v) => v,
        Err(e) => return Some(Err(e)),
    };
    let values = v.to_f32();
    Some(match values.as_slice() {
        [s] if s.is_finite() => Ok(*s),
        _ => Err(Error::file(
            &ck.path,
            format!("{module}.scale_weight must be one finite number, got {} values {:?}", values.len(), v.shape),
        )),
    })
}

/// A scaled-fp8 weight as wgdit's GPU blocks: per 32 elements, the f32 scale then the 32 bytes
/// (so that tensors stacked into one param keep their own scales).
fn scaled_fp8_blocks(name: &str, fp8: &[u8], scale: f32) -> Result<Vec<u8>> {
    if fp8.len() % 32 != 0 {
        return Err(Error::input(format!(
            "{name}: a scaled fp8 tensor of {} elements is not whole 32-element blocks",
            fp8.len()
        )));
    }
    let mut out = Vec::with_capacity(fp8.len() / 32 * 36);
    for block in fp8.chunks_exact(32) {
        out.extend_from_slice(&scale.to_le_bytes());
        out.extend_from_slice(block);
    }
    Ok(out)
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

/// Opens the checkpoint (memory-mapped) and its config. A single file with no config (a GGUF or
/// ComfyUI file as downloaded) whose tensors are exactly the released Qwen-Image architecture's
/// is read with that config ([`DitConfig::qwen_image`]); Edit-2511's `zero_cond_t` cannot be seen
/// in the weights, so such a file needs `--config` (or, in `generate`, its pipeline folder's).
pub fn open(model: &Path, config: Option<&Path>) -> Result<(DitConfig, Checkpoint)> {
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
