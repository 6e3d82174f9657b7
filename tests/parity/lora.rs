//! Runtime LoRA in the forward (`--lora`), against diffusers' own loader (fixtures by
//! tools/gen_dit_fixtures.py): every file format, a strength, a merged-QKV LoRA, all three modes;
//! and the converted twins of a LoRA and of a checkpoint give the same output.

use crate::diffusers_fixtures::{fixtures, model_paths, run_model, Fixture};
use wgdit::convert::{convert, ConvertOptions, DtypeChoice, Target};
use wgdit::models::qwen_image::lora::LoraSet;
use wgdit::models::qwen_image::open::open;
use wgdit::models::qwen_image::QkvMode;
use wgdit::testing::stats;

const REL_L2: f64 = 1e-4;

fn lora(file: &std::path::Path, strength: f32) -> LoraSet {
    let (cfg, _) = open(&model_paths("tiny").0, None).unwrap();
    LoraSet::load(&[(file.to_path_buf(), strength)], &cfg).unwrap()
}

fn check(case: &str) {
    let exp = Fixture::read(&fixtures().join(format!("lora/cases/{case}.expected.safetensors")));
    let inputs = fixtures().join(exp.meta("inputs"));
    let set = lora(&fixtures().join("lora").join(exp.meta("lora")), exp.meta("strength").parse().unwrap());
    let want = exp.get("output");
    for mode in QkvMode::ALL {
        let (mp, cp) = model_paths(&exp.meta("model"));
        let (_, out) = run_model(&mp, cp.as_deref(), &inputs, mode, set.clone());
        let s = stats(&out, &want);
        println!("lora {case} {}: rel_l2 {:.2e} max_abs {:.2e}", mode.name(), s.rel_l2, s.max_abs);
        assert!(s.rel_l2 <= REL_L2, "lora {case} {mode:?}: rel_l2 {:.3e}", s.rel_l2);
    }
}

#[test]
fn peft_lora_matches_diffusers_in_every_mode() {
    check("peft");
}

#[test]
fn diffsynth_kohya_and_comfy_loras_match_diffusers() {
    for case in ["diffsynth", "kohya", "comfy"] {
        check(case);
    }
}

#[test]
fn lora_strength_scales_like_diffusers_set_adapters() {
    check("peft_scale0.5");
}

#[test]
fn merged_qkv_lora_acts_on_its_slices_in_every_mode() {
    check("peft-merged-qkv");
}

fn convert_to(input: &std::path::Path, output: &std::path::Path, to: Target) {
    let opts = ConvertOptions {
        input: input.to_path_buf(),
        output: output.to_path_buf(),
        to,
        format: None,
        dtype: DtypeChoice::Keep,
        shard_size: None,
        dry_run: false,
        progress: false,
    };
    convert(&opts).unwrap();
}

#[test]
fn converted_lora_and_checkpoint_twins_give_the_same_forward() {
    let dir = std::env::temp_dir().join(format!("wgdit-twins-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let inputs = fixtures().join("dit/cases/batch_mask.inputs.safetensors");
    let (tiny, _) = model_paths("tiny");
    let cfg = tiny.join("config.json");
    // LoRA twin: peft (standard q/k/v) → merged to_qkv.
    let peft = fixtures().join("lora/peft.safetensors");
    let merged_lora = dir.join("lora-merged.safetensors");
    convert_to(&peft, &merged_lora, Target::Merged);
    // Checkpoint twin: tiny → merged layout.
    let merged_ckpt = dir.join("tiny-merged.safetensors");
    convert_to(&tiny, &merged_ckpt, Target::Merged);
    for mode in QkvMode::ALL {
        let (_, a) = run_model(&tiny, None, &inputs, mode, lora(&peft, 1.0));
        let (_, b) = run_model(&tiny, None, &inputs, mode, lora(&merged_lora, 1.0));
        let (_, c) = run_model(&merged_ckpt, Some(&cfg), &inputs, mode, lora(&peft, 1.0));
        let s = stats(&b, &a);
        assert!(s.rel_l2 <= 1e-6, "{mode:?}: merged LoRA twin differs: rel_l2 {:.3e}", s.rel_l2);
        assert_eq!(a, c, "{mode:?}: the merged checkpoint twin must give bit-identical output");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_lora_written_by_wgdit_train_loads_in_diffusers_with_the_same_output() {
    // tools/gen_trained_lora_fixture.py: diffusers' loader applied the file that `wgdit train` wrote.
    let exp = Fixture::read(&fixtures().join("train/wgdit_trained_lora.expected.safetensors"));
    let set = lora(&fixtures().join(exp.meta("lora")), 1.0);
    let inputs = fixtures().join(exp.meta("inputs"));
    let base = Fixture::read(&fixtures().join("dit/cases/batch_mask.expected.safetensors")).get("output");
    let want = exp.get("output");
    assert!(stats(&want, &base).rel_l2 > 1e-3, "the trained LoRA must visibly change the output");
    for mode in QkvMode::ALL {
        let (_, out) = run_model(&model_paths("tiny").0, None, &inputs, mode, set.clone());
        let s = stats(&out, &want);
        assert!(s.rel_l2 <= REL_L2, "{mode:?}: rel_l2 {:.3e} vs diffusers with wgdit's LoRA", s.rel_l2);
    }
}
