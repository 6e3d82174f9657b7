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
