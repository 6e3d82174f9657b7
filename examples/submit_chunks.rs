//! Dispatches per submission (`Gpu::set_submit_chunk`) side by side on one device: the fused
//! forward of a 60-block model (the real block count, so the real ~500 dispatches per step) with
//! tiny layers (D = 128, seeded random bf16 weights), at a shape small enough that encoding, not
//! the GEMMs, is most of the step. Each size runs in turn, `RUNS` rounds, and the median and best
//! wall time per forward (submit + wait) are printed with their ratios to one submission.
//!
//!     cargo run --release --example submit_chunks [-- RUNS]
// Roofline: ~0.2 GFLOP per forward (8 rows) is ~30 ms on lavapipe's ~6 GFLOP/s; the rest of the
// step is recording and driver work, which chunking can overlap with execution.

use std::time::Instant;
use wgdit::gpu::Gpu;
use wgdit::models::qwen_image::bench::random_inputs;
use wgdit::models::qwen_image::load::RandomWeights;
use wgdit::models::qwen_image::runtime::Dit;
use wgdit::models::qwen_image::{DitConfig, ForwardShape, QkvMode};
use wgdit::tensor::DType;

const SIZES: [usize; 5] = [0, 32, 64, 128, 256];

fn main() -> wgdit::Result<()> {
    let runs: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(9);
    let gpu = Gpu::default_adapter()?;
    let cfg = DitConfig { num_layers: 60, ..DitConfig::small() };
    for (mode, s_txt, grid) in [(QkvMode::Fused, 4, [1, 2, 2]), (QkvMode::Standard, 4, [1, 2, 2])] {
        let shape = ForwardShape { batch: 1, s_txt, img_shapes: vec![grid], masked: false };
        let mut dit = Dit::new(&gpu, cfg.clone(), Box::new(RandomWeights::new(&cfg, DType::BF16, 1)), mode)?;
        let plan = dit.plan(&shape, false)?;
        plan.write_inputs(&random_inputs(&cfg, &shape, 7));
        let mut ms = vec![Vec::new(); SIZES.len()];
        for round in 0..=runs {
            for (i, &size) in SIZES.iter().enumerate() {
                gpu.set_submit_chunk(size);
                let t0 = Instant::now();
                plan.submit()?;
                gpu.sync()?;
                if round > 0 {
                    ms[i].push(t0.elapsed().as_secs_f64() * 1e3); // round 0 warms up
                }
            }
        }
        ms.iter_mut().for_each(|v| v.sort_by(f64::total_cmp));
        let med: Vec<f64> = ms.iter().map(|v| v[v.len() / 2]).collect();
        let best: Vec<f64> = ms.iter().map(|v| v[0]).collect();
        println!(
            "{} mode, 60 blocks, {} dispatches/forward, {} + {} tokens, on {} ({runs} rounds; ratio to one submission):",
            mode.name(),
            plan.plan.report().total,
            s_txt,
            grid[1] * grid[2],
            gpu.info().name
        );
        for (i, size) in SIZES.iter().enumerate() {
            let label = if *size == 0 { "one submission".to_string() } else { format!("chunks of {size}") };
            let (m, b) = (med[i], best[i]);
            println!("  {label:<16} median {m:>8.2} ms ({:.2}x)   best {b:>8.2} ms ({:.2}x)", m / med[0], b / best[0]);
        }
    }
    gpu.set_submit_chunk(wgdit::gpu::SUBMIT_CHUNK);
    Ok(())
}
