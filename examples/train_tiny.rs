//! Trains a LoRA on the tiny fixture model (tests/fixtures/dit/tiny, made by diffusers) over a
//! handful of synthetic cached samples, in each `--qkv` mode back to back, and prints the loss
//! curve, a held-out loss before and after, and the step time of each mode.
//!
//!     cargo run --release --example train_tiny [-- STEPS]

use std::path::PathBuf;
use wgdit::gpu::Gpu;
use wgdit::models::qwen_image::{DitConfig, QkvMode};
use wgdit::train::run::{eval_loss, train, TrainOptions};
use wgdit::train::schedule::Sampling;

fn main() -> wgdit::Result<()> {
    let steps: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(200);
    let gpu = Gpu::default_adapter()?;
    let model = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dit/tiny");
    let cfg = DitConfig::from_file(&model.join("config.json"))?;
    let dir = std::env::temp_dir().join(format!("wgdit-train-tiny-{}", std::process::id()));
    wgdit::train::data::write_synthetic(&dir.join("data"), &cfg, 4, [8, 8], 5, 3)?;
    println!("adapter: {}; {steps} steps per mode, 4 samples of 16 image + 5 text tokens", gpu.info().name);
    let mut times = Vec::new();
    for mode in QkvMode::ALL {
        let mut o = TrainOptions::new(model.clone(), dir.join("data"), dir.join(mode.name()), steps);
        (o.rank, o.alpha, o.lr, o.qkv, o.seed, o.sampling, o.weight_decay) =
            (8, 8.0, 1e-2, mode, 1, Sampling::Uniform, 0.0);
        let sigmas = [0.2, 0.4, 0.6, 0.8];
        let before = eval_loss(&gpu, &o, None, &sigmas, 7)?;
        let r = train(&gpu, &o)?;
        let after = eval_loss(&gpu, &o, Some(&r.lora_file), &sigmas, 7)?;
        let curve: Vec<String> = r
            .losses
            .chunks((steps as usize / 8).max(1))
            .map(|c| format!("{:.3}", c.iter().sum::<f64>() / c.len() as f64))
            .collect();
        println!("{:<8} train loss (means of {} steps): {}", mode.name(), (steps / 8).max(1), curve.join(" "));
        println!(
            "{:<8} held-out loss {before:.4} -> {after:.4} ({:.2}x lower); {:.1} ms/step, {} dispatches/step",
            mode.name(),
            before / after,
            r.mean_step_ms,
            r.dispatches_per_step
        );
        times.push(r.mean_step_ms);
    }
    println!(
        "step time ratio merged/standard {:.3}, fused/standard {:.3} (same run, {})",
        times[1] / times[0],
        times[2] / times[0],
        gpu.info().name
    );
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}
