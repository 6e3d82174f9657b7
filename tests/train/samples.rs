//! `train --sample-every`: pictures with the LoRA of steps 0, K, 2K, … and the last step.

use std::path::{Path, PathBuf};
use wgdit::testing::{test_gpu, text_pipeline};
use wgdit::train::run::{train, TrainOptions};
use wgdit::train::samples::{sample_path, SampleOptions};

/// A run of `steps` on the tiny t2i pipeline, two synthetic samples fitting its transformer.
fn options(dir: &Path, steps: u64, samples: SampleOptions) -> TrainOptions {
    let pipeline = text_pipeline("t2i").unwrap();
    let cfg = wgdit::models::qwen_image::DitConfig::from_file(&pipeline.join("transformer/config.json")).unwrap();
    wgdit::train::data::write_synthetic(&dir.join("data"), &cfg, 2, [8, 8], 5, 3).unwrap();
    let mut o = TrainOptions::new(pipeline, dir.join("data"), dir.join("out"), steps);
    (o.rank, o.alpha, o.lr, o.seed, o.weight_decay) = (4, 4.0, 3e-2, 1, 0.0);
    o.samples = Some(samples);
    o
}

fn sampling(every: u64, prompts: &[&str]) -> SampleOptions {
    let mut s = SampleOptions::new(every, prompts.iter().map(|p| p.to_string()).collect());
    (s.steps, s.size, s.seed) = (2, Some((32, 16)), 7);
    s
}

/// `generate` of "A cat" as `sampling` draws it (2 steps, 32×16, seed 7) with `lora` (and
/// `transformer` in place of the folder's): its RGB pixels.
fn generated(model: &Path, transformer: Option<&Path>, lora: &Path, png: &Path) -> Vec<u8> {
    use wgdit::pipeline::generate::{generate, GenerateOptions, Noise, Prompt};
    let mut g = GenerateOptions::new(model.to_path_buf(), Prompt::Text("A cat".into()), png.to_path_buf());
    (g.steps, g.width, g.height, g.noise) = (2, Some(32), Some(16), Noise::Seed(7));
    (g.transformer, g.loras) = (transformer.map(Path::to_path_buf), vec![(lora.to_path_buf(), 1.0)]);
    generate(&test_gpu(), &g, &mut |_| {}).unwrap();
    pixels(&png.to_path_buf(), (32, 16))
}

/// The RGB pixels of a PNG, checking its size.
fn pixels(path: &PathBuf, wh: (u32, u32)) -> Vec<u8> {
    let img = image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).to_rgb8();
    assert_eq!(img.dimensions(), wh, "{}", path.display());
    img.into_raw()
}

