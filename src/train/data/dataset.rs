//! The dataset of `wgdit train --data <dir>`: `metadata.jsonl` lists one safetensors sample per
//! line (`{"file": "a.safetensors", "caption": ...}`; other keys and blank lines are ignored).
//! A sample holds
//! - `latents` [C, h, w]: normalised VAE latents of the target (C = in_channels / patch², h and w
//!   multiples of the patch size);
//! - `prompt_embeds` [S_txt, joint_attention_dim];
//! - optional `prompt_mask` [S_txt] (nonzero = valid; any integer, bool or float dtype);
//! - optional `ref_latents.0`, `ref_latents.1`, ... [C, h_k, w_k] (edit references, numbered
//!   without gaps);
//!
//! each f32, f16 or bf16. [`Dataset::open`] validates every sample before training and reports
//! every bad one in a single error; samples are read lazily (memory-mapped) by [`Dataset::load`].
//! [`Dataset::collate`] packs a batch for the model.
//! Batching is in [`super::batch`], the built-in synthetic datasets in [`super::synthetic`], latent
//! packing in `models::qwen_image::latents`.

use crate::models::qwen_image::latents::pack;
use crate::models::qwen_image::DitConfig;
use crate::weights::safetensors::{dtype_from_str, SafeFile, TensorInfo};
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const METADATA: &str = "metadata.jsonl";

/// The validated shapes of one sample.
#[derive(Clone, Debug, PartialEq)]
pub struct SampleInfo {
    /// The `file` entry of metadata.jsonl.
    pub name: String,
    pub path: PathBuf,
    /// Target latents [C, h, w].
    pub latents: [usize; 3],
    /// S_txt.
    pub txt_len: usize,
    pub has_mask: bool,
    /// Reference latents [C, h_k, w_k], in order.
    pub refs: Vec<[usize; 3]>,
}

impl SampleInfo {
    /// Samples with equal buckets can share a batch: the same target and reference shapes;
    /// prompts of different lengths are padded to the batch's longest, with a mask.
    pub fn bucket(&self) -> Bucket {
        Bucket { latents: self.latents, refs: self.refs.clone() }
    }
    /// diffusers `img_shapes` of this sample: (frames, h/p, w/p) of the target, then of each reference.
    pub fn img_shapes(&self, patch: usize) -> Vec<(usize, usize, usize)> {
        std::iter::once(&self.latents).chain(&self.refs).map(|s| (1, s[1] / patch, s[2] / patch)).collect()
    }
}

/// The image shapes a batch shares.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bucket {
    pub latents: [usize; 3],
    pub refs: Vec<[usize; 3]>,
}

/// The full shape of a collated batch (one training plan each): its bucket, the padded prompt
/// length and the number of samples.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShapeKey {
    pub bucket: Bucket,
    pub txt_len: usize,
    pub batch: usize,
}

/// One sample decoded to f32.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// [C, h, w]
    pub latents: Vec<f32>,
    /// [S_txt, joint_attention_dim]
    pub prompt_embeds: Vec<f32>,
    /// [S_txt], true = valid (all true when the file has no mask)
    pub prompt_mask: Vec<bool>,
    /// [C, h_k, w_k] each
    pub refs: Vec<Vec<f32>>,
}

/// A validated dataset folder.
#[derive(Clone, Debug)]
pub struct Dataset {
    pub root: PathBuf,
    pub samples: Vec<SampleInfo>,
    pub patch_size: usize,
}

