//! A base checkpoint: one safetensors or GGUF file, or a diffusers folder (single or sharded with
//! its `.index.json`), memory-mapped, with key prefixes normalised to canonical diffusers names.

use super::safetensors::{SafeFile, TensorInfo, TensorView};
use crate::dtype::DType;
use crate::{Error, Result};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// diffusers' weight file names inside a model folder.
pub const SINGLE_NAME: &str = "diffusion_pytorch_model.safetensors";
pub const INDEX_NAME: &str = "diffusion_pytorch_model.safetensors.index.json";

/// The key prefixes of ComfyUI single-file checkpoints, longest first (a full checkpoint's
/// `model.diffusion_model.`, a bare diffusion model's `diffusion_model.`).
pub const COMFY_PREFIXES: [&str; 2] = ["model.diffusion_model.", "diffusion_model."];

/// The prefix ComfyUI uses for a bare diffusion model (what `--format comfyui` writes).
pub const COMFY_PREFIX: &str = "diffusion_model.";

/// One tensor of the checkpoint.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The key as stored in the file.
    pub key: String,
    /// The canonical diffusers name (prefix removed); equal to `key` for foreign keys.
    pub name: String,
    /// A key outside the detected prefix (e.g. a VAE tensor in a ComfyUI full checkpoint).
    pub foreign: bool,
    pub file: usize,
    pub tensor: usize,
}

pub struct Checkpoint {
    /// What the user passed: a file or a folder.
    pub path: PathBuf,
    pub is_folder: bool,
    pub files: Vec<SafeFile>,
    /// The key prefix stripped from canonical names ("" for diffusers names).
    pub prefix: String,
    /// All tensors in storage order (file by file, ascending offsets).
    pub entries: Vec<Entry>,
    by_name: HashMap<String, usize>,
    /// `__metadata__` of the first file.
    pub metadata: BTreeMap<String, String>,
    /// `config.json` next to the weights (folders only).
    pub config: Option<PathBuf>,
}

impl Checkpoint {
    /// Opens a `.safetensors` file or a diffusers model folder.
    pub fn open(path: &Path) -> Result<Checkpoint> {
        Checkpoint::open_named(path, SINGLE_NAME, INDEX_NAME)
    }

    /// [`Checkpoint::open`] with a folder's own file names (transformers models use
    /// `model.safetensors` and `model.safetensors.index.json`).
    pub fn open_named(path: &Path, single: &str, index: &str) -> Result<Checkpoint> {
        let (files, is_folder) = if path.is_dir() {
            (open_folder(path, single, index)?, true)
        } else {
            (vec![SafeFile::open(path)?], false)
        };
        let config = Some(path.join("config.json")).filter(|p| is_folder && p.is_file());
        Checkpoint::from_files(path, is_folder, files, config)
    }

    /// The checkpoint of files already opened (`path` is what the user passed): prefixes
    /// detected, names indexed, duplicates refused.
    pub fn from_files(
        path: &Path,
        is_folder: bool,
        files: Vec<SafeFile>,
        config: Option<PathBuf>,
    ) -> Result<Checkpoint> {
        let prefix = detect_prefix(files.iter().flat_map(|f| f.tensors.iter().map(|t| t.name.as_str())));
        let mut entries = Vec::new();
        let mut by_name = HashMap::new();
        for (fi, f) in files.iter().enumerate() {
            for (ti, t) in f.tensors.iter().enumerate() {
                let (name, foreign) = match t.name.strip_prefix(prefix) {
                    Some(n) => (n.to_string(), false),
                    None => (t.name.clone(), !prefix.is_empty()),
                };
                if by_name.insert(name.clone(), entries.len()).is_some() {
                    return Err(Error::file(&f.path, format!("tensor {name} appears twice in {}", path.display())));
                }
                entries.push(Entry { key: t.name.clone(), name, foreign, file: fi, tensor: ti });
            }
        }
        let metadata = files.first().map(|f| f.metadata.clone()).unwrap_or_default();
        Ok(Checkpoint {
            path: path.to_path_buf(),
            is_folder,
            files,
            prefix: prefix.to_string(),
            entries,
            by_name,
            metadata,
            config,
        })
    }

