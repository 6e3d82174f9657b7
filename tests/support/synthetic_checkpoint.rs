//! Synthetic tiny Qwen-Image checkpoints with the real tensor names (spec §2.2), written and read
//! with the `safetensors` crate (independent of `wgdit::weights`); shared by the weights and train tests.
#![allow(dead_code)]

use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use wgdit::convert::{convert, ConvertOptions, DtypeChoice, Report, Target};
use wgdit::rng::Rng;
use wgdit::tensor::DType;

/// Tiny DiT: D = 32 (2 heads × 16), joint_attention_dim 24, in_channels 16, out 16, 2 blocks.
pub const D: usize = 32;
pub const TXT: usize = 24;
pub const IN: usize = 16;
pub const BLOCKS: usize = 2;

/// (name, shape) of every tensor of the tiny model in the standard layout.
pub fn tiny_shapes() -> Vec<(String, Vec<usize>)> {
    let lin = |n: &str, o: usize, i: usize| vec![(format!("{n}.weight"), vec![o, i]), (format!("{n}.bias"), vec![o])];
    let mut v = Vec::new();
    v.extend(lin("img_in", D, IN));
    v.push(("txt_norm.weight".to_string(), vec![TXT]));
    v.extend(lin("txt_in", D, TXT));
    v.extend(lin("time_text_embed.timestep_embedder.linear_1", D, 256));
    v.extend(lin("time_text_embed.timestep_embedder.linear_2", D, D));
    v.extend(lin("norm_out.linear", 2 * D, D));
    v.extend(lin("proj_out", 16, D));
    for b in 0..BLOCKS {
        let p = |s: &str| format!("transformer_blocks.{b}.{s}");
        for m in ["img_mod.1", "txt_mod.1"] {
            v.extend(lin(&p(m), 6 * D, D));
        }
        for m in [
            "attn.to_q",
            "attn.to_k",
            "attn.to_v",
            "attn.add_q_proj",
            "attn.add_k_proj",
            "attn.add_v_proj",
            "attn.to_out.0",
            "attn.to_add_out",
        ] {
            v.extend(lin(&p(m), D, D));
        }
        for n in ["attn.norm_q", "attn.norm_k", "attn.norm_added_q", "attn.norm_added_k"] {
            v.push((format!("{}.weight", p(n)), vec![16]));
        }
        for s in ["img_mlp", "txt_mlp"] {
            v.extend(lin(&p(&format!("{s}.net.0.proj")), 4 * D, D));
            v.extend(lin(&p(&format!("{s}.net.2")), D, 4 * D));
        }
    }
    v
}

pub fn st_dtype(d: DType) -> Dtype {
    match d {
        DType::F32 => Dtype::F32,
        DType::F16 => Dtype::F16,
        DType::BF16 => Dtype::BF16,
        DType::F8E4M3 => Dtype::F8_E4M3,
        DType::F8E5M2 => Dtype::F8_E5M2,
        d => panic!("{} has no safetensors dtype", d.name()),
    }
}

/// A host tensor: dtype, shape, little-endian bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct Raw {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

impl Raw {
    pub fn f32s(&self) -> Vec<f32> {
        let d = match self.dtype {
            Dtype::F32 => DType::F32,
            Dtype::F16 => DType::F16,
            Dtype::BF16 => DType::BF16,
            other => panic!("unexpected dtype {other:?}"),
        };
        d.decode(&self.bytes)
    }
}

/// Random tiny-model tensors in `dtype`, keys prefixed with `prefix`.
pub fn tiny_model(dtype: DType, prefix: &str, seed: u64) -> BTreeMap<String, Raw> {
    let mut rng = Rng::new(seed);
    tiny_shapes()
        .into_iter()
        .map(|(n, shape)| {
            let v = rng.vec_normal(shape.iter().product(), 1.0);
            (format!("{prefix}{n}"), Raw { dtype: st_dtype(dtype), shape, bytes: dtype.encode(&v) })
        })
        .collect()
}

pub fn write_st(path: &Path, tensors: &BTreeMap<String, Raw>, metadata: Option<HashMap<String, String>>) {
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, r)| (n.clone(), safetensors::tensor::TensorView::new(r.dtype, r.shape.clone(), &r.bytes).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, metadata, path).unwrap();
}

pub fn read_st(path: &Path) -> BTreeMap<String, Raw> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    st.tensors()
        .into_iter()
        .map(|(n, v)| (n, Raw { dtype: v.dtype(), shape: v.shape().to_vec(), bytes: v.data().to_vec() }))
        .collect()
}

pub fn read_meta(path: &Path) -> HashMap<String, String> {
    let bytes = std::fs::read(path).unwrap();
    let (_, m) = SafeTensors::read_metadata(&bytes).unwrap();
    m.metadata().clone().unwrap_or_default()
}

/// A fresh, empty temporary folder for one test.
pub fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("wgdit-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn opts(input: &Path, output: &Path, to: Target) -> ConvertOptions {
    ConvertOptions {
        input: input.to_path_buf(),
        output: output.to_path_buf(),
        to,
        format: None,
        dtype: DtypeChoice::Keep,
        shard_size: None,
        dry_run: false,
        progress: false,
    }
}

pub fn run(o: &ConvertOptions) -> Report {
    convert(o).unwrap_or_else(|e| panic!("convert {} -> {}: {e}", o.input.display(), o.output.display()))
}

/// File names in a folder, sorted.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}