impl Dataset {
    /// Reads `<dir>/metadata.jsonl` and validates every sample against `cfg`; one error lists
    /// every bad line and sample with its reason.
    pub fn open(dir: &Path, cfg: &DitConfig) -> Result<Dataset> {
        let meta = dir.join(METADATA);
        let text = std::fs::read_to_string(&meta).map_err(|e| Error::io(&meta, e))?;
        let mut samples = Vec::new();
        let mut bad = Vec::new();
        for (line_no, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let name = match file_entry(line) {
                Ok(n) => n,
                Err(m) => {
                    bad.push(format!("line {}: {m}", line_no + 1));
                    continue;
                }
            };
            match inspect(dir, &name, cfg) {
                Ok(s) => samples.push(s),
                Err(m) => bad.push(format!("{name} (line {}): {m}", line_no + 1)),
            }
        }
        if !bad.is_empty() {
            let n = bad.len();
            return Err(Error::file(meta, format!("{n} bad sample(s):\n  {}", bad.join("\n  "))));
        }
        if samples.is_empty() {
            return Err(Error::file(meta, "no samples: add one {\"file\": \"x.safetensors\"} line per sample"));
        }
        Ok(Dataset { root: dir.to_path_buf(), samples, patch_size: cfg.patch_size })
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Reads sample `i` (memory-mapped, decoded to f32; the map is dropped on return).
    pub fn load(&self, i: usize) -> Result<Sample> {
        let info = &self.samples[i];
        decode(&SafeFile::open(&info.path)?, info)
    }

    /// The samples of each bucket, in dataset order (buckets in the order their first sample
    /// appears).
    pub fn groups(&self) -> Vec<Vec<usize>> {
        let mut order: Vec<Bucket> = Vec::new();
        let mut by_key: BTreeMap<Bucket, Vec<usize>> = BTreeMap::new();
        for (i, s) in self.samples.iter().enumerate() {
            let k = s.bucket();
            if !by_key.contains_key(&k) {
                order.push(k.clone());
            }
            by_key.entry(k).or_default().push(i);
        }
        order.into_iter().map(|k| by_key.remove(&k).expect("cannot fail: key inserted above")).collect()
    }
}

/// A sample's tensors decoded to f32, by the shapes `inspect` validated.
pub(crate) fn decode(f: &SafeFile, info: &SampleInfo) -> Result<Sample> {
    let get = |name: &str| -> Result<Vec<f32>> {
        let t = find(f, name).ok_or_else(|| Error::file(&info.path, format!("tensor {name} disappeared")))?;
        Ok(f.view(t)?.to_f32())
    };
    let latents = get("latents")?;
    let prompt_embeds = get("prompt_embeds")?;
    let prompt_mask = match find(f, "prompt_mask") {
        Some(t) => decode_mask(f.bytes(t), &t.dtype).ok_or_else(|| Error::file(&info.path, "bad prompt_mask"))?,
        None => vec![true; info.txt_len],
    };
    let refs = (0..info.refs.len()).map(|k| get(&format!("ref_latents.{k}"))).collect::<Result<_>>()?;
    Ok(Sample { latents, prompt_embeds, prompt_mask, refs })
}

/// The `file` value of one metadata line.
/// The `ref_area` / `condition_area` that `wgdit cache` recorded on the edit samples of
/// `<dir>/metadata.jsonl`, when every line that has them agrees (`None`: no line has them, e.g.
/// a text-to-image cache or pre-made tensors, or they differ).
pub fn cache_areas(dir: &Path) -> Result<Option<(u64, u64)>> {
    let meta = dir.join(METADATA);
    let text = std::fs::read_to_string(&meta).map_err(|e| Error::io(&meta, e))?;
    Ok(areas_of(&text))
}

/// [`cache_areas`] of metadata.jsonl's text (the fuzz entry point): unreadable lines are left to
/// `Dataset::open`, which reports them.
pub fn areas_of(text: &str) -> Option<(u64, u64)> {
    let mut found: Option<(u64, u64)> = None;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let area = |k: &str| v.get(k).and_then(|x| x.as_u64());
        let (Some(ra), Some(ca)) = (area("ref_area"), area("condition_area")) else { continue };
        match found {
            Some(f) if f != (ra, ca) => return None,
            _ => found = Some((ra, ca)),
        }
    }
    found
}

