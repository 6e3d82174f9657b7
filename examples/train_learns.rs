//! How far a LoRA on the tiny fixture model (tests/fixtures/dit/tiny) brings the flow-matching loss
//! down, on 4 synthetic cached samples, for two kinds of latents:
//! - `zero`: all-zero latents, so the target is the noise itself and x_t = σ·noise: the model has to
//!   learn output ≈ x_t / σ from the timestep, a task of scale only;
//! - `smooth`: a few low-frequency cosines per channel, image-like structure to memorise.
//!
//! (i.i.d. N(0, 1) latents cap the ratio near 2.5x: the best predictor of noise − x0 from x_t is then
//! linear, with an error of π/2 averaged over uniform σ; see docs/training.md.)
//!
//! Settings (found by a sweep, docs/training.md): batch 4, rank 16, lr 1e-2, grad-norm clip 1.0,
//! uniform σ, DiffSynth's 12 targets plus the FFN up-projections, img_in, norm_out.linear, proj_out.
//!
//!     cargo run --release --example train_learns [-- STEPS]

use std::path::PathBuf;
use wgdit::gpu::Gpu;
use wgdit::models::qwen_image::DitConfig;
use wgdit::train::data::{write_synthetic_with, LatentKind};
use wgdit::train::run::{eval_loss, train, TrainOptions};
use wgdit::train::schedule::Sampling;

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

fn main() -> wgdit::Result<()> {
    let steps: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(500);
    let gpu = Gpu::default_adapter()?;
    let model = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dit/tiny");
    let cfg = DitConfig::from_file(&model.join("config.json"))?;
    let dir = std::env::temp_dir().join(format!("wgdit-train-learns-{}", std::process::id()));
    println!("adapter: {}; {steps} steps, 4 samples of 16 image + 5 text tokens, batch 4", gpu.info().name);
    for (name, kind) in [("zero", LatentKind::Zero), ("smooth", LatentKind::Smooth)] {
        let data = dir.join(name);
        write_synthetic_with(&data, &cfg, 4, [8, 8], 5, 3, kind)?;
        let mut o = TrainOptions::new(model.clone(), data, dir.join(format!("{name}-out")), steps);
        (o.rank, o.alpha, o.lr, o.seed, o.batch_size, o.max_grad_norm) = (16, 16.0, 1e-2, 1, 4, 1.0);
        (o.sampling, o.weight_decay) = (Sampling::Uniform, 0.0);
        o.targets += ",img_mlp.net.0.proj,txt_mlp.net.0.proj,proj_out,img_in,norm_out.linear";
        let sigmas = [0.2, 0.4, 0.6, 0.8];
        let before = eval_loss(&gpu, &o, None, &sigmas, 7)?;
        let r = train(&gpu, &o)?;
        let after = eval_loss(&gpu, &o, Some(&r.lora_file), &sigmas, 7)?;
        let l = &r.losses;
        let chunk = (l.len() / 10).max(1);
        let curve: Vec<String> = l.chunks(chunk).map(|c| format!("{:.3}", mean(c))).collect();
        println!("{name:<6} train loss, means of {chunk} steps: {}", curve.join(" "));
        println!(
            "{name:<6} first 10 steps {:.3} -> last 10 {:.3} ({:.1}x); held-out {before:.3} -> {after:.3} ({:.1}x); {:.0} ms/step",
            mean(&l[..10]),
            mean(&l[l.len() - 10..]),
            mean(&l[..10]) / mean(&l[l.len() - 10..]),
            before / after,
            r.mean_step_ms
        );
    }
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}
