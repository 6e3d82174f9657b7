//! `wgdit forward`, `devices`, `convert` and `bench`: contracts and clear errors on bad input.

use crate::{fixture, tmp, wgdit};

#[test]
fn forward_writes_the_output_tensor_and_matches_diffusers() {
    let out = tmp("out.safetensors");
    let (ok, log) = wgdit(&[
        "forward",
        "--model",
        &fixture("dit/tiny"),
        "--inputs",
        &fixture("dit/cases/odd_grid.inputs.safetensors"),
        "--output",
        out.to_str().unwrap(),
        "--qkv",
        "merged",
    ]);
    assert!(ok, "{log}");
    let bytes = std::fs::read(&out).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor("output").unwrap();
    assert_eq!(t.shape(), [1, 15, 16]);
    let got: Vec<f32> = bytemuck::pod_collect_to_vec(t.data());
    let exp = std::fs::read(fixture("dit/cases/odd_grid.expected.safetensors")).unwrap();
    let exp = safetensors::SafeTensors::deserialize(&exp).unwrap();
    let want: Vec<f32> = bytemuck::pod_collect_to_vec(exp.tensor("output").unwrap().data());
    assert!(wgdit::testing::stats(&got, &want).rel_l2 < 1e-4);
    std::fs::remove_file(out).ok();
}

#[test]
fn forward_with_precomputed_modulation_writes_the_same_bits_as_inline() {
    let read = |p: &std::path::Path| {
        std::fs::read(p).map(|b| {
            let st = safetensors::SafeTensors::deserialize(&b).unwrap();
            st.tensor("output").unwrap().data().to_vec()
        })
    };
    let mut outs = Vec::new();
    for m in ["inline", "precompute"] {
        let out = tmp(&format!("out-{m}.safetensors"));
        let (ok, log) = wgdit(&[
            "forward",
            "--model",
            &fixture("dit/tiny/diffusion_pytorch_model.safetensors"),
            "--config",
            &fixture("dit/tiny-2511/config.json"),
            "--inputs",
            &fixture("dit/cases/zero_cond_t.inputs.safetensors"),
            "--output",
            out.to_str().unwrap(),
            "--modulation",
            m,
        ]);
        assert!(ok, "{log}");
        outs.push(read(&out).unwrap());
        std::fs::remove_file(out).ok();
    }
    assert_eq!(outs[0], outs[1], "zero_cond_t forward: precompute differs from inline");
}

#[test]
fn forward_refuses_inputs_that_disagree_with_the_model_and_writes_nothing() {
    // Only a (mis-shaped) hidden_states: the first problem found is reported by name.
    let inputs = tmp("bad.safetensors");
    let hs = vec![0f32; 15 * 8];
    let views = vec![(
        "hidden_states",
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1, 15, 8], bytemuck::cast_slice(&hs))
            .unwrap(),
    )];
    safetensors::serialize_to_file(views, None, &inputs).unwrap();
    let out = tmp("never.safetensors");
    let (ok, log) = wgdit(&[
        "forward",
        "--model",
        &fixture("dit/tiny"),
        "--inputs",
        inputs.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(!ok, "a bad input must fail");
    assert!(log.contains("tensor `encoder_hidden_states` missing"), "unclear error: {log}");
    assert!(!out.exists(), "no output may be left behind");
    std::fs::remove_file(inputs).ok();
}

#[test]
fn forward_names_a_lora_passed_as_the_model() {
    let (ok, log) = wgdit(&[
        "forward",
        "--model",
        &fixture("lora/peft.safetensors"),
        "--config",
        &fixture("dit/tiny/config.json"),
        "--inputs",
        &fixture("dit/cases/odd_grid.inputs.safetensors"),
        "--output",
        tmp("x.safetensors").to_str().unwrap(),
    ]);
    assert!(!ok && log.contains("pass it with --lora"), "{log}");
}

#[test]
fn bench_dispatches_prints_one_json_object_per_mode_for_the_preset() {
    let (ok, log) = wgdit(&["bench", "dispatches", "--preset", "qwen-image", "--json"]);
    assert!(ok, "{log}");
    let rows: Vec<serde_json::Value> =
        log.lines().filter(|l| l.starts_with('{')).map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 3);
    let per_block: Vec<u64> = rows.iter().map(|r| r["dispatches_per_block"].as_u64().unwrap()).collect();
    assert_eq!(per_block, [20, 16, 8]);
    for r in &rows {
        for key in ["mode", "dispatches_per_step", "peak_activation_bytes", "by_op"] {
            assert!(!r[key].is_null(), "missing {key} in {r}");
        }
    }
}

