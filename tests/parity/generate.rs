//! `wgdit generate` end to end against diffusers' QwenImagePipeline, QwenImageEditPipeline and
//! QwenImageEditPlusPipeline (Edit-2509, Edit-2511) on the tiny pipeline folders
//! (tests/fixtures/pipeline, float32): the `[0, 1]` image from seeds (torch's CPU generator) and
//! from recorded noise, with the references resized, encoded and appended as diffusers does.

use crate::diffusers_fixtures::{fixtures, Fixture};
use std::path::{Path, PathBuf};
use wgdit::models::qwen_image::{Modulation, QkvMode};
use wgdit::pipeline::generate::{generate, GenerateOptions, Noise, Prompt};
use wgdit::testing::{stats, test_gpu, TempDir};

/// Whole pipelines, a few steps: rel-L2 on the `[0, 1]` image (fixture README).
const IMAGE_REL_L2: f64 = 1e-3;

fn pipeline_dir(name: &str) -> PathBuf {
    fixtures().join("pipeline").join(name)
}

pub(crate) struct Case {
    pub name: &'static str,
    pub folder: &'static str,
    pub steps: usize,
    pub seed: u64,
    pub cfg: bool,
    pub size: Option<(u32, u32)>,
    pub images: &'static [&'static str],
}

pub(crate) const CASES: &[Case] = &[
    Case { name: "t2i_cfg", folder: "t2i", steps: 3, seed: 42, cfg: true, size: Some((48, 32)), images: &[] },
    Case { name: "t2i_nocfg", folder: "t2i", steps: 5, seed: 7, cfg: false, size: Some((24, 40)), images: &[] },
    Case { name: "edit", folder: "edit", steps: 3, seed: 11, cfg: true, size: None, images: &["ref_a"] },
    Case {
        name: "edit_plus",
        folder: "edit-plus",
        steps: 3,
        seed: 12,
        cfg: true,
        size: Some((32, 24)),
        images: &["ref_a", "ref_b"],
    },
    Case {
        name: "edit_2511",
        folder: "edit-2511",
        steps: 3,
        seed: 13,
        cfg: true,
        size: Some((24, 32)),
        images: &["ref_b", "ref_a"],
    },
    Case {
        name: "edit_plus_single",
        folder: "edit-plus",
        steps: 2,
        seed: 14,
        cfg: false,
        size: Some((16, 24)),
        images: &["ref_b"],
    },
];

pub(crate) fn options(c: &Case, case_file: &Path, output: PathBuf) -> GenerateOptions {
    let mut o = GenerateOptions::new(pipeline_dir(c.folder), Prompt::Embeds(case_file.to_path_buf()), output);
    o.negative = c.cfg.then(|| Prompt::Embeds(case_file.to_path_buf()));
    o.steps = c.steps;
    o.noise = Noise::Seed(c.seed);
    if let Some((w, h)) = c.size {
        (o.width, o.height) = (Some(w), Some(h));
    }
    o.images = c.images.iter().map(|n| pipeline_dir("inputs").join(format!("{n}.png"))).collect();
    // The fixture's monkeypatched areas (fixture README: "Edit reference sizing").
    (o.ref_area, o.condition_area) = (48 * 48, 40 * 40);
    o
}

fn image_of(path: &Path) -> Vec<f32> {
    Fixture::read(path).get("image")
}

fn run_case(c: &Case, mode: QkvMode, dir: &TempDir) -> f64 {
    let case_file = fixtures().join(format!("pipeline/cases/{}.safetensors", c.name));
    let out = dir.path().join(format!("{}-{}.safetensors", c.name, mode.name()));
    let mut o = options(c, &case_file, out.clone());
    o.qkv = mode;
    let r = generate(&test_gpu(), &o, &mut |_| {}).unwrap();
    assert_eq!(r.cfg, c.cfg, "{}: CFG", c.name);
    let want = Fixture::read(&case_file).get("image");
    let got = image_of(&out);
    let s = stats(&got, &want);
    println!(
        "{} {}: image rel_l2 {:.2e} max_abs {:.2e} ({}x{}, {} dispatches/step)",
        c.name,
        mode.name(),
        s.rel_l2,
        s.max_abs,
        r.width,
        r.height,
        r.dispatches_per_step
    );
    assert!(s.rel_l2 <= IMAGE_REL_L2, "{} {mode:?}: image rel_l2 {:.3e}", c.name, s.rel_l2);
    s.rel_l2
}

