//! Writers for the canonical LoRA form, one per format (see `lora.rs` for the key table). The
//! diffusers/PEFT writer is the default and what the trainer saves: `transformer.P.lora_A.weight`
//! keys plus the `lora_adapter_metadata` header (`transformer.r`, `transformer.lora_alpha`,
//! `transformer.target_modules`, and `rank_pattern`/`alpha_pattern` for modules that differ),
//! which `QwenImagePipeline.load_lora_weights` turns into a PEFT `LoraConfig`.

use super::lora::{Lora, LoraFormat, LoraModule, ADAPTER_METADATA_KEY, QKV_RANKS_KEY};
use super::writer::{write_safetensors, OutTensor, Source, TempOutput};
use crate::dtype::DType;
use crate::Result;
use indicatif::ProgressBar;
use std::borrow::Cow;
use std::path::Path;

/// Writes `lora` to `path` atomically in `format`; `dtype` overrides the stored dtypes.
/// Returns the bytes written.
pub fn write_lora(path: &Path, lora: &Lora, format: LoraFormat, dtype: Option<DType>) -> Result<u64> {
    let mut tensors = Vec::new();
    for (p, m) in &lora.modules {
        push_module(&mut tensors, p, m, format, dtype);
    }
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    let mut metadata = lora.extra_metadata.clone();
    if format == LoraFormat::Diffusers {
        metadata.insert("format".into(), "pt".into());
        metadata.insert(ADAPTER_METADATA_KEY.into(), adapter_metadata(lora));
    }
    if !lora.qkv_ranks.is_empty() {
        metadata.insert(QKV_RANKS_KEY.into(), serde_json::to_string(&lora.qkv_ranks).expect("cannot fail: plain map"));
    }
    let tmp = TempOutput::new(path, false)?;
    let n = write_safetensors(&tmp.tmp, &tensors, &metadata, &ProgressBar::hidden())?;
    tmp.commit()?;
    Ok(n)
}

fn push_module<'a>(
    out: &mut Vec<OutTensor<'a>>,
    path: &str,
    m: &'a LoraModule,
    format: LoraFormat,
    dtype: Option<DType>,
) {
    let (stem, a, b) = match format {
        LoraFormat::Diffusers => (format!("transformer.{path}"), "lora_A.weight", "lora_B.weight"),
        LoraFormat::DiffSynth => (path.to_string(), "lora_A.default.weight", "lora_B.default.weight"),
        LoraFormat::Kohya => {
            (format!("lora_unet_{}", super::lora::path_to_kohya(path)), "lora_down.weight", "lora_up.weight")
        }
        LoraFormat::ComfyUI => (format!("diffusion_model.{path}"), "lora_A.weight", "lora_B.weight"),
    };
    let host = |name: String, t: &'a super::lora::HostTensor| OutTensor {
        name,
        dtype: dtype.unwrap_or(t.dtype),
        shape: t.shape.clone(),
        source: Source::Host(Cow::Borrowed(&t.data)),
    };
    out.push(host(format!("{stem}.{a}"), &m.a));
    out.push(host(format!("{stem}.{b}"), &m.b));
    // diffusers carries alpha in the header; kohya always stores it; the others only when the
    // scale is not 1 (their loaders default to alpha = rank).
    let alpha_tensor = match format {
        LoraFormat::Diffusers => false,
        LoraFormat::Kohya => true,
        LoraFormat::DiffSynth | LoraFormat::ComfyUI => m.alpha != m.rank() as f64,
    };
    if alpha_tensor {
        let v = Cow::Owned(vec![m.alpha as f32]);
        out.push(OutTensor {
            name: format!("{stem}.alpha"),
            dtype: DType::F32,
            shape: vec![],
            source: Source::Host(v),
        });
    }
}

/// The PEFT `LoraConfig` subset diffusers needs, prefixed `transformer.` as
/// `QwenImageLoraLoaderMixin.save_lora_weights` does (`_pack_dict_with_prefix`).
fn adapter_metadata(lora: &Lora) -> String {
    let r = most_common(lora.modules.values().map(|m| m.rank() as f64)) as usize;
    let alpha = most_common(lora.modules.values().map(|m| m.alpha));
    let mut rank_pattern = serde_json::Map::new();
    let mut alpha_pattern = serde_json::Map::new();
    for (p, m) in &lora.modules {
        if m.rank() != r {
            rank_pattern.insert(p.clone(), m.rank().into());
        }
        if m.alpha != alpha {
            alpha_pattern.insert(p.clone(), number(m.alpha));
        }
    }
    let targets: Vec<&String> = lora.modules.keys().collect();
    let json = serde_json::json!({
        "transformer.r": r,
        "transformer.lora_alpha": number(alpha),
        "transformer.target_modules": targets,
        "transformer.rank_pattern": rank_pattern,
        "transformer.alpha_pattern": alpha_pattern,
        "transformer.use_rslora": false,
        "transformer.use_dora": false,
    });
    serde_json::to_string_pretty(&json).expect("cannot fail: plain JSON")
}

/// Integral alphas as JSON integers (as PEFT writes them), others as floats.
fn number(x: f64) -> serde_json::Value {
    if x.fract() == 0.0 && x.abs() < 9.0e15 {
        serde_json::Value::from(x as i64)
    } else {
        serde_json::Value::from(x)
    }
}

/// The most frequent value (ties: the smallest), or 0 for none.
fn most_common(values: impl Iterator<Item = f64>) -> f64 {
    let mut counts: Vec<(f64, usize)> = Vec::new();
    for v in values {
        match counts.iter_mut().find(|(x, _)| *x == v) {
            Some((_, c)) => *c += 1,
            None => counts.push((v, 1)),
        }
    }
    counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.total_cmp(&b.0)));
    counts.first().map_or(0.0, |c| c.0)
}
