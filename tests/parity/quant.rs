//! Quantized and fp8 weights (tools/gen_quant_dit_fixtures.py): the fixture model quantized by
//! `wgdit quantize` to every type, byte-checked against the files diffusers ran on (gguf-py's and
//! torch's dequantization), then run in all three `--qkv` modes.

use crate::quant_dit::{config, fixture_dir, write_source};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use wgdit::convert::quantize::{quantize, QuantizeOptions};
use wgdit::dtype::DType;
use wgdit::models::qwen_image::open::open;
use wgdit::models::qwen_image::runtime::Dit;
use wgdit::models::qwen_image::QkvMode;
use wgdit::pipeline::inputs::ForwardInputs;
use wgdit::testing::{stats, test_gpu};
use wgdit::weights::checkpoint::Checkpoint;

/// (fixture name, target type, scaled fp8, file extension).
const TYPES: [(&str, DType, bool, &str); 15] = [
    ("f16", DType::F16, false, "gguf"),
    ("bf16", DType::BF16, false, "gguf"),
    ("q8_0", DType::Q8_0, false, "gguf"),
    ("q4_0", DType::Q4_0, false, "gguf"),
    ("q4_1", DType::Q4_1, false, "gguf"),
    ("q5_0", DType::Q5_0, false, "gguf"),
    ("q5_1", DType::Q5_1, false, "gguf"),
    ("q2_k", DType::Q2K, false, "gguf"),
    ("q3_k", DType::Q3K, false, "gguf"),
    ("q4_k", DType::Q4K, false, "gguf"),
    ("q5_k", DType::Q5K, false, "gguf"),
    ("q6_k", DType::Q6K, false, "gguf"),
    ("f8_e4m3", DType::F8E4M3, false, "safetensors"),
    ("f8_e5m2", DType::F8E5M2, false, "safetensors"),
    ("f8_e4m3_scaled", DType::F8E4M3, true, "safetensors"),
];

/// Quantizes the rebuilt source into `dir` as `name` and checks the stored bytes are the ones the
/// generator's diffusers run read.
pub fn quantized(dir: &Path, (name, target, scaled, ext): (&str, DType, bool, &str)) -> PathBuf {
    let source = dir.join("source.safetensors");
    if !source.exists() {
        write_source(dir);
    }
    let output = dir.join(format!("{name}.{ext}"));
    let o = QuantizeOptions {
        input: source,
        output: output.clone(),
        target,
        keep: vec![],
        scaled,
        threads: 2,
        progress: false,
    };
    quantize(&o).unwrap();
    let ck = Checkpoint::open(&output).unwrap();
    let mut entries: Vec<_> = ck.entries.iter().filter(|e| !is_scale(&e.name)).collect();
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    let mut h = Sha256::new();
    for e in entries {
        h.update(ck.files[e.file].bytes(ck.info(e)));
    }
    let want = expected().meta(&format!("sha256.{name}"));
    assert_eq!(format!("{:x}", h.finalize()), want, "{name}: quantized bytes differ from the generator's file");
    output
}

fn is_scale(n: &str) -> bool {
    n == "scaled_fp8" || n.ends_with(".scale_weight") || n.ends_with(".scale_input")
}

fn expected() -> crate::diffusers_fixtures::Fixture {
    crate::diffusers_fixtures::Fixture::read(&fixture_dir().join("expected.safetensors"))
}

