//! LoRA files in every common format, read into one canonical form: per diffusers module path
//! (`transformer_blocks.0.attn.to_q`) a down matrix A [r, in], an up matrix B [out, r] and an
//! alpha, with ΔW = (alpha / r) · B · A (spec qwen-image-dit.md §8).
//!
//! | format    | A / B keys                                      | scale                                   |
//! |-----------|-------------------------------------------------|-----------------------------------------|
//! | diffusers | `transformer.P.lora_A.weight` / `lora_B`        | `lora_adapter_metadata` header, else 1  |
//! | diffsynth | `P.lora_A.default.weight` / `lora_B.default`    | `P.alpha` tensor / r, else 1            |
//! | kohya     | `lora_unet_<P_>.lora_down.weight` / `lora_up`   | `.alpha` tensor / r, else 1             |
//! | comfyui   | `diffusion_model.P.lora_A`/`lora_down` ...      | `.alpha` tensor / r, else 1             |
//!
//! An `.alpha` tensor wins over header metadata, as in diffusers' `lora_state_dict`, which bakes
//! alpha tensors into the weights before it looks at the metadata.

use super::safetensors::SafeFile;
use crate::dtype::DType;
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::path::Path;

pub use super::lora_write::write_lora;

/// The header key diffusers writes the PEFT `LoraConfig` under (`loaders/lora_base.py`).
pub const ADAPTER_METADATA_KEY: &str = "lora_adapter_metadata";
/// Our header key recording the part ranks of merged q/k/v LoRAs, so that a split restores them.
pub const QKV_RANKS_KEY: &str = "wgdit_qkv_ranks";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoraFormat {
    Diffusers,
    DiffSynth,
    Kohya,
    ComfyUI,
}

impl LoraFormat {
    pub fn name(self) -> &'static str {
        match self {
            LoraFormat::Diffusers => "diffusers/PEFT",
            LoraFormat::DiffSynth => "DiffSynth",
            LoraFormat::Kohya => "kohya/musubi",
            LoraFormat::ComfyUI => "ComfyUI",
        }
    }
}

/// A host tensor in f32 with the dtype it was stored in (and is written back in by default).
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub data: Vec<f32>,
    pub shape: Vec<usize>,
    pub dtype: DType,
}

/// One LoRA: ΔW = (alpha / rank) · B · A.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraModule {
    /// Down projection [rank, in].
    pub a: HostTensor,
    /// Up projection [out, rank].
    pub b: HostTensor,
    pub alpha: f64,
}

impl LoraModule {
    pub fn rank(&self) -> usize {
        self.a.shape[0]
    }
    pub fn in_features(&self) -> usize {
        self.a.shape[1]
    }
    pub fn out_features(&self) -> usize {
        self.b.shape[0]
    }
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank() as f64
    }
    /// ΔW [out, in] in f64 (reference for tests and checks).
    pub fn delta(&self) -> Vec<f64> {
        let (r, i, o, s) = (self.rank(), self.in_features(), self.out_features(), self.scale());
        let mut w = vec![0f64; o * i];
        for row in 0..o {
            for k in 0..r {
                let bv = self.b.data[row * r + k] as f64 * s;
                for col in 0..i {
                    w[row * i + col] += bv * self.a.data[k * i + col] as f64;
                }
            }
        }
        w
    }
}

/// A LoRA in canonical form.
#[derive(Clone, Debug)]
pub struct Lora {
    /// Module path → LoRA; paths are diffusers module paths (no prefix).
    pub modules: BTreeMap<String, LoraModule>,
    pub format: LoraFormat,
    /// Other `__metadata__` entries of the source, kept on output.
    pub extra_metadata: BTreeMap<String, String>,
    /// Merged module path → ranks of its q, k, v parts (from our own merge).
    pub qkv_ranks: BTreeMap<String, [usize; 3]>,
}

/// The module vocabulary a LoRA file is read against: the model's names table. The file
/// formats are generic; which dotted paths exist is the model's to say.
pub trait ModulePaths {
    /// The model, for messages ("Qwen-Image DiT").
    fn model_name(&self) -> &str;
    /// Whether `path` (dotted, e.g. `transformer_blocks.0.attn.to_q`) is a Linear module.
    fn is_linear_module(&self, path: &str) -> bool;
    /// The dotted path behind kohya's flattened name (every `.` replaced by `_`, without
    /// `lora_unet_`); the model's module list resolves the ambiguity.
    fn kohya_to_path(&self, flat: &str) -> Option<String>;
}