pub(crate) fn file_entry(line: &str) -> std::result::Result<String, String> {
    let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("not a JSON object: {e}"))?;
    let file = v.get("file").ok_or("no \"file\" key")?;
    file.as_str().map(str::to_string).ok_or_else(|| "\"file\" is not a string".to_string())
}

fn find<'a>(f: &'a SafeFile, name: &str) -> Option<&'a TensorInfo> {
    f.tensors.iter().find(|t| t.name == name)
}

/// Validates one sample file; the message says what is wrong.
fn inspect(dir: &Path, name: &str, cfg: &DitConfig) -> std::result::Result<SampleInfo, String> {
    let path = dir.join(name);
    if !path.is_file() {
        return Err(format!("file not found: {}", path.display()));
    }
    let f = SafeFile::open(&path).map_err(|e| format!("bad header: {e}"))?;
    inspect_file(&f, name, cfg)
}

/// Validates one sample file already opened (its `path` is the sample's).
pub(crate) fn inspect_file(f: &SafeFile, name: &str, cfg: &DitConfig) -> std::result::Result<SampleInfo, String> {
    let path = f.path.clone();
    let p = cfg.patch_size;
    let c = cfg.in_channels / (p * p);
    let latents = latent_shape(f, "latents", c, p)?.ok_or("missing tensor `latents`")?;
    let emb = find(f, "prompt_embeds").ok_or("missing tensor `prompt_embeds`")?;
    float_dtype(emb)?;
    if emb.shape.len() != 2 || emb.shape[0] == 0 || emb.shape[1] != cfg.joint_attention_dim {
        return Err(format!(
            "prompt_embeds has shape {:?}; expected [S_txt > 0, {}] (joint_attention_dim)",
            emb.shape, cfg.joint_attention_dim
        ));
    }
    let txt_len = emb.shape[0];
    let has_mask = match find(f, "prompt_mask") {
        None => false,
        Some(m) if m.shape != [txt_len] => {
            return Err(format!(
                "prompt_mask has shape {:?}; expected [{txt_len}] (the length of prompt_embeds)",
                m.shape
            ))
        }
        Some(m) if mask_width(&m.dtype).is_none() => {
            return Err(format!("prompt_mask has unsupported dtype {}", m.dtype))
        }
        Some(_) => true,
    };
    let refs = ref_shapes(f, c, p)?;
    Ok(SampleInfo { name: name.to_string(), path, latents, txt_len, has_mask, refs })
}

fn float_dtype(t: &TensorInfo) -> std::result::Result<(), String> {
    match dtype_from_str(&t.dtype) {
        Some(_) => Ok(()),
        None => Err(format!("{} has unsupported dtype {} (use F32, F16 or BF16)", t.name, t.dtype)),
    }
}

/// The [C, h, w] shape of a latent tensor, or None when absent.
fn latent_shape(f: &SafeFile, name: &str, c: usize, p: usize) -> std::result::Result<Option<[usize; 3]>, String> {
    let Some(t) = find(f, name) else { return Ok(None) };
    float_dtype(t)?;
    let s = &t.shape;
    if s.len() != 3 {
        return Err(format!("{name} has rank {} (shape {s:?}); expected [C, h, w]", s.len()));
    }
    if s[0] != c {
        return Err(format!("{name} has {} channels; expected {c} (in_channels / patch_size²)", s[0]));
    }
    if s[1] == 0 || s[2] == 0 || s[1] % p != 0 || s[2] % p != 0 {
        return Err(format!("{name} is {}×{}; h and w must be nonzero multiples of the patch size {p}", s[1], s[2]));
    }
    Ok(Some([s[0], s[1], s[2]]))
}

