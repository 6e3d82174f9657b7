//! `wgdit plan --json`: the contract keys and their types, a budget that does not fit, the
//! quantized byte count of a preset against the tensor list, and a checkpoint's own bytes.

use crate::{fixture, wgdit};
use wgdit::dtype::DType;
use wgdit::models::qwen_image::names::expected_tensors;
use wgdit::models::qwen_image::DitConfig;

fn plan_json(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["plan", "--json"];
    all.extend_from_slice(args);
    let (ok, log) = wgdit(&all);
    assert!(ok, "{log}");
    serde_json::from_str(log.trim()).unwrap_or_else(|e| panic!("not one JSON object ({e}): {log}"))
}

fn u64_of(v: &serde_json::Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("{key} is not an unsigned integer: {}", v[key]))
}

#[test]
fn plan_json_is_one_object_with_the_contract_keys_and_types() {
    let v = plan_json(&["--preset", "qwen-image", "--weights", "q4_k"]);
    assert!(v["fits"].is_boolean(), "fits: {}", v["fits"]);
    for key in ["peak_bytes", "weight_bytes", "resident_bytes", "streamed_bytes_per_step", "minimum_bytes"] {
        u64_of(&v, key);
    }
    // No budget: nothing checked, every block resident, the modulation precomputed.
    assert!(v["budget_bytes"].is_null() && v["fits"] == true);
    assert_eq!((u64_of(&v, "resident_blocks"), u64_of(&v, "streamed_bytes_per_step")), (60, 0));
    assert_eq!(v["modulation"], "precompute");
    assert!(u64_of(&v, "resident_bytes") < u64_of(&v, "weight_bytes"), "precompute releases the modulation weights");
    assert!(u64_of(&v, "peak_bytes") >= u64_of(&v, "resident_bytes") + u64_of(&v, "activation_bytes"));
    assert!(v["by_dtype"]["q4_k"]["bytes"].is_u64() && v["strategies"].as_array().unwrap().len() == 4);
}

#[test]
fn a_tiny_budget_does_not_fit_and_reports_the_least_any_strategy_needs() {
    let v =
        plan_json(&["--preset", "qwen-image-edit-2511", "--weights", "bf16", "--images", "3", "--vram-budget", "1G"]);
    assert_eq!(v["fits"], false);
    let min = u64_of(&v, "minimum_bytes");
    assert!(min > 1 << 30, "minimum {min}");
    let least = v["strategies"].as_array().unwrap().iter().map(|s| s["peak_bytes"].as_u64().unwrap()).min().unwrap();
    assert_eq!(min, least);
    assert_eq!(u64_of(&v, "peak_bytes"), min, "a plan that does not fit shows its least demanding strategy");
    assert_eq!(u64_of(&v, "resident_blocks"), 0);
    // The same request under the minimum itself fits.
    let budget = min.to_string();
    let v = plan_json(&[
        "--preset",
        "qwen-image-edit-2511",
        "--weights",
        "bf16",
        "--images",
        "3",
        "--vram-budget",
        &budget,
    ]);
    assert_eq!(v["fits"], true, "{v}");
    assert!(u64_of(&v, "peak_bytes") <= min && u64_of(&v, "streamed_bytes_per_step") > 0);
}

/// city96's ComfyUI-GGUF rule for Q4_K, written out again from the names and shapes.
fn q4_k_bytes(name: &str, shape: &[usize]) -> u64 {
    let numel: usize = shape.iter().product();
    let f16 = ["txt_in.", "time_text_embed.", "norm_out."];
    let dtype = if shape.len() == 1 || numel <= 1024 || name.starts_with("img_in.") || name.starts_with("proj_out.") {
        DType::F32
    } else if f16.iter().any(|p| name.starts_with(p)) || shape[1] % 256 != 0 {
        DType::F16
    } else {
        DType::Q4K
    };
    dtype.bytes(numel) as u64
}

#[test]
fn q4_k_weight_bytes_of_a_preset_are_the_planned_dtype_bytes_of_every_tensor() {
    let cfg = DitConfig::preset("qwen-image").unwrap();
    let want: u64 = expected_tensors(&cfg).iter().map(|(n, s)| q4_k_bytes(n, s)).sum();
    let v = plan_json(&["--preset", "qwen-image", "--weights", "q4_k"]);
    assert_eq!(u64_of(&v, "weight_bytes"), want);
    assert_eq!(u64_of(&v, "file_weight_bytes"), want);
    // 20.4 B parameters, nearly all at 4.5 bits: 10.8 GiB.
    assert!((want as f64 / (1u64 << 30) as f64 - 10.78).abs() < 0.01, "{want}");
}

/// Bytes of every tensor of a safetensors file, as stored.
fn file_tensor_bytes(path: &str) -> (u64, u64) {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (mut all, mut one_d_elements) = (0, 0);
    for (_, t) in st.tensors() {
        all += t.data().len() as u64;
        if t.shape().len() == 1 {
            one_d_elements += t.shape()[0] as u64;
        }
    }
    (all, one_d_elements)
}