/// kohya's flattened module name (without `lora_unet_`): every `.` of the path becomes `_`.
pub fn path_to_kohya(path: &str) -> String {
    path.replace('.', "_")
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Role {
    A,
    B,
    Alpha,
}

/// Splits a key into (format, module path, role), or None for an unknown key. Unprefixed keys
/// without `.default.` (a bare `P.lora_A.weight` or `P.alpha`) have no format of their own:
/// `None`, settled by the other keys of the file.
fn parse_key(key: &str, names: &dyn ModulePaths) -> Option<(Option<LoraFormat>, String, Role)> {
    const SUFFIXES: [(&str, Role); 7] = [
        (".lora_A.default.weight", Role::A),
        (".lora_B.default.weight", Role::B),
        (".lora_A.weight", Role::A),
        (".lora_B.weight", Role::B),
        (".lora_down.weight", Role::A),
        (".lora_up.weight", Role::B),
        (".alpha", Role::Alpha),
    ];
    let (stem, role) = SUFFIXES.iter().find_map(|(s, r)| key.strip_suffix(s).map(|stem| (stem, *r)))?;
    let (format, path) = if let Some(flat) = stem.strip_prefix("lora_unet_") {
        (Some(LoraFormat::Kohya), names.kohya_to_path(flat)?)
    } else if let Some(p) = stem.strip_prefix("diffusion_model.") {
        (Some(LoraFormat::ComfyUI), p.to_string())
    } else if let Some(p) = stem.strip_prefix("transformer.").or_else(|| stem.strip_prefix("base_model.model.")) {
        (Some(LoraFormat::Diffusers), p.to_string())
    } else if key.contains(".default.") {
        (Some(LoraFormat::DiffSynth), stem.to_string())
    } else {
        (None, stem.to_string())
    };
    names.is_linear_module(&path).then_some((format, path, role))
}

/// Detects the format of a set of keys; unknown keys and mixed formats are errors listing them.
pub fn detect_format<'a>(
    path: &Path,
    keys: impl IntoIterator<Item = &'a str>,
    names: &dyn ModulePaths,
) -> Result<LoraFormat> {
    let mut seen: Vec<(LoraFormat, &str)> = Vec::new();
    let mut bare = None;
    let mut unknown = Vec::new();
    for k in keys {
        match parse_key(k, names) {
            Some((Some(f), _, _)) if !seen.iter().any(|(g, _)| *g == f) => seen.push((f, k)),
            Some((None, _, _)) => bare = bare.or(Some(k)),
            Some(_) => {}
            None => unknown.push(k),
        }
    }
    if !unknown.is_empty() {
        let list = unknown.iter().take(20).copied().collect::<Vec<_>>().join(", ");
        return Err(Error::file(
            path,
            format!("{} keys are not LoRA factors of {} linear modules: {list}", unknown.len(), names.model_name()),
        ));
    }
    match (seen.as_slice(), bare) {
        ([], None) => Err(Error::file(path, "no LoRA tensors in this file")),
        // A PEFT state dict without the pipeline prefix (ComfyUI accepts bare `P` keys too).
        ([], Some(_)) => Ok(LoraFormat::Diffusers),
        // DiffSynth's optional `P.alpha` is unprefixed.
        ([(f, _)], None) | ([(f @ LoraFormat::DiffSynth, _)], Some(_)) => Ok(*f),
        ([(f, k)], Some(b)) => {
            Err(Error::file(path, format!("mixed LoRA formats in one file: {} ({k}) and unprefixed ({b})", f.name())))
        }
        _ => {
            let eg = seen.iter().map(|(f, k)| format!("{} ({k})", f.name())).collect::<Vec<_>>().join(", ");
            Err(Error::file(path, format!("mixed LoRA formats in one file: {eg}")))
        }
    }
}

/// Reads a LoRA file in any supported format, against the module paths of `names`.
pub fn read_lora(path: &Path, names: &dyn ModulePaths) -> Result<Lora> {
    read_lora_file(&SafeFile::open(path)?, names)
}

/// [`read_lora`] of a file already opened (or held in memory).
pub fn read_lora_file(file: &SafeFile, names: &dyn ModulePaths) -> Result<Lora> {
    let path = file.path.as_path();
    let format = detect_format(path, file.tensors.iter().map(|t| t.name.as_str()), names)?;
    let mut parts: BTreeMap<String, [Option<HostTensor>; 3]> = BTreeMap::new();
    for t in &file.tensors {
        let (_, module, role) = parse_key(&t.name, names).expect("cannot fail: checked by detect_format");
        let v = file.view(t)?;
        let host = HostTensor { data: v.to_f32(), shape: t.shape.clone(), dtype: v.dtype };
        let slot = &mut parts.entry(module).or_default()[role as usize];
        if slot.replace(host).is_some() {
            return Err(Error::file(
                path,
                format!("tensor {} duplicates another key of the same module and role", t.name),
            ));
        }
    }
    let meta = AdapterMeta::parse(path, &file.metadata, format)?;
    let mut modules = BTreeMap::new();
    for (module, [a, b, alpha]) in parts {
        let m = assemble(path, &module, a, b, alpha, meta.as_ref())?;
        modules.insert(module, m);
    }
    let qkv_ranks = match file.metadata.get(QKV_RANKS_KEY) {
        Some(s) => {
            serde_json::from_str(s).map_err(|e| Error::file(path, format!("bad {QKV_RANKS_KEY} header: {e}")))?
        }
        None => BTreeMap::new(),
    };
    let extra_metadata = file
        .metadata
        .iter()
        .filter(|(k, _)| *k != ADAPTER_METADATA_KEY && *k != QKV_RANKS_KEY)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Ok(Lora { modules, format, extra_metadata, qkv_ranks })
}

