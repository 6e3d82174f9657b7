//! Shared by the DiT tests: the fixtures written by tools/gen_dit_fixtures.py (diffusers 0.42.1,
//! float32) and a helper that runs one of them through wgdit.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use wgdit::models::qwen_image::lora::LoraSet;
use wgdit::models::qwen_image::open::open;
use wgdit::models::qwen_image::runtime::{Dit, DitPlan};
use wgdit::models::qwen_image::QkvMode;
use wgdit::pipeline::inputs::ForwardInputs;
use wgdit::testing::test_gpu;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// (model path, config path) of a fixture model name (the `model` metadata of a case).
pub fn model_paths(name: &str) -> (PathBuf, Option<PathBuf>) {
    let f = fixtures().join("dit");
    match name {
        "tiny-comfy" | "tiny-merged" => (f.join(format!("{name}.safetensors")), Some(f.join("tiny/config.json"))),
        "tiny-2511" => (f.join("tiny/diffusion_pytorch_model.safetensors"), Some(f.join("tiny-2511/config.json"))),
        dir => (f.join(dir), None),
    }
}

/// A safetensors file read whole; tensors as f32.
pub struct Fixture {
    pub bytes: Vec<u8>,
}

impl Fixture {
    pub fn read(path: &Path) -> Fixture {
        Fixture { bytes: std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())) }
    }
    pub fn get(&self, name: &str) -> Vec<f32> {
        let st = safetensors::SafeTensors::deserialize(&self.bytes).unwrap();
        let t = st.tensor(name).unwrap_or_else(|_| panic!("fixture tensor {name} missing"));
        bytemuck::pod_collect_to_vec(t.data())
    }
    pub fn shape(&self, name: &str) -> Vec<usize> {
        let st = safetensors::SafeTensors::deserialize(&self.bytes).unwrap();
        st.tensor(name).unwrap_or_else(|_| panic!("fixture tensor {name} missing")).shape().to_vec()
    }
    pub fn names(&self) -> Vec<String> {
        let st = safetensors::SafeTensors::deserialize(&self.bytes).unwrap();
        st.names().into_iter().map(str::to_string).collect()
    }
    pub fn meta(&self, key: &str) -> String {
        let (_, m) = safetensors::SafeTensors::read_metadata(&self.bytes).unwrap();
        m.metadata().as_ref().and_then(|m| m.get(key).cloned()).unwrap_or_else(|| panic!("metadata {key} missing"))
    }
}

/// Loads a model (checkpoint + config), plans `inputs`, poisons activations and runs.
pub fn run_model(
    model: &Path,
    config: Option<&Path>,
    inputs: &Path,
    mode: QkvMode,
    lora: LoraSet,
) -> (DitPlan, Vec<f32>) {
    run_model_on(&test_gpu(), model, config, inputs, mode, lora)
}

/// [`run_model`] on a given device (another kernel family or precision).
pub fn run_model_on(
    gpu: &std::sync::Arc<wgdit::gpu::Gpu>,
    model: &Path,
    config: Option<&Path>,
    inputs: &Path,
    mode: QkvMode,
    lora: LoraSet,
) -> (DitPlan, Vec<f32>) {
    let (cfg, ckpt) = open(model, config).unwrap();
    let inputs = ForwardInputs::from_file(inputs, &cfg).unwrap();
    let mut dit = Dit::new(gpu, cfg, Box::new(ckpt), mode).unwrap();
    dit.set_loras(lora);
    let plan = dit.plan(&inputs.shape(), true).unwrap();
    plan.plan.poison_activations();
    let out = plan.forward(&inputs).unwrap();
    (plan, out)
}
