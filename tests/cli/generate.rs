//! `wgdit generate`: the contract on the tiny pipeline folders, and every kind of bad input
//! refused with a clear message, a non-zero exit and no output file.

use crate::{assert_refused, fixture, tmp, wgdit};
use std::path::Path;

fn case(name: &str) -> String {
    fixture(&format!("pipeline/cases/{name}.safetensors"))
}

fn base<'a>(folder: &'a str, embeds: &'a str, out: &'a str) -> Vec<&'a str> {
    vec!["generate", "--model", folder, "--prompt-embeds", embeds, "--output", out, "--steps", "2"]
}

#[test]
fn generate_writes_a_safetensors_image_and_the_latents_and_prints_a_summary() {
    let (out, lat) = (tmp("gen.safetensors"), tmp("gen-latents.safetensors"));
    let (folder, embeds) = (fixture("pipeline/t2i"), case("t2i_cfg"));
    let mut args = base(&folder, &embeds, out.to_str().unwrap());
    args.extend(["--negative-prompt-embeds", &embeds, "--width", "48", "--height", "32", "--seed", "42"]);
    args.extend(["--save-latents", lat.to_str().unwrap(), "--qkv", "merged"]);
    let (ok, log) = wgdit(&args);
    assert!(ok, "{log}");
    assert!(log.contains("wrote") && log.contains("48x32") && log.contains("2 steps, true CFG"), "{log}");
    let bytes = std::fs::read(&out).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.tensor("image").unwrap().shape(), [1, 3, 32, 48]);
    let px: Vec<f32> = bytemuck::pod_collect_to_vec(st.tensor("image").unwrap().data());
    assert!(px.iter().all(|v| (0.0..=1.0).contains(v)), "the image is in [0, 1]");
    let bytes = std::fs::read(&lat).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.tensor("latents").unwrap().shape(), [1, 4, 1, 8, 12]);
    let _ = std::fs::remove_file(&out);
    let _ = std::fs::remove_file(&lat);
}

#[test]
fn generate_refuses_bad_arguments_and_files_and_writes_nothing() {
    let out = tmp("refused.png");
    let o = out.to_str().unwrap();
    let (t2i, edit) = (fixture("pipeline/t2i"), fixture("pipeline/edit"));
    let (embeds, image) = (case("t2i_cfg"), fixture("pipeline/inputs/ref_a.png"));
    let transformer = fixture("pipeline/t2i/transformer");

    let garbage = tmp("garbage.png");
    std::fs::write(&garbage, b"not an image at all").unwrap();
    let narrow = tmp("narrow.safetensors");
    write_f32(&narrow, "prompt_embeds", vec![1, 3, 5], &[0.1; 15]);
    let bad_noise = tmp("noise.safetensors");
    write_f32(&bad_noise, "noise", vec![1, 1, 4, 2, 2], &[0.0; 16]);

    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["generate", "--model", &t2i, "--prompt", "a cat", "--output", o],
            "no text_encoder/ in this pipeline folder",
        ),
        ([base(&t2i, &embeds, o), vec!["--image", &image]].concat(), "takes no --image"),
        (base(&edit, &embeds, o), "needs at least one --image"),
        ([base(&edit, &embeds, o), vec!["--image", &image, "--image", &image]].concat(), "takes one --image"),
        ([base(&edit, &embeds, o), vec!["--image", garbage.to_str().unwrap()]].concat(), "garbage.png"),
        ([base(&edit, &embeds, o), vec!["--image", "/nonexistent.png"]].concat(), "/nonexistent.png"),
        (base(&t2i, narrow.to_str().unwrap(), o), "joint_attention_dim is 24"),
        ([base(&t2i, &embeds, o), vec!["--width", "4"]].concat(), "is empty"),
        (
            [base(&t2i, &embeds, o), vec!["--width", "16", "--height", "16", "--noise", bad_noise.to_str().unwrap()]]
                .concat(),
            "this output size needs [1, 1, 4, 4, 4]",
        ),
        (base(&transformer, &embeds, o), "no model_index.json"),
        (vec!["generate", "--model", &t2i, "--prompt-embeds", &embeds, "--output", o, "--steps", "0"], "at least 1"),
        (
            vec!["generate", "--model", &t2i, "--prompt-embeds", &embeds, "--output", "x.gif"],
            "use a .png, .jpg, .webp or .safetensors",
        ),
    ];
    for (args, needle) in cases {
        assert_refused(&args, &out, needle);
    }
    assert!(!Path::new("x.gif").exists());
    for p in [garbage, narrow, bad_noise] {
        let _ = std::fs::remove_file(p);
    }
}

