//! The trainable LoRA parameter set on the host: which Linear modules of a [`DitConfig`] get a
//! LoRA (PEFT's `target_modules` rule), rank/alpha, PEFT's default initialisation from a seed,
//! and export to any LoRA format through [`crate::weights::lora`] (spec §7.1, §8).
//!
//! PEFT rule (`check_target_module_exists` for a list): a module is targeted when its full name
//! equals a pattern or ends with `.` + pattern. Init (`init_lora_weights=True`):
//! A [r, in] ~ kaiming_uniform(a=√5) = U(−1/√in, 1/√in), B [out, r] = 0.

use crate::gpu::Gpu;
use crate::models::qwen_image::names::qkv_role;
use crate::models::qwen_image::names::{expected_tensors, QKV_MERGED};
use crate::models::qwen_image::DitConfig;
use crate::rng::Rng;
use crate::tensor::{DType, Tensor};
use crate::weights::lora::{write_lora, HostTensor, Lora, LoraFormat, LoraModule};
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::path::Path;

/// DiffSynth's Qwen-Image target list (`lora/Qwen-Image*.sh`): 12 Linears per block.
pub const DIFFSYNTH_TARGETS: &str =
    "to_q,to_k,to_v,add_q_proj,add_k_proj,add_v_proj,to_out.0,to_add_out,img_mlp.net.2,img_mod.1,txt_mlp.net.2,txt_mod.1";

/// A Linear module of the model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinearModule {
    /// diffusers module path, e.g. `transformer_blocks.0.attn.to_q`.
    pub path: String,
    pub in_features: usize,
    pub out_features: usize,
}

/// Every Linear of the model in checkpoint order (top level, then blocks), followed by the
/// merged q/k/v Linears of each block (`attn.to_qkv`, `attn.add_qkv_proj`: [3D, D]).
pub fn linear_modules(cfg: &DitConfig) -> Vec<LinearModule> {
    let mut out: Vec<LinearModule> = expected_tensors(cfg)
        .into_iter()
        .filter(|(n, s)| s.len() == 2 && n.ends_with(".weight"))
        .map(|(n, s)| LinearModule {
            path: n.trim_end_matches(".weight").to_string(),
            in_features: s[1],
            out_features: s[0],
        })
        .collect();
    let d = cfg.hidden();
    for i in 0..cfg.num_layers {
        for m in QKV_MERGED {
            out.push(LinearModule {
                path: format!("transformer_blocks.{i}.attn.{m}"),
                in_features: d,
                out_features: 3 * d,
            });
        }
    }
    out
}

/// Comma-separated patterns → list (blank entries dropped).
pub fn parse_targets(list: &str) -> Vec<String> {
    list.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect()
}

/// PEFT: the full name equals the pattern or ends with `.` + pattern.
pub fn matches(path: &str, pattern: &str) -> bool {
    path == pattern
        || (path.len() > pattern.len() && path.ends_with(pattern) && path[..path.len() - pattern.len()].ends_with('.'))
}

/// The Linears matched by `patterns`. A pattern that matches nothing, or a selection holding
/// both a q/k/v Linear and its merged module, is an error.
pub fn select(cfg: &DitConfig, patterns: &[String]) -> Result<Vec<LinearModule>> {
    if patterns.is_empty() {
        return Err(Error::input("no LoRA target modules given"));
    }
    let all = linear_modules(cfg);
    let unmatched: Vec<&str> =
        patterns.iter().filter(|p| !all.iter().any(|m| matches(&m.path, p))).map(String::as_str).collect();
    if !unmatched.is_empty() {
        return Err(Error::input(format!(
            "LoRA target pattern(s) {unmatched:?} match no Linear module of the model \
             (a pattern names a module path or its dotted suffix, e.g. to_q, attn.to_out.0, img_mod.1)"
        )));
    }
    let chosen: Vec<LinearModule> = all.into_iter().filter(|m| patterns.iter().any(|p| matches(&m.path, p))).collect();
    let merged: Vec<(usize, &str)> =
        chosen.iter().filter_map(|m| qkv_role(&m.path).filter(|r| r.2.is_none()).map(|r| (r.0, r.1.merged))).collect();
    if let Some(m) = chosen
        .iter()
        .find(|m| qkv_role(&m.path).is_some_and(|(b, g, part)| part.is_some() && merged.contains(&(b, g.merged))))
    {
        return Err(Error::input(format!(
            "LoRA targets select both {} and its merged q/k/v module; target one layout only",
            m.path
        )));
    }
    Ok(chosen)
}

/// Rank, alpha and targets of a run (PEFT `LoraConfig(r, lora_alpha, target_modules)`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    pub targets: Vec<String>,
}