/// `ref_latents.0..n`: numbered without gaps.
fn ref_shapes(f: &SafeFile, c: usize, p: usize) -> std::result::Result<Vec<[usize; 3]>, String> {
    let mut ids = Vec::new();
    for t in &f.tensors {
        if let Some(k) = t.name.strip_prefix("ref_latents.") {
            // Only the canonical spelling: `ref_latents.00` or `.+0` would parse as 0 but name another tensor.
            match k.parse::<usize>() {
                Ok(i) if i.to_string() == k => ids.push(i),
                _ => {
                    return Err(format!(
                        "tensor {}: the reference index must be a plain number (ref_latents.0, .1, …)",
                        t.name
                    ))
                }
            }
        }
    }
    ids.sort_unstable();
    if let Some(gap) = ids.iter().enumerate().find(|(i, k)| *i != **k) {
        return Err(format!(
            "ref_latents are numbered {ids:?}; expected 0..{} without gaps (ref_latents.{} is missing)",
            ids.len(),
            gap.0
        ));
    }
    (0..ids.len())
        .map(|k| {
            let name = format!("ref_latents.{k}");
            latent_shape(f, &name, c, p)?.ok_or_else(|| format!("missing tensor `{name}`"))
        })
        .collect()
}

/// Bytes per element of a mask dtype (any integer, bool or float).
fn mask_width(dtype: &str) -> Option<usize> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" => 1,
        "I16" | "U16" | "F16" | "BF16" => 2,
        "I32" | "U32" | "F32" => 4,
        "I64" | "U64" | "F64" => 8,
        _ => return None,
    })
}

/// Mask bytes → valid flags (nonzero = valid; a float −0.0 counts as zero).
fn decode_mask(bytes: &[u8], dtype: &str) -> Option<Vec<bool>> {
    let w = mask_width(dtype)?;
    let zero_bits = |c: &[u8]| -> bool {
        let mut v = 0u64;
        for (i, b) in c.iter().enumerate() {
            v |= (*b as u64) << (8 * i);
        }
        match dtype {
            // clear the sign bit so -0.0 is zero
            "F16" | "BF16" => v & 0x7fff == 0,
            "F32" => v & 0x7fff_ffff == 0,
            "F64" => v & 0x7fff_ffff_ffff_ffff == 0,
            _ => v == 0,
        }
    };
    Some(bytes.chunks_exact(w).map(|c| !zero_bits(c)).collect())
}

/// One batch ready for the model: packed clean targets, packed references, text, mask.
#[derive(Clone, Debug, PartialEq)]
pub struct Collated {
    pub batch: usize,
    /// Target tokens per sample (h/p · w/p).
    pub s_target: usize,
    /// Reference tokens per sample (all references together).
    pub s_ref: usize,
    pub s_txt: usize,
    /// [B, s_target, in_channels] packed clean target latents x0.
    pub x0: Vec<f32>,
    /// [B, s_ref, in_channels] packed references (they stay clean).
    pub refs: Vec<f32>,
    /// [B, s_txt, joint_attention_dim]
    pub text: Vec<f32>,
    /// [B, s_txt], 1 = valid; `None` when no sample of the batch has a mask and every prompt
    /// has the batch's length (shorter prompts are padded with zero rows, masked out).
    pub mask: Option<Vec<f32>>,
    /// diffusers `img_shapes` (frames, h/p, w/p): target first, then each reference.
    pub img_shapes: Vec<[usize; 3]>,
}

