//! `--preset-lora FILE[:SCALE]`: LoRAs folded into the frozen base before training, as
//! DiffSynth-Studio's `--preset_lora_path` (its `GeneralLoRALoader` adds scale·B·A to each
//! weight in the model's dtype), so the trained LoRA learns on top of base + presets.
//!
//! [`Folded`] wraps the model's tensor source: a weight a preset touches is decoded, gets
//! W += Σ_parts (alpha/rank · SCALE)·B·A (accumulated in f64, per row) and is encoded back in its
//! stored dtype (f32, f16 or bf16: round to nearest even, as torch's in-place add); every other
//! tensor passes through untouched. The files are resolved by `models::qwen_image::lora::LoraSet`
//! (every format, merged q/k/v split by rows, shapes checked). A weight stored quantized or in
//! fp8 is refused: folding would requantize all of it. The fold runs when the weight is read:
//! once for resident weights, at each read of a streamed block under `--vram-budget`.

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::models::qwen_image::load::TensorSource;
use crate::models::qwen_image::lora::{LoraPart, LoraSet};
use crate::models::qwen_image::names::merged_home;
use crate::models::qwen_image::DitConfig;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// A tensor source with LoRAs folded into its weights.
pub struct Folded {
    inner: Box<dyn TensorSource>,
    /// Stored tensor name → (first row of the module in it, the module's LoRA parts).
    folds: BTreeMap<String, Vec<(usize, Vec<LoraPart>)>>,
    files: Vec<(PathBuf, f32)>,
}

impl Folded {
    /// Folds `files` (path, SCALE) into `inner`'s weights; a file that does not fit the model,
    /// or a weight in a dtype that cannot take the fold, is an error naming it.
    pub fn new(inner: Box<dyn TensorSource>, cfg: &DitConfig, files: &[(PathBuf, f32)]) -> Result<Folded> {
        let set = LoraSet::load(files, cfg)?;
        let mut folds: BTreeMap<String, Vec<(usize, Vec<LoraPart>)>> = BTreeMap::new();
        let mut refused = Vec::new();
        for (module, parts) in &set.modules {
            let weight = format!("{module}.weight");
            let (stored, row0) = match inner.meta(&weight) {
                Some(_) => (weight.clone(), 0),
                None => {
                    let out = parts[0].b.len() / parts[0].rank;
                    let (merged, i) = merged_home(&weight)
                        .filter(|(m, _)| inner.meta(m).is_some())
                        .ok_or_else(|| Error::input(format!("--preset-lora: {weight} is not in the model")))?;
                    (merged, i * out)
                }
            };
            let (dtype, _) = inner.meta(&stored).expect("cannot fail: found above");
            if !dtype.is_float() {
                refused.push(format!("{stored} ({})", dtype.name()));
            }
            folds.entry(stored).or_default().push((row0, parts.clone()));
        }
        if !refused.is_empty() {
            return Err(Error::input(format!(
                "--preset-lora cannot fold into weights stored as {}: folding would requantize the whole tensor; use an f32, f16 or bf16 model",
                refused.join(", ")
            )));
        }
        Ok(Folded { inner, folds, files: files.to_vec() })
    }
}

/// W[row0 + o, :] += Σ_j B[o, j]·A[j, :] for each part (A already scaled), summed in f64.
fn fold(w: &mut [f32], cols: usize, row0: usize, parts: &[LoraPart]) {
    let mut row = vec![0f64; cols];
    let out = parts[0].b.len() / parts[0].rank;
    for o in 0..out {
        row.iter_mut().for_each(|v| *v = 0.0);
        for p in parts {
            for j in 0..p.rank {
                let coef = p.b[o * p.rank + j] as f64;
                for (r, a) in row.iter_mut().zip(&p.a[j * cols..(j + 1) * cols]) {
                    *r += coef * *a as f64;
                }
            }
        }
        let dst = &mut w[(row0 + o) * cols..(row0 + o + 1) * cols];
        for (d, r) in dst.iter_mut().zip(&row) {
            *d = (*d as f64 + r) as f32;
        }
    }
}

impl TensorSource for Folded {
    fn names(&self) -> Vec<String> {
        self.inner.names()
    }
    fn meta(&self, name: &str) -> Option<(DType, Vec<usize>)> {
        self.inner.meta(name)
    }
    fn bytes(&self, name: &str) -> Result<Cow<'_, [u8]>> {
        let Some(folds) = self.folds.get(name) else {
            return self.inner.bytes(name);
        };
        let (dtype, shape) = self.inner.meta(name).expect("cannot fail: folds name stored tensors");
        let mut w = dtype.decode(&self.inner.bytes(name)?);
        for (row0, parts) in folds {
            fold(&mut w, shape[1], *row0, parts);
        }
        Ok(Cow::Owned(dtype.encode(&w)))
    }
    fn describe(&self) -> String {
        let files: Vec<String> = self.files.iter().map(|(p, s)| format!("{}:{s}", p.display())).collect();
        format!("{} + preset LoRA {}", self.inner.describe(), files.join(", "))
    }
    fn unsupported_dtype(&self, name: &str) -> Option<String> {
        self.inner.unsupported_dtype(name)
    }
}

/// The model of a run: `open(model, config)` with the presets folded in (none: as stored).
pub fn open_base(
    model: &std::path::Path,
    config: Option<&std::path::Path>,
    presets: &[(PathBuf, f32)],
) -> Result<(DitConfig, Box<dyn TensorSource>)> {
    let (cfg, ckpt) = crate::models::qwen_image::open::open(model, config)?;
    if presets.is_empty() {
        return Ok((cfg, Box::new(ckpt)));
    }
    let folded = Folded::new(Box::new(ckpt), &cfg, presets)?;
    Ok((cfg, Box::new(folded)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fold_adds_b_times_a_to_the_module_rows() {
        // W [3 rows, 2 cols] = 0; a rank-1 part on rows 1..3: B = [1, 2]ᵀ, A = [10, 20] (scaled)
        let mut w = vec![0f32; 6];
        fold(&mut w, 2, 1, &[LoraPart { a: vec![10.0, 20.0], b: vec![1.0, 2.0], rank: 1 }]);
        assert_eq!(w, [0.0, 0.0, 10.0, 20.0, 20.0, 40.0]);
    }
}
