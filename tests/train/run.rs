//! The training loop learns: a LoRA on the tiny model fitted to a handful of cached samples.

use crate::diffusers_fixtures::model_paths;
use std::path::Path;
use wgdit::testing::test_gpu;
use wgdit::train::run::{train, TrainOptions};
use wgdit::train::schedule::Sampling;

/// Writes `n` samples (latents [4, 8, 8], prompt_embeds [5, 24]) and metadata.jsonl.
pub fn write_dataset(dir: &Path, n: usize, seed: u64) {
    let cfg = wgdit::models::qwen_image::DitConfig::from_file(&model_paths("tiny").0.join("config.json")).unwrap();
    wgdit::train::data::write_synthetic(dir, &cfg, n, [8, 8], 5, seed).unwrap();
}

pub fn options(data: &Path, out: &Path, steps: u64) -> TrainOptions {
    let mut o = TrainOptions::new(model_paths("tiny").0, data.to_path_buf(), out.to_path_buf(), steps);
    (o.rank, o.alpha, o.lr, o.seed, o.sampling, o.weight_decay) = (4, 4.0, 3e-3, 1, Sampling::Uniform, 0.0);
    o
}

/// The point counts of the `<polyline>`s of an SVG (the loss plot's raw and smoothed lines).
pub fn svg_lines(path: &Path) -> Vec<usize> {
    let svg = std::fs::read_to_string(path).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"), "{}: {svg:.200}", path.display());
    let count = |l: &str| l.split("points=\"").nth(1).unwrap().split('"').next().unwrap().split(' ').count();
    svg.lines().filter(|l| l.starts_with("<polyline")).map(count).collect()
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

#[test]
fn lora_training_lowers_the_loss_clearly_on_a_tiny_model() {
    let gpu = test_gpu();
    let dir = std::env::temp_dir().join(format!("wgdit-train-{}", std::process::id()));
    write_dataset(&dir.join("data"), 2, 3);
    let mut o = options(&dir.join("data"), &dir.join("out"), 100);
    o.lr = 1e-2;
    let sigmas = [0.3, 0.5, 0.7, 0.9];
    let before = wgdit::train::run::eval_loss(&gpu, &o, None, &sigmas, 11).unwrap();
    let r = train(&gpu, &o).unwrap();
    let after = wgdit::train::run::eval_loss(&gpu, &o, Some(&r.lora_file), &sigmas, 11).unwrap();
    println!(
        "eval loss {before:.4} → {after:.4} after {} steps; train loss first 10 {:.4}, last 10 {:.4}; {:.0} ms/step, {} dispatches/step",
        r.losses.len(),
        mean(&r.losses[..10]),
        mean(&r.losses[r.losses.len() - 10..]),
        r.mean_step_ms,
        r.dispatches_per_step
    );
    assert!(after < 0.8 * before, "held-out loss did not drop clearly: {before:.4} → {after:.4}");
    let csv = std::fs::read_to_string(dir.join("out/loss.csv")).unwrap();
    assert!(csv.starts_with("step,loss") && csv.lines().count() == 101, "loss.csv: {csv:.200}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
#[ignore]
fn debug_training_curve() {
    let gpu = test_gpu();
    let dir = std::env::temp_dir().join(format!("wgdit-train-dbg-{}", std::process::id()));
    write_dataset(&dir.join("data"), 1, 3);
    let steps: u64 = std::env::var("STEPS").map(|s| s.parse().unwrap()).unwrap_or(200);
    let mut o = options(&dir.join("data"), &dir.join("out"), steps);
    o.lr = std::env::var("LR").map(|s| s.parse().unwrap()).unwrap_or(1e-2);
    if std::env::var("DS").is_ok() {
        o.sampling = Sampling::DiffSynth;
    }
    o.rank = std::env::var("RANK").map(|s| s.parse().unwrap()).unwrap_or(4);
    o.alpha = o.rank as f64;
    let r = train(&gpu, &o).unwrap();
    for c in r.losses.chunks(20) {
        println!("mean loss {:.4}", mean(c));
    }
}

#[test]
fn a_resumed_run_continues_the_same_loss_curve() {
    // A cosine schedule with warmup and a non-default β2: the resumed steps 5..8 must see the
    // same lrs (they depend on the step and --steps) and moments as the uninterrupted run.
    let gpu = test_gpu();
    let dir = std::env::temp_dir().join(format!("wgdit-resume-{}", std::process::id()));
    write_dataset(&dir.join("data"), 3, 4);
    let setup = |out: &str| {
        let mut o = options(&dir.join("data"), &dir.join(out), 8);
        (o.sampling, o.checkpointing) = (Sampling::DiffSynth, false);
        (o.lr_schedule, o.warmup, o.adam_beta2) = ("cosine".into(), 2, 0.99);
        o
    };
    let mut o = setup("full");
    o.save_every = 4;
    let full = train(&gpu, &o).unwrap();
    // Resume from step 4 into a fresh output folder: steps 5..8 must repeat exactly.
    let mut r = setup("resumed");
    r.resume = Some(dir.join("full/checkpoint-4"));
    std::fs::create_dir_all(dir.join("resumed")).unwrap();
    std::fs::copy(dir.join("full/loss.csv"), dir.join("resumed/loss.csv")).unwrap();
    let resumed = train(&gpu, &r).unwrap();
    assert_eq!(resumed.losses, full.losses[4..].to_vec(), "resumed losses differ from the uninterrupted run");
    let csv = std::fs::read_to_string(dir.join("resumed/loss.csv")).unwrap();
    assert_eq!(csv.lines().count(), 9, "loss.csv keeps steps 1..4 and appends 5..8: {csv}");
    assert_eq!(svg_lines(&dir.join("full/loss.svg")), [8, 8]);
    assert_eq!(svg_lines(&dir.join("resumed/loss.svg")), [8, 8], "the plot after a resume has every logged step");
    let lrs: Vec<f64> = csv.lines().skip(1).map(|l| l.split(',').nth(3).unwrap().parse().unwrap()).collect();
    assert_eq!(lrs[0], 0.5 * 3e-3, "warmup: {lrs:?}");
    assert_eq!(lrs[7], 0.0, "cosine ends at 0 on the last step: {lrs:?}");
    // The schedule, its length and the betas are recorded: another --steps or β2 is refused.
    let mut longer = setup("longer");
    (longer.steps, longer.adam_beta2, longer.resume) = (12, 0.999, r.resume.clone());
    let e = train(&gpu, &longer).unwrap_err().to_string();
    for want in ["lr_decay_steps: saved 8, given 12", "adam_beta2: saved 0.99, given 0.999"] {
        assert!(e.contains(want), "{want}: {e}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn the_loss_plot_is_rewritten_at_each_save_with_one_point_per_logged_step() {
    let gpu = test_gpu();
    let dir = std::env::temp_dir().join(format!("wgdit-plot-{}", std::process::id()));
    write_dataset(&dir.join("data"), 1, 4);
    let mut o = options(&dir.join("data"), &dir.join("out"), 3);
    (o.save_every, o.checkpointing) = (2, false);
    let mut t = wgdit::train::run::Trainer::new(&gpu, &o).unwrap();
    let plot = dir.join("out/loss.svg");
    t.step().unwrap();
    assert!(!plot.exists(), "no save yet, no plot");
    t.step().unwrap();
    assert_eq!(svg_lines(&plot), [2, 2], "written with the checkpoint of step 2");
    t.step().unwrap();
    t.finish().unwrap();
    assert_eq!(svg_lines(&plot), [3, 3], "rewritten at the end");
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.contains("rank 4") && svg.contains(">step<") && svg.contains(">loss<"), "{svg:.400}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_lora_on_the_merged_qkv_projection_trains_and_exports_merged_keys() {
    let gpu = test_gpu();
    let dir = std::env::temp_dir().join(format!("wgdit-merged-{}", std::process::id()));
    write_dataset(&dir.join("data"), 2, 6);
    let mut o = options(&dir.join("data"), &dir.join("out"), 40);
    o.lr = 1e-2;
    o.targets = "to_qkv,add_qkv_proj,to_out.0,img_mod.1".into();
    o.qkv = wgdit::models::qwen_image::QkvMode::Merged;
    let sigmas = [0.3, 0.5, 0.7, 0.9];
    let before = wgdit::train::run::eval_loss(&gpu, &o, None, &sigmas, 11).unwrap();
    let r = train(&gpu, &o).unwrap();
    let after = wgdit::train::run::eval_loss(&gpu, &o, Some(&r.lora_file), &sigmas, 11).unwrap();
    let lora = wgdit::models::qwen_image::lora::read_lora(&r.lora_file).unwrap();
    assert!(lora.modules.contains_key("transformer_blocks.0.attn.to_qkv"), "{:?}", lora.modules.keys());
    assert_eq!(lora.modules["transformer_blocks.1.attn.add_qkv_proj"].b.shape, [96, 4]);
    println!("merged-QKV LoRA: held-out loss {before:.4} → {after:.4}");
    assert!(after < 0.9 * before, "held-out loss did not drop: {before:.4} → {after:.4}");
    // Standard mode has no merged projection to put it on: a clear refusal.
    o.qkv = wgdit::models::qwen_image::QkvMode::Standard;
    let e = train(&gpu, &o).unwrap_err().to_string();
    assert!(e.contains("--qkv merged or fused"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_resume_with_changed_hyper_parameters_is_refused_unless_overridden_and_nothing_left_is_said() {
    let gpu = test_gpu();
    let dir = std::env::temp_dir().join(format!("wgdit-resume-check-{}", std::process::id()));
    write_dataset(&dir.join("data"), 2, 4);
    let mut o = options(&dir.join("data"), &dir.join("run"), 2);
    (o.save_every, o.checkpointing) = (2, false);
    train(&gpu, &o).unwrap();
    let ckpt = dir.join("run/checkpoint-2");
    let mut r = options(&dir.join("data"), &dir.join("more"), 3);
    (r.checkpointing, r.resume) = (false, Some(ckpt.clone()));
    (r.lr, r.seed, r.rank) = (1e-3, 9, 8);
    let e = train(&gpu, &r).unwrap_err().to_string();
    for want in ["lr: saved 0.003, given 0.001", "seed: saved 1, given 9", "rank: saved 4, given 8"] {
        assert!(e.contains(want), "{want}: {e}");
    }
    assert!(!dir.join("more").exists(), "a refused resume writes nothing");
    r.resume_override = vec!["rank".into()];
    let e = train(&gpu, &r).unwrap_err().to_string();
    assert!(e.contains("cannot change on resume"), "{e}");
    r.resume_override = vec!["learning_rate".into()];
    assert!(train(&gpu, &r).unwrap_err().to_string().contains("not a hyper-parameter key"));
    r.rank = 4;
    r.resume_override = vec!["lr".into(), "seed".into()];
    assert_eq!(train(&gpu, &r).unwrap().losses.len(), 1);
    // Already at --steps: said as such, nothing written.
    let mut done = options(&dir.join("data"), &dir.join("none"), 2);
    (done.checkpointing, done.resume) = (false, Some(ckpt));
    assert_eq!(train(&gpu, &done).unwrap().up_to_date, Some(2));
    assert!(!dir.join("none").exists());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_second_run_into_a_busy_output_folder_is_refused_with_the_pid() {
    let gpu = test_gpu();
    let dir = std::env::temp_dir().join(format!("wgdit-lock-{}", std::process::id()));
    write_dataset(&dir.join("data"), 1, 4);
    let o = options(&dir.join("data"), &dir.join("out"), 1);
    let first = wgdit::train::run::Trainer::new(&gpu, &o).unwrap();
    let e = wgdit::train::run::Trainer::new(&gpu, &o).err().unwrap().to_string();
    assert!(e.contains("in use by another training run") && e.contains(&std::process::id().to_string()), "{e}");
    drop(first);
    assert!(!dir.join("out/.wgdit-train.lock").exists(), "the lock is released on drop");
    assert!(wgdit::train::run::Trainer::new(&gpu, &o).is_ok());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn the_optimizer_step_is_three_dispatches_whatever_the_number_of_lora_tensors() {
    // AdamW::packed: one norm partial, the finish and one AdamW dispatch per storage binding of
    // parameters, however many modules the LoRA targets.
    let gpu = test_gpu();
    let dir = std::env::temp_dir().join(format!("wgdit-optdispatch-{}", std::process::id()));
    write_dataset(&dir.join("data"), 1, 4);
    let mut counts = Vec::new();
    for (i, targets) in ["to_q", "to_q,to_k,to_v,to_out.0,img_mod.1,txt_mod.1"].iter().enumerate() {
        let mut o = options(&dir.join("data"), &dir.join(format!("out{i}")), 1);
        o.targets = targets.to_string();
        let mut t = wgdit::train::run::Trainer::new(&gpu, &o).unwrap();
        t.step().unwrap();
        let opt = t.optimizer();
        counts.push(opt.tensors());
        assert_eq!(opt.dispatches(), 3, "{targets}: {} tensors", opt.tensors());
    }
    assert!(counts[1] > 2 * counts[0], "tensor counts {counts:?}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
#[ignore]
fn step_time_and_planned_memory_per_mode() {
    // docs/training.md, "Step time and planned memory per mode": `cargo test --test train -- --ignored
    // step_time_and_planned_memory_per_mode --nocapture`.
    let gpu = test_gpu();
    let dir = std::env::temp_dir().join(format!("wgdit-modes-{}", std::process::id()));
    let cfg = wgdit::models::qwen_image::DitConfig::from_file(&model_paths("tiny").0.join("config.json")).unwrap();
    println!("| latents | batch | qkv | checkpointing | ms/step | dispatches/step | peak activations (KiB) |");
    for hw in [8, 32] {
        let data = dir.join(format!("data{hw}"));
        wgdit::train::data::write_synthetic(&data, &cfg, 4, [hw, hw], 5, 3).unwrap();
        for mode in wgdit::models::qwen_image::QkvMode::ALL {
            for ckpt in [false, true] {
                let out = dir.join(format!("out-{hw}-{}-{ckpt}", mode.name()));
                let mut o = options(&data, &out, 10);
                (o.qkv, o.checkpointing, o.batch_size) = (mode, ckpt, 4);
                let r = train(&gpu, &o).unwrap();
                println!(
                    "| 4×{hw}×{hw} | 4 | {} | {} | {:.0} | {} | {:.1} |",
                    mode.name(),
                    if ckpt { "on" } else { "off" },
                    r.mean_step_ms,
                    r.dispatches_per_step,
                    r.peak_activation_bytes as f64 / 1024.0
                );
            }
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_resume_refuses_a_loss_csv_with_a_non_finite_loss_naming_the_line() {
    // loss.csv is read back on resume (its rows feed loss.svg): an edited NaN/inf loss is a clear
    // error, never a NaN coordinate in the plot.
    let dir = std::env::temp_dir().join(format!("wgdit-train-lossnan-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("loss.csv");
    std::fs::write(&path, "step,loss,sigma,lr,step_ms\n1,2.5,0.5,1e-4,10\n2,NaN,0.5,1e-4,10\n").unwrap();
    let Err(e) = wgdit::train::checkpoint::LossLog::resume(&path, 2) else { panic!("a NaN loss was accepted") };
    let e = e.to_string();
    assert!(e.contains("line 3") && e.contains("finite loss"), "{e}");
    // A row after the checkpoint is dropped unread (a crash can cut it short).
    std::fs::write(&path, "step,loss,sigma,lr,step_ms\n1,2.5,0.5,1e-4,10\n2,in").unwrap();
    let log = wgdit::train::checkpoint::LossLog::resume(&path, 1).unwrap();
    assert_eq!(log.points(), &[(1, 2.5)]);
    std::fs::remove_dir_all(&dir).ok();
}