impl LoraConfig {
    /// DiffSynth's defaults at rank `r`: alpha = r (scale 1), [`DIFFSYNTH_TARGETS`].
    pub fn diffsynth(rank: usize) -> LoraConfig {
        LoraConfig { rank, alpha: rank as f64, targets: parse_targets(DIFFSYNTH_TARGETS) }
    }
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }
}

/// One trainable LoRA in f32: A [rank, in], B [out, rank], row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraParam {
    pub module: LinearModule,
    pub a: Vec<f32>,
    pub b: Vec<f32>,
}

/// The trainable set, in [`linear_modules`] order.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraParams {
    pub config: LoraConfig,
    pub params: Vec<LoraParam>,
}

impl LoraParams {
    /// PEFT init: per module in order, A row-major from U(−1/√in, 1/√in) drawn from `rng`; B = 0.
    pub fn init(cfg: &DitConfig, config: &LoraConfig, rng: &mut Rng) -> Result<LoraParams> {
        if config.rank == 0 {
            return Err(Error::input("LoRA rank must be at least 1"));
        }
        let r = config.rank;
        let params = select(cfg, &config.targets)?
            .into_iter()
            .map(|m| {
                let bound = 1.0 / (m.in_features as f32).sqrt();
                let a = rng.vec_uniform(r * m.in_features, -bound, bound);
                LoraParam { b: vec![0.0; m.out_features * r], a, module: m }
            })
            .collect();
        Ok(LoraParams { config: config.clone(), params })
    }

    /// Number of trainable scalars.
    pub fn numel(&self) -> usize {
        self.params.iter().map(|p| p.a.len() + p.b.len()).sum()
    }

    /// The parameter tensors as (name, shape, data): `<path>.lora_A`, `<path>.lora_B` per module,
    /// the order the optimizer and the checkpoint use.
    pub fn tensors(&self) -> Vec<(String, Vec<usize>, &[f32])> {
        let r = self.config.rank;
        let mut v = Vec::with_capacity(2 * self.params.len());
        for p in &self.params {
            v.push((format!("{}.lora_A", p.module.path), vec![r, p.module.in_features], &p.a[..]));
            v.push((format!("{}.lora_B", p.module.path), vec![p.module.out_features, r], &p.b[..]));
        }
        v
    }

    /// Mutable data of the tensors in [`LoraParams::tensors`] order (to copy trained values back).
    pub fn tensors_mut(&mut self) -> Vec<&mut Vec<f32>> {
        self.params.iter_mut().flat_map(|p| [&mut p.a, &mut p.b]).collect()
    }

    /// Uploads the tensors (f32, [`LoraParams::tensors`] order) as trainable GPU parameters.
    pub fn upload(&self, gpu: &Gpu) -> Result<Vec<Tensor>> {
        self.tensors().iter().map(|(n, s, d)| Tensor::from_f32(gpu, d, s, DType::F32, n)).collect()
    }

    /// Copies trained values back from tensors made by [`LoraParams::upload`] (waits for the GPU).
    pub fn download(&mut self, gpu: &Gpu, tensors: &[Tensor]) -> Result<()> {
        let slots = self.tensors_mut();
        assert_eq!(slots.len(), tensors.len(), "lora download: one tensor per LoRA matrix");
        for (dst, t) in slots.into_iter().zip(tensors) {
            assert_eq!(dst.len(), t.numel(), "lora download: size mismatch");
            *dst = t.to_f32(gpu)?;
        }
        Ok(())
    }

    /// The canonical LoRA (stored as `dtype` when written).
    pub fn to_lora(&self, dtype: DType) -> Lora {
        let r = self.config.rank;
        let host = |data: &[f32], shape: Vec<usize>| HostTensor { data: data.to_vec(), shape, dtype };
        let modules = self
            .params
            .iter()
            .map(|p| {
                let m = LoraModule {
                    a: host(&p.a, vec![r, p.module.in_features]),
                    b: host(&p.b, vec![p.module.out_features, r]),
                    alpha: self.config.alpha,
                };
                (p.module.path.clone(), m)
            })
            .collect();
        Lora { modules, format: LoraFormat::Diffusers, extra_metadata: BTreeMap::new(), qkv_ranks: BTreeMap::new() }
    }

    /// Writes the LoRA atomically in `format` (diffusers/PEFT is what the trainer saves).
    pub fn save(&self, path: &Path, format: LoraFormat, dtype: DType) -> Result<u64> {
        write_lora(path, &self.to_lora(dtype), format, None)
    }