#[test]
fn devices_lists_the_adapter_with_features_and_limits() {
    let (ok, log) = wgdit(&["devices"]);
    assert!(ok, "{log}");
    assert!(log.contains("features:") && log.contains("storage binding"), "{log}");
    // the binding wgdit uses (capped at 2 GiB − 1) beside the adapter's own limit
    assert!(log.contains("MiB (adapter "), "{log}");
    // every GPU command takes --trusted-shaders (GpuArgs)
    let (ok, log) = wgdit(&["devices", "--trusted-shaders"]);
    assert!(ok, "{log}");
    // the kernel choice, with its reason; forced families resolve or say why not
    assert!(log.contains("kernels: portable (precision f32") && log.contains("a CPU adapter"), "{log}");
    assert!(log.contains("subgroup size") && log.contains("cooperative matrices: none"), "{log}");
    let (ok, log) = wgdit(&["devices", "--kernels", "coop-emulated"]);
    assert!(ok && log.contains("kernels: coop-emulated (precision mixed"), "{log}");
    let (ok, log) = wgdit(&["devices", "--kernels", "coop"]);
    assert!(!ok && log.contains("no cooperative matrices") && log.contains("coop-emulated"), "{log}");
    let (ok, log) = wgdit(&["devices", "--kernels", "f16", "--precision", "f32"]);
    assert!(!ok && log.contains("--precision mixed"), "{log}");
}

#[test]
fn forward_with_each_mixed_precision_family_stays_near_diffusers_and_a_missing_one_is_refused() {
    let exp = std::fs::read(fixture("dit/cases/odd_grid.expected.safetensors")).unwrap();
    let exp = safetensors::SafeTensors::deserialize(&exp).unwrap();
    let want: Vec<f32> = bytemuck::pod_collect_to_vec(exp.tensor("output").unwrap().data());
    let run = |extra: &[&str]| {
        let out = tmp("out-mixed.safetensors");
        let (model, inputs) = (fixture("dit/tiny"), fixture("dit/cases/odd_grid.inputs.safetensors"));
        let mut args = vec!["forward", "--model", &model, "--inputs", &inputs, "--output"];
        let o = out.to_str().unwrap().to_string();
        args.push(&o);
        args.extend_from_slice(extra);
        let (ok, log) = wgdit(&args);
        let got = ok.then(|| {
            let bytes = std::fs::read(&out).unwrap();
            let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            bytemuck::pod_collect_to_vec::<u8, f32>(st.tensor("output").unwrap().data())
        });
        std::fs::remove_file(&out).ok();
        (got, log)
    };
    for family in ["coop-emulated", "f16"] {
        let (got, log) = run(&["--kernels", family]);
        let got = got.unwrap_or_else(|| panic!("{family}: {log}"));
        let rel = wgdit::testing::stats(&got, &want).rel_l2;
        assert!(rel < 1.5e-3 && rel > 1e-6, "{family}: rel_l2 {rel:.2e}");
    }
    let (got, log) = run(&["--precision", "mixed"]);
    assert!(got.is_some(), "{log}");
    let (got, log) = run(&["--kernels", "coop"]);
    assert!(got.is_none() && log.contains("--kernels coop"), "{log}");
}

