//! Where training starts from: `--init-lora` (an existing LoRA as the initial parameters) and
//! `--preset-lora` (a LoRA folded into the frozen base).

use crate::run::{options, write_dataset};
use wgdit::models::qwen_image::lora::read_lora;
use wgdit::testing::test_gpu;
use wgdit::train::run::{train, Trainer};
use wgdit::weights::lora::LoraFormat;

#[test]
fn a_lora_given_to_init_lora_is_exported_unchanged_after_zero_steps_in_any_format() {
    let gpu = test_gpu();
    let dir = std::env::temp_dir().join(format!("wgdit-init-{}", std::process::id()));
    write_dataset(&dir.join("data"), 2, 5);
    // A short run exports a kohya file (B no longer zero).
    let mut first = options(&dir.join("data"), &dir.join("first"), 3);
    (first.checkpointing, first.format) = (false, LoraFormat::Kohya);
    let prev = train(&gpu, &first).unwrap().lora_file;
    let want = read_lora(&prev).unwrap();
    assert!(want.modules.values().any(|m| m.b.data.iter().any(|v| *v != 0.0)), "the first run trained B");
    // Started from it and finished before any step: the same LoRA, bit for bit.
    let mut o = options(&dir.join("data"), &dir.join("again"), 1);
    (o.checkpointing, o.init_lora) = (false, Some(prev.clone()));
    let got = read_lora(&Trainer::new(&gpu, &o).unwrap().finish().unwrap().lora_file).unwrap();
    assert_eq!(got.modules.len(), want.modules.len());
    for (name, m) in &want.modules {
        let g = &got.modules[name];
        assert!(g.a.data == m.a.data && g.b.data == m.b.data && g.alpha == m.alpha, "{name} differs");
    }
    // Another alpha rescales B: the same ΔW at the new scale.
    let mut o2 = options(&dir.join("data"), &dir.join("alpha"), 1);
    (o2.checkpointing, o2.init_lora, o2.alpha) = (false, Some(prev.clone()), 8.0);
    let scaled = read_lora(&Trainer::new(&gpu, &o2).unwrap().finish().unwrap().lora_file).unwrap();
    for (name, m) in &want.modules {
        let (a, b) = (m.delta(), scaled.modules[name].delta());
        assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() <= 1e-6 * x.abs().max(1e-3)), "{name}: ΔW changed");
    }
    // Another rank, targets the file lacks, or a resume at the same time: refused, naming why.
    let refused = |f: &dyn Fn(&mut wgdit::train::run::TrainOptions)| {
        let mut o = options(&dir.join("data"), &dir.join("refused"), 1);
        (o.checkpointing, o.init_lora) = (false, Some(prev.clone()));
        f(&mut o);
        Trainer::new(&gpu, &o).err().expect("refused").to_string()
    };
    let e = refused(&|o| (o.rank, o.alpha) = (8, 8.0));
    assert!(e.contains("has rank 4, but --rank is 8"), "{e}");
    let e = refused(&|o| o.targets = format!("{},proj_out", wgdit::train::lora::DIFFSYNTH_TARGETS));
    assert!(e.contains("the file lacks: proj_out"), "{e}");
    let e = refused(&|o| o.targets = "to_q,to_k".into());
    assert!(e.contains("the file has modules the targets leave out"), "{e}");
    let e = refused(&|o| o.resume = Some(dir.join("first")));
    assert!(e.contains("--init-lora starts a new run"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

/// `<dir>` = the tiny model with `lora`'s ΔW = (alpha/r)·B·A added to its weights, in f64 here.
fn fold_by_hand(dir: &std::path::Path, lora: &wgdit::weights::Lora) {
    use wgdit::weights::writer::{write_safetensors, OutTensor, Source};
    let base = crate::diffusers_fixtures::model_paths("tiny").0;
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(base.join("config.json"), dir.join("config.json")).unwrap();
    let f = wgdit::weights::safetensors::SafeFile::open(&base.join("diffusion_pytorch_model.safetensors")).unwrap();
    let mut out = Vec::new();
    for t in &f.tensors {
        let mut w = f.view(t).unwrap().to_f32();
        if let Some(m) = t.name.strip_suffix(".weight").and_then(|m| lora.modules.get(m)) {
            for (x, d) in w.iter_mut().zip(m.delta()) {
                *x = (*x as f64 + d) as f32;
            }
        }
        let source = Source::Host(std::borrow::Cow::Owned(w));
        out.push(OutTensor { name: t.name.clone(), dtype: wgdit::dtype::DType::F32, shape: t.shape.clone(), source });
    }
    let path = dir.join("diffusion_pytorch_model.safetensors");
    write_safetensors(&path, &out, &Default::default(), &indicatif::ProgressBar::hidden()).unwrap();
}

#[test]
fn training_with_a_preset_lora_starts_from_the_loss_of_base_plus_that_lora() {
    let gpu = test_gpu();
    let dir = std::env::temp_dir().join(format!("wgdit-preset-{}", std::process::id()));
    write_dataset(&dir.join("data"), 2, 5);
    let mut first = options(&dir.join("data"), &dir.join("first"), 4);
    (first.checkpointing, first.lr) = (false, 2e-2);
    let x = train(&gpu, &first).unwrap().lora_file;
    fold_by_hand(&dir.join("folded"), &read_lora(&x).unwrap());
    // The first step's loss is the forward before any update, and a fresh LoRA (B = 0) adds
    // nothing: base + preset X, the model folded by hand, and base + X as the initial LoRA see
    // the same draws of one seed and must give the same loss.
    let step1 = |f: &dyn Fn(&mut wgdit::train::run::TrainOptions), out: &str| {
        let mut o = options(&dir.join("data"), &dir.join(out), 1);
        o.checkpointing = false;
        f(&mut o);
        Trainer::new(&gpu, &o).unwrap().step().unwrap().loss
    };
    let preset = step1(&|o| o.preset_loras = vec![(x.clone(), 1.0)], "preset");
    let folded = step1(&|o| o.model = dir.join("folded"), "on-folded");
    let init = step1(&|o| o.init_lora = Some(x.clone()), "init");
    let base = step1(&|_| {}, "base");
    println!("step-1 loss: base {base:.6}, preset {preset:.6}, folded by hand {folded:.6}, init {init:.6}");
    // f32 weights folded in another order (f64 sum here, f64 rows there): a few ulps per weight
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-5 * b.abs();
    assert!(close(preset, folded), "preset {preset} vs folded by hand {folded}");
    // a LoRA side path instead of a folded weight: the same sums in another order, in f32
    assert!(close(init, folded), "init-lora {init} vs folded by hand {folded}");
    assert!(!close(preset, base), "the preset changed nothing: {preset} vs {base}");
    // The preset is part of the run: a resume without it is refused.
    let mut saved = options(&dir.join("data"), &dir.join("saved"), 1);
    (saved.checkpointing, saved.save_every, saved.preset_loras) = (false, 1, vec![(x.clone(), 1.0)]);
    train(&gpu, &saved).unwrap();
    let mut resumed = options(&dir.join("data"), &dir.join("resumed"), 2);
    (resumed.checkpointing, resumed.resume) = (false, Some(dir.join("saved/checkpoint-1")));
    let e = train(&gpu, &resumed).unwrap_err().to_string();
    assert!(e.contains("preset_loras: saved [") && e.contains("given (absent)"), "{e}");
    // eval_loss folds the presets too: the runtime-LoRA forward of base + X, SCALE 0.5 as well.
    let sigmas = [0.4, 0.8];
    let o = options(&dir.join("data"), &dir.join("eval"), 1);
    for scale in [1.0f32, 0.5] {
        let runtime = wgdit::train::run::eval_loss(&gpu, &o, Some(&x), &sigmas, 3);
        let mut p = o.clone();
        p.preset_loras = vec![(x.clone(), scale)];
        let folded = wgdit::train::run::eval_loss(&gpu, &p, None, &sigmas, 3).unwrap();
        if scale == 1.0 {
            let runtime = runtime.unwrap();
            assert!(close(folded, runtime), "preset {folded} vs runtime LoRA {runtime}");
        } else {
            let half = wgdit::train::run::eval_loss(&gpu, &o, None, &sigmas, 3).unwrap();
            assert!(!close(folded, half), "SCALE 0.5 is neither base nor X");
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}