pub fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("wgdit-quant-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Forward-pass outputs are the f32 sums of exactly dequantized weights: diffusers' float32
/// matmuls on the same values, differing only in summation order.
const REL_L2: f64 = 1e-4;

#[test]
fn every_weight_type_runs_the_forward_like_diffusers_on_its_dequantized_weights_in_every_mode() {
    let gpu = test_gpu();
    let dir = scratch("forward");
    let inputs_path = fixture_dir().join("inputs.safetensors");
    let want_source = expected().get("output.source");
    for t in TYPES {
        let path = quantized(&dir, t);
        let want = expected().get(&format!("output.{}", t.0));
        for mode in QkvMode::ALL {
            let (cfg, ckpt) = open(&path, Some(&dir.join("config.json"))).unwrap();
            assert_eq!(cfg, config());
            let inputs = ForwardInputs::from_file(&inputs_path, &cfg).unwrap();
            let mut dit = Dit::new(&gpu, cfg, Box::new(ckpt), mode).unwrap();
            let plan = dit.plan(&inputs.shape(), false).unwrap();
            plan.plan.poison_activations();
            let out = plan.forward(&inputs).unwrap();
            let s = stats(&out, &want);
            let q = stats(&out, &want_source);
            println!(
                "{:16} {:8}: rel_l2 {:.2e} vs diffusers (output moved {:.2e} from the f32 model)",
                t.0,
                mode.name(),
                s.rel_l2,
                q.rel_l2
            );
            assert!(
                s.rel_l2 <= REL_L2,
                "{} {mode:?}: rel_l2 {:.3e} (max_abs {:.3e} at {})",
                t.0,
                s.rel_l2,
                s.max_abs,
                s.worst
            );
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// The f32 copy of a quantized file: every tensor dequantized on the host (`DType::decode`, the
/// reference of the GPU decoders), so that a run on it is the run on the quantized file's values.
pub fn dequantized_copy(path: &Path, dir: &Path, name: &str) -> PathBuf {
    let ck = Checkpoint::open(path).unwrap();
    let mut tensors = Vec::new();
    for e in ck.entries.iter().filter(|e| !is_scale(&e.name)) {
        let (dtype, shape) = ck.model_meta(&e.name).unwrap();
        let values = dtype.decode(&ck.model_bytes(&e.name).unwrap());
        tensors.push((e.name.clone(), shape, bytemuck::cast_slice::<f32, u8>(&values).to_vec()));
    }
    let views: Vec<_> = tensors
        .iter()
        .map(|(n, s, b)| {
            (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap())
        })
        .collect();
    let out = dir.join(format!("{name}-dequantized.safetensors"));
    safetensors::serialize_to_file(views, None, &out).unwrap();
    out
}

/// A rank-4 peft LoRA on the fixture model's attention and MLP projections (random, seeded).
fn write_lora(path: &Path) {
    let cfg = config();
    let d = cfg.hidden();
    let mut rng = wgdit::rng::Rng::new(77);
    let mut tensors = Vec::new();
    for (module, out, inp) in [
        ("transformer_blocks.0.attn.to_q", d, d),
        ("transformer_blocks.0.attn.add_v_proj", d, d),
        ("transformer_blocks.0.img_mlp.net.2", d, 4 * d),
        ("transformer_blocks.0.txt_mod.1", 6 * d, d),
    ] {
        let a = rng.vec_uniform(4 * inp, -0.1, 0.1);
        let b = rng.vec_uniform(out * 4, -0.1, 0.1);
        tensors.push((format!("{module}.lora_A.weight"), vec![4, inp], a));
        tensors.push((format!("{module}.lora_B.weight"), vec![out, 4], b));
    }
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> =
        tensors.into_iter().map(|(n, s, v)| (n, s, bytemuck::cast_slice::<f32, u8>(&v).to_vec())).collect();
    let views: Vec<_> = bytes
        .iter()
        .map(|(n, s, b)| {
            (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap())
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

fn forward_with(model: &Path, config: &Path, mode: QkvMode, lora: Option<&Path>) -> Vec<f32> {
    let (cfg, ckpt) = open(model, Some(config)).unwrap();
    let inputs = ForwardInputs::from_file(&fixture_dir().join("inputs.safetensors"), &cfg).unwrap();
    let loras: Vec<(PathBuf, f32)> = lora.map(|l| (l.to_path_buf(), 0.8)).into_iter().collect();
    let set = wgdit::models::qwen_image::lora::LoraSet::load(&loras, &cfg).unwrap();
    let mut dit = Dit::new(&test_gpu(), cfg, Box::new(ckpt), mode).unwrap();
    dit.set_loras(set);
    dit.plan(&inputs.shape(), false).unwrap().forward(&inputs).unwrap()
}

/// Same values, same kernels up to the weight decoder: only the f32 summation order of split
/// GEMMs may differ (none here), so the tolerance is f32 rounding.
const SAME_VALUES_REL_L2: f64 = 1e-6;

#[test]
fn runtime_loras_apply_on_quantized_bases_as_on_their_dequantized_copies() {
    let dir = scratch("lora");
    let lora = dir.join("lora.safetensors");
    write_lora(&lora);
    for t in TYPES.iter().filter(|t| ["q4_k", "q8_0", "q5_1", "f8_e4m3_scaled"].contains(&t.0)) {
        let q = quantized(&dir, *t);
        let f = dequantized_copy(&q, &dir, t.0);
        for mode in QkvMode::ALL {
            let cfg = dir.join("config.json");
            let (got, want) = (forward_with(&q, &cfg, mode, Some(&lora)), forward_with(&f, &cfg, mode, Some(&lora)));
            let plain = forward_with(&q, &cfg, mode, None);
            assert!(stats(&plain, &want).rel_l2 > 1e-3, "{}: the LoRA changes nothing", t.0);
            let s = stats(&got, &want);
            assert!(
                s.rel_l2 <= SAME_VALUES_REL_L2,
                "{} {mode:?}: LoRA on the quantized base rel_l2 {:.3e}",
                t.0,
                s.rel_l2
            );
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn every_weight_type_is_a_frozen_training_base_that_trains_like_its_dequantized_copy() {
    use wgdit::train::run::{train, TrainOptions};
    let gpu = test_gpu();
    let dir = scratch("train");
    let data = dir.join("data");
    wgdit::train::data::write_synthetic(&data, &config(), 2, [8, 8], 5, 3).unwrap();
    let run = |model: &Path, tag: &str| {
        let mut o = TrainOptions::new(model.to_path_buf(), data.clone(), dir.join(format!("out-{tag}")), 2);
        o.config = Some(dir.join("config.json"));
        (o.rank, o.alpha, o.lr, o.seed) = (4, 4.0, 1e-2, 1);
        train(&gpu, &o).unwrap().losses
    };
    for t in TYPES {
        let q = quantized(&dir, t);
        let f = dequantized_copy(&q, &dir, t.0);
        let (got, want) = (run(&q, t.0), run(&f, &format!("{}-f32", t.0)));
        println!("{:16} losses {got:?} vs dequantized {want:?}", t.0);
        // Same values through the same kernels: the losses agree to f32 rounding (measured: bit for bit).
        for (g, w) in got.iter().zip(&want) {
            assert!(g.is_finite() && (g - w).abs() <= 1e-5 * w.abs().max(1.0), "{}: loss {g} vs {w}", t.0);
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn generate_makes_the_same_picture_from_a_quantized_transformer_file_as_from_its_dequantized_copy() {
    use wgdit::pipeline::generate::{generate, GenerateOptions, Noise, Prompt};
    let dir = scratch("generate");
    let pipeline = crate::diffusers_fixtures::fixtures().join("pipeline/t2i");
    let embeds = crate::diffusers_fixtures::fixtures().join("pipeline/cases/t2i_cfg.safetensors");
    let image = |transformer: &Path, out: &str| {
        let mut o = GenerateOptions::new(pipeline.clone(), Prompt::Embeds(embeds.clone()), dir.join(out));
        o.negative = Some(Prompt::Embeds(embeds.clone()));
        (o.steps, o.noise, o.width, o.height) = (2, Noise::Seed(5), Some(32), Some(32));
        o.transformer = Some(transformer.to_path_buf());
        generate(&test_gpu(), &o, &mut |_| {}).unwrap();
        crate::diffusers_fixtures::Fixture::read(&dir.join(out)).get("image")
    };
    for t in TYPES.iter().filter(|t| ["q4_k", "q6_k", "q4_0", "f8_e5m2"].contains(&t.0)) {
        let q = quantized(&dir, *t);
        let f = dequantized_copy(&q, &dir, t.0);
        let s =
            stats(&image(&q, &format!("img-{}.safetensors", t.0)), &image(&f, &format!("img-{}-f32.safetensors", t.0)));
        assert!(s.rel_l2 <= SAME_VALUES_REL_L2, "{}: picture rel_l2 {:.3e}", t.0, s.rel_l2);
    }
    std::fs::remove_dir_all(&dir).ok();
}