fn write_f32(path: &Path, name: &str, shape: Vec<usize>, v: &[f32]) {
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape, bytemuck::cast_slice(v)).unwrap();
    safetensors::serialize_to_file(vec![(name, view)], None, path).unwrap();
}

#[test]
fn bench_generate_plans_every_phase_of_the_real_models_without_weights() {
    let (ok, log) = wgdit(&["bench", "generate", "--preset", "qwen-image-edit", "--json"]);
    assert!(ok, "{log}");
    let v: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    let phases: Vec<&str> = v["phases"].as_array().unwrap().iter().map(|p| p["phase"].as_str().unwrap()).collect();
    assert_eq!(phases.len(), 6, "{phases:?}");
    // spec §2.4: a 1024² reference → 1036² for the vision tower → 74×74 patches → 1369 image tokens;
    // the encoder sees 128 prompt + 64 template + 1369 + 7 tokens.
    assert_eq!(phases[0], "vision tower 1036x1036, 5476 patches");
    assert_eq!(phases[1], "text encoder, 1568 tok");
    assert!(phases[2].starts_with("VAE encode 1024x1024") && phases[5].starts_with("VAE decode 1024x1024"));
    // The modulation precomputed as generate does: one row per step, before the loop.
    assert_eq!(phases[3], "modulation precompute, 50 t");
    assert_eq!(v["modulation"], "precompute");
    // 60·12·D² + 2·D² (mods, norm_out) + 256·D + D² (time embedding) bf16 weights, f32 biases.
    let d = 3072u64;
    let released = 2 * (60 * 12 * d * d + 2 * d * d + 256 * d + d * d) + 4 * (60 * 12 * d + 2 * d + 2 * d);
    assert_eq!(v["modulation_weight_bytes"].as_u64().unwrap(), released);
    // 50 rows of 60·12·D + 2·D f32, and each CFG pass's row.
    assert_eq!(v["modulation_vector_bytes"].as_u64().unwrap(), 52 * 4 * (60 * 12 * d + 2 * d));
    // 4096 target + 4096 reference + 128 text tokens.
    assert!(phases[4].contains("8320 tok"), "{phases:?}");
    let vision = v["vision_weight_bytes"].as_u64().unwrap();
    assert_eq!(vision, 2 * 676_550_144, "the vision tower's 676.55 M parameters (spec §2.6) in bf16");
    let text = v["text_weight_bytes"].as_u64().unwrap();
    // 28 layers of 233 057 792 parameters + the final norm (spec §2.6), bf16
    assert_eq!(text, 2 * (28 * 233_057_792 + 3584));
    let dit = v["dit_weight_bytes"].as_u64().unwrap();
    assert!((40_000_000_000..41_500_000_000).contains(&dit), "20.4B bf16 parameters: {dit}");
    // Inline: no precompute phase; each pass runs the time embedding and 7 modulation GEMMs.
    let (ok, log) = wgdit(&["bench", "generate", "--preset", "qwen-image-edit", "--modulation", "inline", "--json"]);
    assert!(ok, "{log}");
    let w: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    assert_eq!(w["phases"].as_array().unwrap().len(), 5);
    let step = |v: &serde_json::Value, i: usize| v["phases"][i]["dispatches"].as_u64().unwrap();
    assert_eq!(step(&w, 3), step(&v, 4) + 2 * 12);
}

#[test]
fn bench_generate_times_each_phase_of_the_tiny_pipeline() {
    let model = fixture("pipeline/edit");
    let args = ["bench", "generate", "--model", &model, "--width", "32", "--height", "32", "--steps", "2"];
    let (ok, log) = wgdit(&[&args[..], &["--ref-area", "1024"]].concat());
    assert!(ok, "{log}");
    for phase in ["VAE encode", "step: 2 DiT passes", "VAE decode", "weights: DiT"] {
        assert!(log.contains(phase), "{phase}: {log}");
    }
}