#[test]
fn plan_with_a_model_counts_the_bytes_of_its_files_tensors() {
    // tiny: f32 throughout, so the GPU holds exactly the file's bytes.
    let (f32_bytes, _) = file_tensor_bytes(&fixture("dit/tiny/diffusion_pytorch_model.safetensors"));
    let v = plan_json(&["--model", &fixture("dit/tiny"), "--width", "64", "--height", "64"]);
    assert_eq!((u64_of(&v, "weight_bytes"), u64_of(&v, "file_weight_bytes")), (f32_bytes, f32_bytes));
    assert_eq!(v["weights"], "file");
    // tiny-bf16: the loader widens 1-D tensors (biases, norms) to f32 on the GPU.
    let (bf16_bytes, one_d) = file_tensor_bytes(&fixture("dit/tiny-bf16/diffusion_pytorch_model.safetensors"));
    let v = plan_json(&["--model", &fixture("dit/tiny-bf16"), "--width", "64", "--height", "64"]);
    assert_eq!(u64_of(&v, "file_weight_bytes"), bf16_bytes);
    assert_eq!(u64_of(&v, "weight_bytes"), bf16_bytes + 2 * one_d);
    assert_eq!(
        v["by_dtype"]["bf16"]["bytes"].as_u64().unwrap() + v["by_dtype"]["f32"]["bytes"].as_u64().unwrap(),
        bf16_bytes + 2 * one_d
    );
    // A pipeline folder: its transformer and its VAE.
    let v = plan_json(&["--model", &fixture("pipeline/t2i"), "--width", "48", "--height", "32", "--steps", "3"]);
    assert_eq!(v["pipeline"], "QwenImagePipeline");
    assert!(u64_of(&v, "weight_bytes") > 0 && u64_of(&v, "vae_weight_bytes") > 0);
}

#[test]
fn plan_with_a_gguf_file_counts_its_quantized_tensors() {
    // `wgdit quantize` writes the tiny model as Q8_0 GGUF; the plan reads the blocks back.
    let out = crate::tmp("tiny-q8_0.gguf");
    let (ok, log) =
        wgdit(&["quantize", "--input", &fixture("dit/tiny"), "--output", out.to_str().unwrap(), "--type", "q8_0"]);
    assert!(ok, "{log}");
    let config = fixture("dit/tiny/config.json");
    let v = plan_json(&["--model", out.to_str().unwrap(), "--config", &config, "--width", "64", "--height", "64"]);
    std::fs::remove_file(&out).ok();
    let cfg = DitConfig::from_file(std::path::Path::new(&config)).unwrap();
    let want: u64 = expected_tensors(&cfg)
        .iter()
        .map(|(n, s)| wgdit::convert::quantize::planned_dtype(n, s, DType::Q8_0, &[]).bytes(s.iter().product()) as u64)
        .sum();
    assert_eq!(u64_of(&v, "file_weight_bytes"), want);
    assert_eq!(u64_of(&v, "weight_bytes"), want, "1-D tensors are F32 in the file already");
    assert!(v["by_dtype"]["q8_0"]["tensors"].as_u64().unwrap() > 0, "{}", v["by_dtype"]);
}

#[test]
fn plan_refuses_references_on_a_text_to_image_model_and_an_unknown_type() {
    let (ok, log) = wgdit(&["plan", "--preset", "qwen-image", "--weights", "q4_k", "--images", "2"]);
    assert!(!ok && log.contains("text-to-image"), "{log}");
    let (ok, log) = wgdit(&["plan", "--preset", "qwen-image", "--weights", "q9_k"]);
    assert!(!ok && log.contains("q4_k"), "{log}");
}

#[test]
fn plan_train_rank_streams_frozen_blocks_past_the_budget_and_keeps_them_resident_when_they_fit() {
    let run = |budget: &str| {
        let (ok, log) = wgdit(&[
            "plan",
            "--preset",
            "qwen-image",
            "--train-rank",
            "32",
            "--weights",
            "bf16",
            "--vram-budget",
            budget,
            "--json",
        ]);
        assert!(ok, "{log}");
        let v: serde_json::Value = serde_json::from_str(log.lines().find(|l| l.starts_with('{')).unwrap_or(&log))
            .unwrap_or_else(|e| panic!("{e}: {log}"));
        v["train"].clone()
    };
    let t = run("23.5G");
    assert_eq!(t["fits"], true, "{t}");
    let (resident, blocks) = (t["resident_blocks"].as_u64().unwrap(), t["blocks"].as_u64().unwrap());
    assert!(resident > 0 && resident < blocks, "{t}");
    assert!(
        t["streamed_bytes_per_step"].as_u64().unwrap() > 0
            && t["peak_bytes"].as_u64().unwrap() <= 23 * (1 << 30) + (1 << 29)
    );
    let t = run("79.5G");
    assert_eq!(
        (t["resident_blocks"].clone(), t["streamed_bytes_per_step"].clone()),
        (t["blocks"].clone(), 0.into()),
        "{t}"
    );
}
