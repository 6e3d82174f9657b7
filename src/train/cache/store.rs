//! The files of a cache folder:
//!
//! ```text
//! <output>/metadata.jsonl              one line per sample and repeat: {"file", "caption", "image", "bucket"}
//! <output>/samples/<n>.safetensors     latents, prompt_embeds, ref_latents.N; the key in __metadata__
//! <output>/staging/<text key>.safetensors   prompt_embeds between the text and the VAE phase
//! ```
//!
//! Every file is written to a temporary name and renamed, so a killed run leaves whole files only;
//! a sample carries its key (`wgdit_cache_key`), so the next run finds it whatever metadata.jsonl
//! says.

use crate::weights::safetensors::SafeFile;
use crate::weights::writer::{write_safetensors, OutTensor, Source, TempOutput};
use crate::{Error, Result};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// The `__metadata__` key of a sample's cache key.
pub const KEY: &str = "wgdit_cache_key";
pub const SAMPLES: &str = "samples";
pub const STAGING: &str = "staging";

/// An f32 tensor to write.
pub struct Tensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Writes `tensors` (f32) with `metadata` to `path` atomically.
pub fn write(path: &Path, tensors: &[Tensor], metadata: &BTreeMap<String, String>) -> Result<()> {
    let out = TempOutput::new(path, false)?;
    let t: Vec<OutTensor> = tensors
        .iter()
        .map(|t| OutTensor {
            name: t.name.clone(),
            dtype: crate::dtype::DType::F32,
            shape: t.shape.clone(),
            source: Source::Host(std::borrow::Cow::Borrowed(&t.data)),
        })
        .collect();
    write_safetensors(&out.tmp, &t, metadata, &indicatif::ProgressBar::hidden())?;
    out.commit()
}

/// The staged embeddings `prompt_embeds` [S, D] of a text key, if a previous phase wrote them.
pub fn read_staged(path: &Path) -> Result<Option<(Vec<f32>, [usize; 2])>> {
    if !path.is_file() {
        return Ok(None);
    }
    let f = SafeFile::open(path)?;
    let t = f.tensors.iter().find(|t| t.name == "prompt_embeds");
    match t {
        Some(t) if t.shape.len() == 2 && t.dtype == "F32" => Ok(Some((f.view(t)?.to_f32(), [t.shape[0], t.shape[1]]))),
        _ => Err(Error::file(path, "a staged embeddings file without prompt_embeds [S, D] F32 (delete it)")),
    }
}

/// The samples already in `<output>/samples/`: key → file name, and every name in use.
pub struct Existing {
    pub by_key: HashMap<String, String>,
    pub names: std::collections::HashSet<String>,
}

/// Reads the key of every sample file (headers only). Files without a key, or that do not parse,
/// are left alone and their names are not reused.
pub fn scan(output: &Path) -> Result<Existing> {
    let dir = output.join(SAMPLES);
    let mut e = Existing { by_key: HashMap::new(), names: Default::default() };
    if !dir.is_dir() {
        return Ok(e);
    }
    let mut list: Vec<PathBuf> =
        std::fs::read_dir(&dir).map_err(|x| Error::io(&dir, x))?.filter_map(|x| x.ok().map(|x| x.path())).collect();
    list.sort();
    for p in list.into_iter().filter(|p| p.extension().is_some_and(|x| x == "safetensors")) {
        let name = p.file_name().unwrap_or_default().to_string_lossy().into_owned();
        if let Ok(f) = SafeFile::open(&p) {
            if let Some(k) = f.metadata.get(KEY) {
                e.by_key.entry(k.clone()).or_insert_with(|| name.clone());
            }
        }
        e.names.insert(name);
    }
    Ok(e)
}

impl Existing {
    /// The next unused `<n>.safetensors` name (counting up from `*next`).
    pub fn fresh_name(&mut self, next: &mut usize) -> String {
        loop {
            let name = format!("{:06}.safetensors", *next);
            *next += 1;
            if self.names.insert(name.clone()) {
                return name;
            }
        }
    }
}

/// One line of metadata.jsonl.
pub struct Line<'a> {
    pub file: &'a str,
    pub caption: &'a str,
    pub image: &'a str,
    pub bucket: [u32; 2],
    pub repeats: u32,
    /// Edit samples: `--ref-area` and `--condition-area` (`ref_area`, `condition_area` keys;
    /// `train --sample-every` sizes its references by them).
    pub areas: Option<(u64, u64)>,
}

/// Rewrites `<output>/metadata.jsonl` atomically: each sample `repeats` times.
pub fn write_metadata(output: &Path, lines: &[Line]) -> Result<()> {
    let mut text = String::new();
    for l in lines {
        let mut v = serde_json::json!({
            "file": format!("{SAMPLES}/{}", l.file), "caption": l.caption, "image": l.image, "bucket": l.bucket,
        });
        if let Some((ra, ca)) = l.areas {
            v["ref_area"] = ra.into();
            v["condition_area"] = ca.into();
        }
        for _ in 0..l.repeats {
            text += &v.to_string();
            text.push('\n');
        }
    }
    let path = output.join(crate::train::data::METADATA);
    let out = TempOutput::new(&path, false)?;
    std::fs::write(&out.tmp, text).map_err(|e| Error::io(&out.tmp, e))?;
    out.commit()
}