impl Dataset {
    /// Loads and packs the samples of one batch (all of one bucket), prompts padded to the
    /// longest with a mask (the padded keys get no attention weight, so each sample's output is
    /// its output alone: `padded_prompts_in_one_batch_give_each_sample_its_own_output`).
    pub fn collate(&self, samples: &[usize]) -> Result<Collated> {
        assert!(!samples.is_empty(), "collate: empty batch");
        let info = &self.samples[samples[0]];
        let key = info.bucket();
        assert!(samples.iter().all(|&i| self.samples[i].bucket() == key), "collate: mixed buckets in a batch");
        let s_txt = samples.iter().map(|&i| self.samples[i].txt_len).max().expect("cannot fail: not empty");
        let padded = samples.iter().any(|&i| self.samples[i].txt_len != s_txt);
        let p = self.patch_size;
        let tokens = |s: &[usize; 3]| (s[1] / p) * (s[2] / p);
        let mut c = Collated {
            batch: samples.len(),
            s_target: tokens(&info.latents),
            s_ref: info.refs.iter().map(tokens).sum(),
            s_txt,
            x0: Vec::new(),
            refs: Vec::new(),
            text: Vec::new(),
            mask: (padded || samples.iter().any(|&i| self.samples[i].has_mask)).then(Vec::new),
            img_shapes: info.img_shapes(p).into_iter().map(|(f, h, w)| [f, h, w]).collect(),
        };
        for &i in samples {
            let s = self.load(i)?;
            c.x0.extend(pack(&s.latents, info.latents, p));
            for (r, shape) in s.refs.iter().zip(&info.refs) {
                c.refs.extend(pack(r, *shape, p));
            }
            let len = s.prompt_mask.len();
            c.text.extend_from_slice(&s.prompt_embeds);
            c.text.resize(c.text.len() + (s_txt - len) * (s.prompt_embeds.len() / len.max(1)), 0.0);
            if let Some(m) = c.mask.as_mut() {
                m.extend(s.prompt_mask.iter().map(|&v| v as u8 as f32));
                m.resize(m.len() + s_txt - len, 0.0);
            }
        }
        Ok(c)
    }
}

impl Collated {
    /// The shape of this batch (one training plan per key).
    pub fn key(&self, bucket: Bucket) -> ShapeKey {
        ShapeKey { bucket, txt_len: self.s_txt, batch: self.batch }
    }

    /// The model inputs for noisy targets `x_t` [B, s_target, in_channels] at `timestep` [B]
    /// (σ in [0, 1], i.e. DiffSynth's t / 1000): per sample, the target tokens then the reference tokens.
    pub fn forward_inputs(&self, x_t: &[f32], timestep: &[f32]) -> crate::pipeline::inputs::ForwardInputs {
        let k = self.x0.len() / (self.batch * self.s_target);
        assert_eq!(x_t.len(), self.x0.len(), "forward_inputs: x_t does not match the targets");
        assert_eq!(timestep.len(), self.batch, "forward_inputs: one timestep per sample");
        let mut hidden = Vec::with_capacity(x_t.len() + self.refs.len());
        for b in 0..self.batch {
            hidden.extend_from_slice(&x_t[b * self.s_target * k..(b + 1) * self.s_target * k]);
            hidden.extend_from_slice(&self.refs[b * self.s_ref * k..(b + 1) * self.s_ref * k]);
        }
        crate::pipeline::inputs::ForwardInputs {
            batch: self.batch,
            hidden,
            text: self.text.clone(),
            s_txt: self.s_txt,
            mask: self.mask.clone(),
            timestep: timestep.to_vec(),
            img_shapes: self.img_shapes.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::areas_of;

    #[test]
    fn the_recorded_reference_areas_are_taken_when_every_line_agrees() {
        let line = |ra: u64, ca: u64| format!(r#"{{"file":"samples/a","ref_area":{ra},"condition_area":{ca}}}"#);
        assert_eq!(areas_of(r#"{"file":"samples/a"}"#), None, "a text-to-image cache records none");
        let two = format!("{}\n\n{}\nnot json\n{{\"file\":\"b\"}}\n", line(1024, 4096), line(1024, 4096));
        assert_eq!(areas_of(&two), Some((1024, 4096)));
        assert_eq!(areas_of(&format!("{}\n{}\n", line(1024, 4096), line(2048, 4096))), None, "they differ");
        assert_eq!(areas_of(r#"{"file":"a","ref_area":-1,"condition_area":"x"}"#), None, "not areas");
    }
}