#[test]
fn a_tensor_larger_than_one_binding_is_refused_with_a_clear_error() {
    let gpu = wgdit::testing::test_gpu();
    let too_big = gpu.limits().max_storage_binding + 4;
    let e = gpu.buffer(too_big, "transformer_blocks.0.img_mlp.net.0.proj.weight").unwrap_err().to_string();
    assert!(e.contains("img_mlp.net.0.proj.weight") && e.contains("binds at most"), "{e}");
}

/// A 5-block model folder of seeded random bf16 weights with the tiny fixture's config (its
/// inputs files fit), written with the safetensors crate.
fn five_block_model(dir: &std::path::Path) -> wgdit::models::qwen_image::DitConfig {
    use wgdit::models::qwen_image::load::{RandomWeights, TensorSource};
    std::fs::create_dir_all(dir).unwrap();
    let text = std::fs::read_to_string(fixture("dit/tiny/config.json")).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["num_layers"] = 5.into();
    std::fs::write(dir.join("config.json"), json.to_string()).unwrap();
    let cfg = wgdit::models::qwen_image::DitConfig::from_file(&dir.join("config.json")).unwrap();
    let w = RandomWeights::new(&cfg, wgdit::dtype::DType::BF16, 4);
    let names = w.names();
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = names
        .iter()
        .map(|n| {
            let (_, shape) = w.meta(n).unwrap();
            (n.clone(), shape, w.bytes(n).unwrap().into_owned())
        })
        .collect();
    let views = tensors.iter().map(|(n, shape, b)| {
        let dt = if shape.len() == 2 { safetensors::Dtype::BF16 } else { safetensors::Dtype::F32 };
        (n.as_str(), safetensors::tensor::TensorView::new(dt, shape.clone(), b).unwrap())
    });
    safetensors::serialize_to_file(views, None, &dir.join("diffusion_pytorch_model.safetensors")).unwrap();
    cfg
}

#[test]
fn forward_under_a_vram_budget_streams_blocks_and_writes_the_same_output() {
    use wgdit::models::qwen_image::{open::open, residency::residency, runtime::Dit, QkvMode};
    let dir = tmp("five-blocks");
    five_block_model(&dir);
    let model = dir.display().to_string();
    let inputs = fixture("dit/cases/odd_grid.inputs.safetensors");
    let (cfg, ckpt) = open(&dir, None).unwrap();
    let shape = wgdit::pipeline::inputs::ForwardInputs::from_file(std::path::Path::new(&inputs), &cfg).unwrap().shape();
    let s = Dit::new(&wgdit::testing::test_gpu(), cfg, Box::new(ckpt), QkvMode::Fused).unwrap().stream_inputs(&shape);
    // A fresh process holds nothing else: this budget is exactly the all-streamed plan.
    let min = residency(&s.block_bytes, s.other_bytes, s.activation_peak, 0).peak_bytes;
    let run = |name: &str, budget: Option<u64>| {
        let out = tmp(name);
        let mut args = vec!["forward", "--model", &model, "--inputs", &inputs, "--output"];
        let (o, b) = (out.to_str().unwrap().to_string(), budget.map(|b| b.to_string()));
        args.push(&o);
        if let Some(b) = &b {
            args.extend(["--vram-budget", b.as_str()]);
        }
        let (ok, log) = wgdit(&args);
        assert!(ok, "{log}");
        let bytes = std::fs::read(&out).unwrap();
        std::fs::remove_file(&out).ok();
        (bytes, log)
    };
    let (resident, _) = run("resident.safetensors", None);
    let (streamed, log) = run("streamed.safetensors", Some(min));
    assert!(log.contains("weight streaming: 0/5 blocks resident"), "{log}");
    assert_eq!(streamed, resident, "the streamed forward must write the same file");
    let out = tmp("over.safetensors");
    let budget = (min - 1).to_string();
    let args = ["forward", "--model", &model, "--inputs", &inputs, "--output", out.to_str().unwrap()];
    let args: Vec<&str> = args.iter().copied().chain(["--vram-budget", budget.as_str()]).collect();
    crate::assert_refused(&args, &out, &format!("needs at least {}", wgdit::budget::human(min)));
    std::fs::remove_dir_all(&dir).ok();
}
