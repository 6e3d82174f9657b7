//! The quantization fixture model (tools/gen_quant_dit_fixtures.py): weights that are a pure
//! function of their names, so that the tests rebuild the source checkpoint instead of committing
//! it, bit for bit the f32 values the generator fed to `wgdit quantize` and to diffusers.

use std::path::{Path, PathBuf};
use wgdit::models::qwen_image::names::expected_tensors;
use wgdit::models::qwen_image::DitConfig;

pub fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/quant_dit")
}

pub fn config() -> DitConfig {
    DitConfig::from_file(&fixture_dir().join("config.json")).unwrap()
}

fn fnv1a(name: &str) -> u64 {
    name.bytes().fold(0xCBF29CE484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001B3))
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E3779B97F4A7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
    z ^ (z >> 31)
}

fn gain(name: &str) -> f64 {
    let ends = |s: &[&str]| s.iter().any(|e| name.ends_with(e));
    if ends(&["img_mod.1.weight", "txt_mod.1.weight"]) || name == "norm_out.linear.weight" {
        1.5
    } else if ends(&["to_out.0.weight", "to_add_out.weight", "timestep_embedder.linear_2.weight"]) {
        2.0
    } else {
        1.0
    }
}

/// The generator's `det_values`: the same f32 operations in the same order.
pub fn det_values(name: &str, shape: &[usize]) -> Vec<f32> {
    let n: usize = shape.iter().product();
    let base = fnv1a(name);
    (0..n as u64)
        .map(|i| {
            let u = (splitmix(base.wrapping_add(i)) >> 40) as f32 / (1u32 << 24) as f32;
            let s = 2.0f32 * u - 1.0;
            if shape.len() == 2 {
                s * (3f64.sqrt() * gain(name) / (shape[1] as f64).sqrt()) as f32
            } else if name.contains("norm") {
                1.0f32 + s * (0.2 * 3f64.sqrt()) as f32
            } else {
                s * (0.1 * 3f64.sqrt()) as f32
            }
        })
        .collect()
}

/// Writes the f32 source checkpoint and its config.json into `dir`; returns the weights' path.
pub fn write_source(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let cfg = config();
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = expected_tensors(&cfg)
        .into_iter()
        .map(|(name, shape)| {
            let bytes = bytemuck::cast_slice(&det_values(&name, &shape)).to_vec();
            (name, shape, bytes)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, s, b)| {
            (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap())
        })
        .collect();
    let path = dir.join("source.safetensors");
    safetensors::serialize_to_file(views, None, &path).unwrap();
    std::fs::copy(fixture_dir().join("config.json"), dir.join("config.json")).unwrap();
    path
}