#[test]
fn samples_are_drawn_at_step_zero_every_k_steps_and_show_the_lora_learning() {
    let gpu = test_gpu();
    let dir = std::env::temp_dir().join(format!("wgdit-samples-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = dir.join("out");
    train(&gpu, &options(&dir, 4, sampling(2, &["A cat", "A red house"]))).unwrap();
    for step in [0, 2, 4] {
        for i in 0..2 {
            pixels(&sample_path(&out, step, i), (32, 16));
        }
    }
    assert!(!sample_path(&out, 1, 0).exists() && !sample_path(&out, 3, 0).exists());
    let names: Vec<String> = std::fs::read_dir(out.join("samples"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 6, "only the pictures stay in samples/ (no temporary LoRA): {names:?}");
    let first = pixels(&sample_path(&out, 0, 0), (32, 16));
    assert_ne!(first, pixels(&sample_path(&out, 4, 0), (32, 16)), "the LoRA moved: step 4 differs from step 0");
    assert_ne!(first, pixels(&sample_path(&out, 0, 1), (32, 16)), "another prompt, another picture");

    // A second run (another K, one prompt) draws the same step-0 picture from the same seed,
    // and its last step (3, not a multiple of K) too.
    let dir2 = dir.join("again");
    train(&gpu, &options(&dir2, 3, sampling(2, &["A cat"]))).unwrap();
    assert_eq!(first, pixels(&sample_path(&dir2.join("out"), 0, 0), (32, 16)), "fixed seed, same picture");
    pixels(&sample_path(&dir2.join("out"), 3, 0), (32, 16));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sample_settings_that_cannot_work_are_refused_before_training() {
    let gpu = test_gpu();
    let dir = std::env::temp_dir().join(format!("wgdit-samples-bad-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let refused = |o: &TrainOptions, needle: &str| {
        let e = train(&gpu, o).err().unwrap_or_else(|| panic!("expected `{needle}`")).to_string();
        assert!(e.contains(needle), "error should mention `{needle}`: {e}");
        assert!(!o.output.join("loss.csv").exists(), "nothing trained");
    };
    let good = options(&dir, 2, sampling(1, &["A cat"]));
    refused(&TrainOptions { samples: Some(sampling(1, &[])), ..good.clone() }, "--sample-prompt");
    refused(&TrainOptions { samples: Some(sampling(0, &["A cat"])), ..good.clone() }, "--sample-every 0");
    // The transformer folder alone, and a pipeline folder without its text encoder.
    refused(&TrainOptions { model: good.model.join("transformer"), ..good.clone() }, "model_index.json");
    let bare = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pipeline/t2i");
    refused(&TrainOptions { model: bare, ..good.clone() }, "text_encoder/ and tokenizer/");
    let mut with_image = sampling(1, &["A cat"]);
    with_image.images.push(dir.join("x.png"));
    refused(&TrainOptions { samples: Some(with_image), ..good.clone() }, "takes no --sample-image");
    let edit = text_pipeline("edit-plus").unwrap();
    refused(&TrainOptions { model: edit, ..good }, "needs at least one --sample-image");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The references at 32×32 (`--sample-ref-area`, `--sample-condition-area`): at generate's
/// default 1024² and 384² this test took 6 minutes on lavapipe.
#[test]
fn an_edit_pipeline_samples_with_its_reference_image() {
    let gpu = test_gpu();
    let dir = std::env::temp_dir().join(format!("wgdit-samples-edit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut s = sampling(1, &["Make it red"]);
    s.images.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pipeline/inputs/ref_a.png"));
    (s.ref_area, s.condition_area) = (Some(32 * 32), Some(32 * 32));
    let mut o = options(&dir, 1, s);
    o.model = text_pipeline("edit-plus").unwrap();
    train(&gpu, &o).unwrap();
    for step in [0, 1] {
        pixels(&sample_path(&o.output, step, 0), (32, 16));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn samples_run_on_the_trained_dit_without_changing_the_training_and_match_generate_with_the_lora() {
    let gpu = test_gpu();
    let dir = std::env::temp_dir().join(format!("wgdit-samples-same-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let with = options(&dir.join("with"), 3, sampling(3, &["A cat"]));
    let without = TrainOptions { samples: None, ..options(&dir.join("without"), 3, sampling(3, &["A cat"])) };
    let (a, b) = (train(&gpu, &with).unwrap(), train(&gpu, &without).unwrap());
    assert_eq!(a.losses, b.losses, "drawing samples on the trained DiT leaves the training as it was");
    assert_eq!(std::fs::read(&a.lora_file).unwrap(), std::fs::read(&b.lora_file).unwrap());
    // The last sample is the picture `generate --lora <the final LoRA>` makes on its own DiT.
    let png = generated(&with.model, None, &a.lora_file, &dir.join("generated.png"));
    assert_eq!(pixels(&sample_path(&with.output, 3, 0), (32, 16)), png);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_quantized_transformer_file_is_the_frozen_base_and_the_samples_draw_with_it() {
    use wgdit::convert::quantize::{quantize, QuantizeOptions};
    let gpu = test_gpu();
    let dir = std::env::temp_dir().join(format!("wgdit-samples-fp8-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let fp8 = dir.join("transformer-fp8.safetensors");
    let pipeline = text_pipeline("t2i").unwrap();
    let q = QuantizeOptions {
        input: pipeline.join("transformer"),
        output: fp8.clone(),
        target: wgdit::dtype::DType::F8E4M3,
        keep: vec![],
        scaled: false,
        threads: 2,
        progress: false,
    };
    quantize(&q).unwrap();
    // The pipeline folder's transformer/ holds its config only: the base is the fp8 file.
    let stripped = dir.join("pipeline");
    wgdit::testing::copy_tree(&pipeline, &stripped, Some("transformer/diffusion_pytorch_model")).unwrap();
    assert!(stripped.join("transformer/config.json").is_file());
    let on_fp8 = TrainOptions {
        model: stripped.clone(),
        transformer: Some(fp8.clone()),
        ..options(&dir.join("fp8"), 3, sampling(3, &["A cat"]))
    };
    let on_f32 = options(&dir.join("f32"), 3, sampling(3, &["A cat"]));
    let (a, b) = (train(&gpu, &on_fp8).unwrap(), train(&gpu, &on_f32).unwrap());
    println!("losses on the fp8 base {:?}, on the f32 base {:?}", a.losses, b.losses);
    assert!(a.losses.iter().all(|l| l.is_finite()) && a.losses != b.losses, "the fp8 file is the base");
    // The last sample is `generate --transformer <fp8> --lora <final LoRA>`.
    let png = generated(&stripped, Some(&fp8), &a.lora_file, &dir.join("generated.png"));
    assert_eq!(pixels(&sample_path(&on_fp8.output, 3, 0), (32, 16)), png);
    // --transformer needs the pipeline folder as --model.
    let bad = TrainOptions { model: pipeline.join("transformer"), ..on_fp8.clone() };
    let bad = TrainOptions { samples: None, output: dir.join("bad"), ..bad };
    let e = train(&gpu, &bad).err().unwrap_or_else(|| panic!("refused")).to_string();
    assert!(e.contains("--transformer replaces a pipeline folder's transformer/"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