#[test]
fn every_pipeline_class_makes_the_picture_diffusers_makes_from_a_seed() {
    let dir = TempDir::new("generate");
    for c in CASES {
        run_case(c, QkvMode::Fused, &dir);
    }
}

#[test]
fn text_to_image_and_edit_plus_agree_in_every_qkv_mode() {
    let dir = TempDir::new("generate-modes");
    for c in CASES.iter().filter(|c| ["t2i_cfg", "edit_plus"].contains(&c.name)) {
        for mode in [QkvMode::Standard, QkvMode::Merged] {
            run_case(c, mode, &dir);
        }
    }
}

#[test]
fn a_png_output_matches_diffusers_pil_output_within_one_level_and_carries_the_settings() {
    let dir = TempDir::new("generate-png");
    let c = &CASES[2]; // edit
    let case_file = fixtures().join(format!("pipeline/cases/{}.safetensors", c.name));
    let out = dir.path().join("edit.png");
    let mut o = options(c, &case_file, out.clone());
    let noise = dir.path().join("noise.safetensors");
    write_noise(&noise, &Fixture::read(&case_file));
    o.noise = Noise::File(noise);
    generate(&test_gpu(), &o, &mut |_| {}).unwrap();
    let got = wgdit::image::pixels::load_rgb(&out).unwrap();
    let want = wgdit::image::pixels::load_rgb(&fixtures().join("pipeline/cases/edit.png")).unwrap();
    assert_eq!(got.dimensions(), want.dimensions());
    let worst = got.as_raw().iter().zip(want.as_raw()).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
    assert!(worst <= 1, "edit.png differs by {worst} levels");
    let text = wgdit::image::pixels::read_png_text(&out).unwrap();
    let get = |k: &str| text.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
    assert_eq!(get("pipeline").as_deref(), Some("QwenImageEditPipeline"));
    assert_eq!(get("steps").as_deref(), Some("3"));
    assert_eq!(get("size").as_deref(), Some("64x32"));
    assert!(get("seed").unwrap().starts_with("noise:"));
}

/// The case's recorded `noise` alone in a file (what `--noise` takes).
fn write_noise(path: &Path, fx: &Fixture) {
    let st = safetensors::SafeTensors::deserialize(&fx.bytes).unwrap();
    let t = st.tensor("noise").unwrap();
    let view = safetensors::tensor::TensorView::new(t.dtype(), t.shape().to_vec(), t.data()).unwrap();
    std::fs::write(path, safetensors::serialize([("noise", view)], None).unwrap()).unwrap();
}

#[test]
fn precomputed_modulation_makes_the_same_picture_as_inline_in_every_qkv_mode() {
    // Same kernels over the same inputs (docs/generate.md: modulation precompute): the images are
    // bit-identical, the precompute runs once for both CFG passes (one row per step, plus the
    // t = 0 row of Edit-2511), and the modulation weights leave the GPU before the loop.
    let dir = TempDir::new("generate-premod");
    for c in CASES.iter().filter(|c| ["t2i_cfg", "edit_2511"].contains(&c.name)) {
        let case_file = fixtures().join(format!("pipeline/cases/{}.safetensors", c.name));
        for mode in QkvMode::ALL {
            let mut runs = Vec::new();
            for m in [Modulation::Inline, Modulation::Precompute] {
                let out = dir.path().join(format!("{}-{}-{}.safetensors", c.name, mode.name(), m.name()));
                let mut o = options(c, &case_file, out.clone());
                (o.qkv, o.modulation) = (mode, m);
                let r = generate(&test_gpu(), &o, &mut |_| {}).unwrap();
                runs.push((r, image_of(&out)));
            }
            let (inline, pre) = (&runs[0], &runs[1]);
            let diff = pre.1.iter().zip(&inline.1).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
            assert_eq!(diff, 0, "{} {mode:?}: {diff} pixels differ from the inline run", c.name);
            let p = pre.0.precompute.as_ref().expect("precompute ran");
            assert!(inline.0.precompute.is_none());
            assert_eq!(p.rows, c.steps + usize::from(c.name == "edit_2511"), "{}: one row per step (+ t = 0)", c.name);
            assert_eq!(inline.0.weight_bytes - pre.0.weight_bytes, p.released_bytes, "{}: weights released", c.name);
            assert!(p.released_bytes > 0 && pre.0.modulation_bytes >= p.store_bytes);
            println!(
                "{} {}: bit-identical; {} rows precomputed, {} weight bytes released, {} bytes of vectors",
                c.name,
                mode.name(),
                p.rows,
                p.released_bytes,
                pre.0.modulation_bytes
            );
        }
    }
}