    /// `general.architecture` of a GGUF checkpoint (`qwen_image` for city96's Qwen-Image files);
    /// None for safetensors and for GGUF files without one (sd.cpp-style files).
    pub fn architecture(&self) -> Option<&str> {
        self.files.first().and_then(|f| f.architecture())
    }

    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.by_name.get(name).map(|&i| &self.entries[i])
    }

    pub fn info(&self, e: &Entry) -> &TensorInfo {
        &self.files[e.file].tensors[e.tensor]
    }

    /// A typed view of a tensor by canonical name.
    pub fn view(&self, name: &str) -> Result<TensorView<'_>> {
        let e = self.get(name).ok_or_else(|| {
            Error::file(&self.path, format!("tensor {name} missing (is this a Qwen-Image DiT checkpoint?)"))
        })?;
        self.view_entry(e)
    }

    /// A typed view of an entry; its `name` is the canonical name (prefix removed).
    pub fn view_entry<'a>(&'a self, e: &'a Entry) -> Result<TensorView<'a>> {
        let f = &self.files[e.file];
        Ok(TensorView { name: &e.name, ..f.view(&f.tensors[e.tensor])? })
    }

    /// Every DiT tensor (foreign keys excluded) as a view of the map, in storage order: what a
    /// loader uploads without widening or copying.
    pub fn views(&self) -> impl Iterator<Item = Result<TensorView<'_>>> {
        self.entries.iter().filter(|e| !e.foreign).map(|e| self.view_entry(e))
    }

    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.data_len() as u64).sum()
    }

    /// Dtype and shape of a tensor as a model reads it: an fp8 weight with a `scale_weight`
    /// (ComfyUI's "scaled fp8") is [`DType::F8E4M3Scaled`] / [`DType::F8E5M2Scaled`].
    pub fn model_meta(&self, name: &str) -> Option<(DType, Vec<usize>)> {
        let v = self.view(name).ok()?;
        let dtype = match (v.dtype, self.fp8_scale(name).is_some()) {
            (DType::F8E4M3, true) => DType::F8E4M3Scaled,
            (DType::F8E5M2, true) => DType::F8E5M2Scaled,
            (d, _) => d,
        };
        Some((dtype, v.shape.to_vec()))
    }

    /// The bytes of a tensor in its [`Checkpoint::model_meta`] dtype: borrowed from the map, or
    /// (scaled fp8) the scale-prefixed blocks.
    pub fn model_bytes(&self, name: &str) -> Result<Cow<'_, [u8]>> {
        let v = self.view(name)?;
        match self.fp8_scale(name) {
            None => Ok(Cow::Borrowed(v.bytes)),
            Some(_) if !matches!(v.dtype, DType::F8E4M3 | DType::F8E5M2) => Err(Error::file(
                &self.path,
                format!("{name} is {} but has a scale_weight: only fp8 weights are scaled", v.dtype.name()),
            )),
            Some(scale) => Ok(Cow::Owned(scaled_fp8_blocks(name, v.dtype, v.bytes, scale?)?)),
        }
    }

    /// The `scale_weight` of an fp8 weight `<module>.weight` of a scaled-fp8 file, if it has one.
    pub fn fp8_scale(&self, name: &str) -> Option<Result<f32>> {
        let module = name.strip_suffix(".weight")?;
        let scale = self.get(&format!("{module}.scale_weight"))?;
        let values = match self.view_entry(scale) {
            Ok(v) => (v.to_f32(), v.shape.to_vec()),
            Err(e) => return Some(Err(e)),
        };
        Some(match values.0.as_slice() {
            [s] if s.is_finite() => Ok(*s),
            v => Err(Error::file(
                &self.path,
                format!("{module}.scale_weight must be one finite number, got {} values {:?}", v.len(), values.1),
            )),
        })
    }
}

/// The per-tensor scale tensors of ComfyUI's "scaled fp8" files (`<module>.scale_weight`, and the
/// `scale_input` of its fp8 matmul path, which a dequantizing reader does not need) and the
/// `scaled_fp8` marker: read with their weights, not model tensors themselves.
pub fn is_fp8_scale_tensor(name: &str) -> bool {
    name == "scaled_fp8" || name.ends_with(".scale_weight") || name.ends_with(".scale_input")
}