    /// Rebuilds the set from a LoRA read back (a checkpoint), checking that it holds exactly the
    /// modules `config` selects on `cfg`, with the configured rank and alpha.
    pub fn from_lora(cfg: &DitConfig, config: &LoraConfig, lora: &Lora) -> Result<LoraParams> {
        let r = config.rank;
        let mut params = Vec::new();
        let want = select(cfg, &config.targets)?;
        if lora.modules.len() != want.len() {
            return Err(Error::input(format!(
                "the LoRA has {} modules but the targets select {}",
                lora.modules.len(),
                want.len()
            )));
        }
        for m in want {
            let l =
                lora.modules.get(&m.path).ok_or_else(|| Error::input(format!("the LoRA lacks module {}", m.path)))?;
            if l.a.shape != [r, m.in_features] || l.b.shape != [m.out_features, r] || l.alpha != config.alpha {
                return Err(Error::input(format!(
                    "LoRA module {}: A {:?}, B {:?}, alpha {}; expected A [{r}, {}], B [{}, {r}], alpha {}",
                    m.path, l.a.shape, l.b.shape, l.alpha, m.in_features, m.out_features, config.alpha
                )));
            }
            params.push(LoraParam { a: l.a.data.clone(), b: l.b.data.clone(), module: m });
        }
        Ok(LoraParams { config: config.clone(), params })
    }

    /// The initial parameters of `--init-lora`: the modules `config` selects, taken from `lora`
    /// (a file of any format, read by `weights::lora`). Each A is copied; each B is scaled by
    /// (file alpha / file rank) / (alpha / rank) so that ΔW = scale·B·A is the file's (copied
    /// exactly when the scales agree). A module the targets select but the file lacks, a file
    /// module the targets leave out, or another rank is an error naming them.
    pub fn from_init_lora(cfg: &DitConfig, config: &LoraConfig, lora: &Lora) -> Result<LoraParams> {
        let want = select(cfg, &config.targets)?;
        let missing: Vec<&str> =
            want.iter().filter(|m| !lora.modules.contains_key(&m.path)).map(|m| m.path.as_str()).collect();
        let extra: Vec<&str> =
            lora.modules.keys().filter(|k| !want.iter().any(|m| &m.path == *k)).map(String::as_str).collect();
        if !missing.is_empty() || !extra.is_empty() {
            let list = |v: &[&str]| {
                if v.len() > 4 {
                    format!("{} … ({} in all)", v[..4].join(", "), v.len())
                } else {
                    v.join(", ")
                }
            };
            let mut why = Vec::new();
            if !missing.is_empty() {
                why.push(format!("the targets select modules the file lacks: {}", list(&missing)));
            }
            if !extra.is_empty() {
                why.push(format!("the file has modules the targets leave out: {}", list(&extra)));
            }
            return Err(Error::input(format!(
                "{}; pass --targets naming exactly the file's modules (a merged to_qkv LoRA needs --targets to_qkv,...)",
                why.join("; ")
            )));
        }
        let r = config.rank;
        let mut params = Vec::with_capacity(want.len());
        for m in want {
            let l = &lora.modules[&m.path];
            if l.a.shape != [l.rank(), m.in_features] || l.b.shape != [m.out_features, l.rank()] {
                return Err(Error::input(format!(
                    "LoRA module {}: A {:?}, B {:?} do not fit the model's [{}, {}] Linear",
                    m.path, l.a.shape, l.b.shape, m.out_features, m.in_features
                )));
            }
            if l.rank() != r {
                return Err(Error::input(format!(
                    "LoRA module {} has rank {}, but --rank is {r}: pass --rank {} (or leave --rank out to take the file's)",
                    m.path,
                    l.rank(),
                    l.rank()
                )));
            }
            let ratio = l.scale() / config.scale();
            let b = if ratio == 1.0 {
                l.b.data.clone()
            } else {
                l.b.data.iter().map(|v| (*v as f64 * ratio) as f32).collect()
            };
            params.push(LoraParam { a: l.a.data.clone(), b, module: m });
        }
        Ok(LoraParams { config: config.clone(), params })
    }
}

/// The rank and alpha of a LoRA file (`--init-lora` without `--rank` / `--alpha`): those of its
/// modules, which must agree.
pub fn file_rank_alpha(lora: &Lora) -> Result<(usize, f64)> {
    let mut it = lora.modules.iter();
    let (_, first) = it.next().ok_or_else(|| Error::input("the LoRA file has no modules"))?;
    if let Some((name, m)) = it.find(|(_, m)| m.rank() != first.rank() || m.alpha != first.alpha) {
        return Err(Error::input(format!(
            "the LoRA file's modules differ in rank or alpha ({name}: rank {}, alpha {}; others rank {}, alpha {}): pass --rank and --alpha",
            m.rank(),
            m.alpha,
            first.rank(),
            first.alpha
        )));
    }
    Ok((first.rank(), first.alpha))
}