fn assemble(
    path: &Path,
    module: &str,
    a: Option<HostTensor>,
    b: Option<HostTensor>,
    alpha: Option<HostTensor>,
    meta: Option<&AdapterMeta>,
) -> Result<LoraModule> {
    let err = |m: String| Error::file(path, format!("LoRA module {module}: {m}"));
    let a = a.ok_or_else(|| err("has an up (B) matrix but no down (A) matrix".into()))?;
    let b = b.ok_or_else(|| err("has a down (A) matrix but no up (B) matrix".into()))?;
    if a.shape.len() != 2 || b.shape.len() != 2 || a.shape[0] != b.shape[1] {
        return Err(err(format!("A {:?} and B {:?} are not [r, in] and [out, r]", a.shape, b.shape)));
    }
    let r = a.shape[0];
    if r == 0 {
        return Err(err(format!("rank 0 (A {:?}, B {:?}): a LoRA has rank 1 or more", a.shape, b.shape)));
    }
    let alpha = match (alpha, meta) {
        (Some(t), _) if t.data.len() == 1 => t.data[0] as f64,
        (Some(t), _) => return Err(err(format!("alpha tensor has shape {:?}; expected a scalar", t.shape))),
        (None, Some(m)) => m.alpha_for(module, r).map_err(err)?,
        (None, None) => r as f64,
    };
    if !alpha.is_finite() {
        return Err(err(format!("alpha is {alpha}; expected a finite number")));
    }
    Ok(LoraModule { a, b, alpha })
}

/// The PEFT `LoraConfig` fields diffusers stores in the header (`transformer.r`, ...).
struct AdapterMeta {
    r: Option<usize>,
    alpha: Option<f64>,
    rank_pattern: BTreeMap<String, usize>,
    alpha_pattern: BTreeMap<String, f64>,
    rslora: bool,
}

impl AdapterMeta {
    fn parse(path: &Path, md: &BTreeMap<String, String>, format: LoraFormat) -> Result<Option<AdapterMeta>> {
        let Some(raw) = md.get(ADAPTER_METADATA_KEY).filter(|_| format == LoraFormat::Diffusers) else {
            return Ok(None);
        };
        let bad = |m: String| Error::file(path, format!("bad {ADAPTER_METADATA_KEY} header: {m}"));
        let json: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(raw).map_err(|e| bad(e.to_string()))?;
        let get = |k: &str| json.get(&format!("transformer.{k}")).or_else(|| json.get(k));
        if get("use_dora").and_then(|v| v.as_bool()) == Some(true) {
            return Err(bad("DoRA adapters are not supported".into()));
        }
        let obj = |k: &str| get(k).and_then(|v| v.as_object()).cloned().unwrap_or_default();
        let mut rank_pattern = BTreeMap::new();
        for (k, v) in obj("rank_pattern") {
            rank_pattern
                .insert(k, v.as_u64().ok_or_else(|| bad(format!("rank_pattern[{}] is not an integer", v)))? as usize);
        }
        let mut alpha_pattern = BTreeMap::new();
        for (k, v) in obj("alpha_pattern") {
            alpha_pattern.insert(k, v.as_f64().ok_or_else(|| bad(format!("alpha_pattern[{}] is not a number", v)))?);
        }
        Ok(Some(AdapterMeta {
            r: get("r").and_then(|v| v.as_u64()).map(|r| r as usize),
            alpha: get("lora_alpha").and_then(|v| v.as_f64()),
            rank_pattern,
            alpha_pattern,
            rslora: get("use_rslora").and_then(|v| v.as_bool()).unwrap_or(false),
        }))
    }

    /// The alpha of `module` of tensor rank `r`, as PEFT computes it (`LoraModel._create_and_replace`:
    /// pattern keys match the module path or a dotted suffix of it; scale = alpha / r, or
    /// alpha / sqrt(r) with rsLoRA, returned here as the equivalent alpha for scale = alpha / r).
    fn alpha_for(&self, module: &str, r: usize) -> std::result::Result<f64, String> {
        let matches = |k: &str| module == k || module.ends_with(&format!(".{k}"));
        let want_r = self.rank_pattern.iter().find(|(k, _)| matches(k)).map(|(_, v)| *v).or(self.r);
        if let Some(w) = want_r.filter(|w| *w != r) {
            return Err(format!("the header says rank {w} but lora_A has {r} rows"));
        }
        let alpha = self.alpha_pattern.iter().find(|(k, _)| matches(k)).map(|(_, v)| *v).or(self.alpha).unwrap_or(8.0);
        Ok(if self.rslora { alpha * (r as f64).sqrt() } else { alpha })
    }
}