/// A scaled-fp8 weight as wgdit's GPU blocks (per 32 elements the f32 scale, then the bytes), so
/// that tensors stacked into one param keep their own scales.
fn scaled_fp8_blocks(name: &str, fp8: DType, bytes: &[u8], scale: f32) -> Result<Vec<u8>> {
    if bytes.len() % 32 != 0 {
        return Err(Error::input(format!(
            "{name}: a scaled fp8 tensor of {} elements is not whole 32-element blocks",
            bytes.len()
        )));
    }
    Ok(crate::dtype::scaled_blocks(fp8, bytes, scale))
}

/// Whether a set of keys looks like a LoRA file rather than a base checkpoint.
pub fn looks_like_lora<'a>(keys: impl IntoIterator<Item = &'a str>) -> bool {
    keys.into_iter().any(|k| k.starts_with("lora_unet_") || k.contains(".lora_") || k.ends_with(".alpha"))
}

/// The ComfyUI prefix shared by the model's keys, or "" for diffusers names.
fn detect_prefix<'a>(keys: impl Iterator<Item = &'a str> + Clone) -> &'static str {
    for p in COMFY_PREFIXES {
        if keys.clone().any(|k| k.starts_with(p)) {
            return p;
        }
    }
    ""
}

/// The weight files of a diffusers folder: the shards listed by the index, or the single file.
fn open_folder(dir: &Path, single_name: &str, index_name: &str) -> Result<Vec<SafeFile>> {
    let index = dir.join(index_name);
    if index.is_file() {
        return open_sharded(dir, &index);
    }
    let single = dir.join(single_name);
    if single.is_file() {
        return Ok(vec![SafeFile::open(&single)?]);
    }
    Err(Error::file(
        dir,
        format!("no {single_name} or {index_name} here (for a pipeline folder, pass its component subfolder)"),
    ))
}

fn open_sharded(dir: &Path, index: &Path) -> Result<Vec<SafeFile>> {
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    let (map, shard_names) = parse_weight_map(index, &text)?;
    let files: Vec<SafeFile> = shard_names.iter().map(|s| SafeFile::open(&dir.join(s))).collect::<Result<_>>()?;
    let shards: Vec<(&Path, &[TensorInfo])> = files.iter().map(|f| (f.path.as_path(), &f.tensors[..])).collect();
    check_weight_map(index, &map, &shard_names, &shards)?;
    Ok(files)
}

/// The `weight_map` of a sharded index (tensor → shard file name) and its shard names, sorted.
pub fn parse_weight_map(index: &Path, text: &str) -> Result<(BTreeMap<String, String>, Vec<String>)> {
    let json: serde_json::Value =
        serde_json::from_str(text).map_err(|e| Error::file(index, format!("bad index JSON: {e}")))?;
    let map =
        json.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| Error::file(index, "no weight_map object"))?;
    let mut weight_map = BTreeMap::new();
    let mut shard_names: Vec<String> = Vec::new();
    for (k, v) in map {
        let s = v.as_str().ok_or_else(|| Error::file(index, format!("weight_map[{k}] is not a file name")))?;
        if s.contains('/') || s.contains("..") {
            return Err(Error::file(index, format!("weight_map[{k}] = {s} is not a file in this folder")));
        }
        if !shard_names.iter().any(|n| n == s) {
            shard_names.push(s.to_string());
        }
        weight_map.insert(k.clone(), s.to_string());
    }
    shard_names.sort_unstable();
    Ok((weight_map, shard_names))
}

/// Every key of the index must be in the shard the index names, and every tensor indexed.
/// `shards` are (path, tensors) of the files `shard_names` name, in that order.
pub fn check_weight_map(
    index: &Path,
    map: &BTreeMap<String, String>,
    shard_names: &[String],
    shards: &[(&Path, &[TensorInfo])],
) -> Result<()> {
    for (k, v) in map {
        let (path, tensors) =
            shards[shard_names.iter().position(|s| s == v).expect("cannot fail: collected by parse_weight_map")];
        if !tensors.iter().any(|t| &t.name == k) {
            return Err(Error::file(
                index,
                format!("weight_map says {k} is in {} but that file has no such tensor", path.display()),
            ));
        }
    }
    let listed: usize = shards.iter().map(|(_, t)| t.len()).sum();
    if listed != map.len() {
        return Err(Error::file(index, format!("the shards hold {listed} tensors but weight_map lists {}", map.len())));
    }
    Ok(())
}