#[test]
fn the_trigger_word_lora_of_the_training_proof_draws_the_picture_diffusers_draws_from_the_prompt() {
    // tests/fixtures/train/learn/zq_lora.case.safetensors (tools/gen_learned_lora_fixture.py): the
    // LoRA `wgdit cache` + `wgdit train` made from train/learn/kohya, loaded by diffusers'
    // `load_lora_weights` into the same tiny pipeline (colour-faithful VAE, tiny text encoder),
    // which encodes "zq picture" itself: 32×32, 8 steps, seed 5, no CFG.
    let dir = TempDir::new("generate-learned-lora");
    let fx = Fixture::read(&fixtures().join("train/learn/zq_lora.case.safetensors"));
    let model = wgdit::testing::learn_pipeline("t2i").unwrap();
    let draw = |lora: bool, out: &str| {
        let out = dir.path().join(out);
        let mut o = GenerateOptions::new(model.clone(), Prompt::Text("zq picture".into()), out.clone());
        (o.steps, o.noise, o.true_cfg, o.width, o.height) = (8, Noise::Seed(5), 1.0, Some(32), Some(32));
        if lora {
            o.loras = vec![(fixtures().join("train/learn/zq_lora.safetensors"), 1.0)];
        }
        generate(&test_gpu(), &o, &mut |_| {}).unwrap();
        image_of(&out)
    };
    let (base, tuned) = (draw(false, "base.safetensors"), draw(true, "lora.safetensors"));
    let (sb, st) = (stats(&base, &fx.get("image_base")), stats(&tuned, &fx.get("image")));
    let colour = |v: &[f32]| [0, 1, 2].map(|c| v[c * 1024..(c + 1) * 1024].iter().sum::<f32>() / 1024.0);
    println!(
        "learned LoRA vs diffusers: base rel_l2 {:.2e}, with the LoRA {:.2e}; mean colour {:.3?} → {:.3?}",
        sb.rel_l2,
        st.rel_l2,
        colour(&base),
        colour(&tuned)
    );
    assert!(sb.rel_l2 <= IMAGE_REL_L2, "base picture rel_l2 {:.3e} vs diffusers", sb.rel_l2);
    assert!(st.rel_l2 <= IMAGE_REL_L2, "LoRA picture rel_l2 {:.3e} vs diffusers", st.rel_l2);
    assert!(stats(&tuned, &base).rel_l2 > 0.1, "the LoRA moves the picture");
}

#[test]
fn a_lora_written_by_wgdit_train_makes_the_picture_diffusers_makes_with_load_lora_weights() {
    // tests/fixtures/train/t2i_lora.case.safetensors (tools/gen_pipeline_lora_fixture.py): the
    // t2i_cfg case run by diffusers' QwenImagePipeline after `pipe.load_lora_weights(t2i_lora)`.
    let dir = TempDir::new("generate-lora");
    let c = CASES.iter().find(|c| c.name == "t2i_cfg").unwrap();
    let case_file = fixtures().join("train/t2i_lora.case.safetensors");
    let fx = Fixture::read(&case_file);
    let (want, base) = (fx.get("image"), fx.get("image_base"));
    for mode in QkvMode::ALL {
        let out = dir.path().join(format!("lora-{}.safetensors", mode.name()));
        let mut o = options(c, &case_file, out.clone());
        (o.qkv, o.loras) = (mode, vec![(fixtures().join("train/t2i_lora.safetensors"), 1.0)]);
        generate(&test_gpu(), &o, &mut |_| {}).unwrap();
        let got = image_of(&out);
        let (s, moved) = (stats(&got, &want), stats(&got, &base).rel_l2);
        println!("t2i_cfg + LoRA {}: image rel_l2 {:.2e} (the LoRA moves it by {moved:.3})", mode.name(), s.rel_l2);
        assert!(s.rel_l2 <= IMAGE_REL_L2, "{mode:?}: image rel_l2 {:.3e} vs diffusers", s.rel_l2);
        assert!(moved > 1e-2, "{mode:?}: the LoRA moves the picture by only {moved:.2e}");
    }
}
