//! Runtime LoRA for inference (`wgdit forward --lora file[:scale]`): LoRA files of any supported
//! format (`crate::weights::lora`) resolved onto the model's Linear modules in the standard
//! layout. The base weights are never modified: the graph adds `s·(x·Aᵀ)·Bᵀ` through the GEMM's
//! LoRA side path (and, for the fused modulation chunks, an accumulating up-projection).
//!
//! Scale per LoRA = alpha / rank (each format's rule, read by `weights::lora`) × the strength
//! given on the command line, exactly what diffusers' loader computes with `set_adapters`.
//! A LoRA on a merged module (`attn.to_qkv`, `attn.add_qkv_proj`) becomes three parts on the
//! standard q, k, v modules that share A, with B split by rows: the same ΔW.

use crate::error::{Error, Result};
use crate::models::qwen_image::names::{expected_tensors, QKV_MERGED, QKV_STANDARD};
use crate::models::qwen_image::DitConfig;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use crate::nn::LoraPart;

/// Reads a LoRA file of any supported format against the Qwen-Image DiT's modules.
pub fn read_lora(path: &Path) -> Result<crate::weights::Lora> {
    crate::weights::read_lora(path, &crate::models::qwen_image::names::QwenImageNames)
}

/// Every LoRA part, by standard module path (`transformer_blocks.0.attn.to_q`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoraSet {
    pub modules: BTreeMap<String, Vec<LoraPart>>,
}

/// Parses `path[:scale]` (the scale is the text after the last ':' when it is a number).
pub fn parse_lora_arg(s: &str) -> Result<(PathBuf, f32)> {
    if let Some((p, sc)) = s.rsplit_once(':') {
        if let Ok(v) = sc.parse::<f32>() {
            if !v.is_finite() {
                return Err(Error::input(format!("--lora {s}: the strength {sc} is not a finite number")));
            }
            return Ok((PathBuf::from(p), v));
        }
    }
    Ok((PathBuf::from(s), 1.0))
}

impl LoraSet {
    pub fn is_empty(&self) -> bool {
        self.modules.is_empty()
    }

    pub fn parts(&self, module: &str) -> &[LoraPart] {
        self.modules.get(module).map_or(&[], Vec::as_slice)
    }

    /// Reads every file and resolves its modules against the config; unknown modules and shape
    /// mismatches are reported together.
    pub fn load(files: &[(PathBuf, f32)], cfg: &DitConfig) -> Result<LoraSet> {
        LoraSet::default().with_files(files, cfg)
    }

    /// This set and the LoRAs of `files` (read and resolved as [`load`](Self::load) does).
    pub fn with_files(mut self, files: &[(PathBuf, f32)], cfg: &DitConfig) -> Result<LoraSet> {
        let shapes = linear_shapes(cfg);
        for (path, strength) in files {
            self.add(path, &read_lora(path)?, *strength, &shapes)?;
        }
        Ok(self)
    }

    /// One LoRA held in memory (the trainer's, for its samples) at `strength`; `name` stands for
    /// its file in errors.
    pub fn of(name: &Path, lora: &crate::weights::Lora, strength: f32, cfg: &DitConfig) -> Result<LoraSet> {
        let mut set = LoraSet::default();
        set.add(name, lora, strength, &linear_shapes(cfg))?;
        Ok(set)
    }

    /// Resolves one LoRA read from `path` onto the Linears of `shapes` ([`linear_shapes`]).
    pub(crate) fn add(
        &mut self,
        path: &Path,
        lora: &crate::weights::Lora,
        strength: f32,
        shapes: &BTreeMap<String, Vec<usize>>,
    ) -> Result<()> {
        let mut problems = Vec::new();
        for (module, m) in &lora.modules {
            let scale = (m.scale() * strength as f64) as f32;
            let a: Vec<f32> = m.a.data.iter().map(|v| v * scale).collect();
            let targets = split_targets(module);
            let (rank, inp, out) = (m.rank(), m.in_features(), m.out_features());
            let mut rows = 0;
            for t in &targets {
                match shapes.get(t) {
                    Some(s) if s[1] == inp && out % targets.len() == 0 && s[0] == out / targets.len() => rows += s[0],
                    Some(s) => problems
                        .push(format!("{module}: LoRA [{out}, {rank}]·[{rank}, {inp}] does not fit weight {s:?}")),
                    None => problems.push(format!("{module}: no such Linear module in this model")),
                }
            }
            if rows != out {
                continue;
            }
            let per = out / targets.len();
            for (i, t) in targets.iter().enumerate() {
                let b = m.b.data[i * per * rank..(i + 1) * per * rank].to_vec();
                self.modules.entry(t.clone()).or_default().push(LoraPart { a: a.clone(), b, rank });
            }
        }
        if problems.is_empty() {
            return Ok(());
        }
        Err(Error::file(path, format!("LoRA does not match the model:\n  {}", problems.join("\n  "))))
    }
}

/// Linear module path → weight shape [out, in], for every Linear of the model.
pub(crate) fn linear_shapes(cfg: &DitConfig) -> BTreeMap<String, Vec<usize>> {
    expected_tensors(cfg)
        .into_iter()
        .filter_map(|(n, s)| n.strip_suffix(".weight").filter(|_| s.len() == 2).map(|m| (m.to_string(), s)))
        .collect()
}

/// The standard modules a LoRA module path acts on: itself, or q, k, v for a merged module.
fn split_targets(module: &str) -> Vec<String> {
    for (stream, merged) in QKV_MERGED.iter().enumerate() {
        if let Some(prefix) = module.strip_suffix(merged) {
            return QKV_STANDARD[stream].iter().map(|m| format!("{prefix}{m}")).collect();
        }
    }
    vec![module.to_string()]
}

impl crate::nn::LoraParts for LoraSet {
    fn parts(&self, module: &str) -> &[LoraPart] {
        LoraSet::parts(self, module)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lora_argument_takes_an_optional_trailing_scale() {
        assert_eq!(parse_lora_arg("a/b.safetensors:0.5").unwrap(), (PathBuf::from("a/b.safetensors"), 0.5));
        assert_eq!(parse_lora_arg("a/b.safetensors").unwrap(), (PathBuf::from("a/b.safetensors"), 1.0));
    }

    #[test]
    fn merged_modules_split_into_their_standard_parts() {
        assert_eq!(
            split_targets("transformer_blocks.1.attn.add_qkv_proj"),
            ["add_q_proj", "add_k_proj", "add_v_proj"].map(|m| format!("transformer_blocks.1.attn.{m}"))
        );
        assert_eq!(split_targets("transformer_blocks.1.img_mod.1"), ["transformer_blocks.1.img_mod.1"]);
    }
}
