//! Quickstart: a picture from the built-in tiny pipeline, then the Qwen-Image DiT forward on the
//! default adapter, on a small built-in model.
//!
//! 0. `wgdit generate --prompt` on the tiny diffusers pipeline folder tests/fixtures/pipeline/t2i
//!    with its tiny Qwen2.5-VL text encoder and the Qwen2 tokenizer (tests/fixtures/text, unpacked
//!    into the temp dir): QwenImagePipeline, the real architecture, random weights (2 blocks, a
//!    4-channel VAE), 256×256, 20 steps, true CFG, seed 42; writes target/quickstart.png. Random
//!    weights make abstract pictures; real ones need the real model.
//!
//! Then it builds a 4-block DiT with seeded random bf16 weights (no checkpoint download), runs the
//! fused forward through the executor on random inputs, and prints:
//!   1. the per-op dispatch table of one forward with GPU time per op (timestamp queries);
//!   2. dispatches per block and per step of the real 60-block `qwen-image` graph, per mode
//!      (counted from the graph: no weights, no GPU);
//!   3. the planner's peak activation memory next to the naive sum;
//!   4. the agreement of the three execution modes (standard, merged, fused) on the output.
//!
//! usage: cargo run --release --example quickstart
//! (adapter: WGDIT_BACKEND / WGDIT_ADAPTER, as for the CLI; see `wgdit devices`)

use std::sync::Arc;
use std::time::Instant;
use wgdit::gpu::Gpu;
use wgdit::models::qwen_image::bench::{count_preset, random_inputs, table, DispatchBench};
use wgdit::models::qwen_image::load::RandomWeights;
use wgdit::models::qwen_image::runtime::Dit;
use wgdit::models::qwen_image::{DitConfig, ForwardShape, QkvMode};
use wgdit::pipeline::generate::{generate, GenerateOptions, Noise, Prompt};
use wgdit::tensor::DType;

/// A scaled-down Qwen-Image: 4 blocks, 4 heads × 32 (D = 128), text width 64.
fn small_config() -> DitConfig {
    DitConfig::small()
}

const SEED: u64 = 42;

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1048576.0
}

/// Loads the random model in `mode`, runs one forward and returns (output, dit plan) for reporting.
fn forward(
    gpu: &Arc<Gpu>,
    cfg: &DitConfig,
    shape: &ForwardShape,
    mode: QkvMode,
) -> wgdit::Result<(Vec<f32>, wgdit::models::qwen_image::runtime::DitPlan)> {
    let weights = RandomWeights::new(cfg, DType::BF16, SEED);
    let mut dit = Dit::new(gpu, cfg.clone(), Box::new(weights), mode)?;
    let plan = dit.plan(shape, false)?;
    let out = plan.forward(&random_inputs(cfg, shape, SEED))?;
    Ok((out, plan))
}

/// max_i |a_i − b_i| / max_i |b_i|.
fn max_rel_diff(a: &[f32], b: &[f32]) -> f64 {
    let scale = b.iter().fold(0f64, |m, &v| m.max(v.abs() as f64));
    let diff = a.iter().zip(b).fold(0f64, |m, (&x, &y)| m.max((x as f64 - y as f64).abs()));
    diff / scale.max(f64::MIN_POSITIVE)
}

fn main() -> wgdit::Result<()> {
    let t0 = Instant::now();
    let gpu = Gpu::default_adapter()?;
    let info = gpu.info();
    println!("adapter: {} ({}, {})", info.name, info.backend, info.device_type);

    // 0. A picture from the built-in tiny pipeline.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let folder = wgdit::testing::text_pipeline("t2i")?;
    let out = root.join("target/quickstart.png");
    let prompt = "A lighthouse on a cliff at dusk, waves below";
    let mut o = GenerateOptions::new(folder, Prompt::Text(prompt.into()), out.clone());
    o.negative = Some(Prompt::Text("blurry, low quality".into()));
    (o.width, o.height, o.steps, o.noise) = (Some(256), Some(256), 20, Noise::Seed(42));
    let r = generate(&gpu, &o, &mut |_| {})?;
    println!("== 0. wgdit generate --prompt \"{prompt}\" on the built-in tiny pipeline (tests/fixtures/pipeline/t2i)");
    println!(
        "wrote {} ({}x{}, {} steps with true CFG, text encoder {:.2} s, {:.2} s/step, VAE decode {:.2} s)",
        r.output.display(),
        r.width,
        r.height,
        r.steps,
        r.text_encode_ms / 1e3,
        r.step_ms.iter().sum::<f64>() / r.step_ms.len() as f64 / 1e3,
        r.vae_decode_ms / 1e3
    );
    println!("the weights are random, so the picture is abstract: real pictures need the real Qwen-Image weights\n");

    let cfg = small_config();
    let shape = ForwardShape { batch: 1, s_txt: 32, img_shapes: vec![[1, 16, 16]], masked: false };
    println!(
        "model:   random bf16 weights, {} blocks, {} heads x {} (D = {}), in_channels {}, text width {}",
        cfg.num_layers,
        cfg.num_attention_heads,
        cfg.attention_head_dim,
        cfg.hidden(),
        cfg.in_channels,
        cfg.joint_attention_dim
    );
    println!(
        "inputs:  batch 1, {} image tokens (16 x 16 patches), {} text tokens, sigma 0.5\n",
        shape.s_img(),
        shape.s_txt
    );

    // 1. One fused forward, then the same plan replayed with a timestamp around every dispatch.
    let (fused, plan) = forward(&gpu, &cfg, &shape, QkvMode::Fused)?;
    let report = plan.plan.run_timed()?;
    println!("== 1. dispatches of one fused forward on this adapter (GPU time per op)");
    if report.gpu_ns_by_op.is_empty() {
        println!("(this adapter has no TIMESTAMP_QUERY: counts only)");
    }
    print!("{}", report.table());
    let layers: Vec<String> = report
        .by_layer
        .iter()
        .map(|(l, n)| {
            if l == "-" {
                format!("outside blocks {n}")
            } else {
                format!("block {} {n}", l.parse::<usize>().unwrap_or_default())
            }
        })
        .collect();
    println!("dispatches per layer: {}\n", layers.join(", "));

    // 2. The real model's graph, counted without weights or GPU (bf16 weights, as released).
    let b = DispatchBench { tokens: 4096, text_tokens: 128, runs: 0 };
    let rows = count_preset(&DitConfig::qwen_image(), &b, &QkvMode::ALL);
    println!("== 2. qwen-image preset (60 blocks, D = 3072), 4096 image + 128 text tokens, per mode");
    print!("{}", table(&rows));
    println!();

    // 3. Activation memory of the small fused plan.
    let m = &plan.plan.memory;
    println!("== 3. activation memory of the small fused plan");
    println!(
        "planned peak {:.2} MiB (buffers reused by liveness) vs naive sum {:.2} MiB ({:.1}x less); inputs {:.2} MiB\n",
        mib(m.peak_activation_bytes),
        mib(m.naive_activation_bytes),
        m.naive_activation_bytes as f64 / m.peak_activation_bytes as f64,
        mib(m.input_bytes)
    );

    // 4. The three execution modes on the same weights and inputs.
    println!("== 4. agreement of the three modes (output [1, {}, {}])", shape.s_img(), cfg.out_features());
    for mode in [QkvMode::Standard, QkvMode::Merged] {
        let (out, p) = forward(&gpu, &cfg, &shape, mode)?;
        let d = max_rel_diff(&out, &fused);
        let same = if d == 0.0 { " (bit-identical)" } else { "" };
        println!(
            "{:<8} vs fused: max |diff| / max |fused| = {d:.2e}{same}   ({} dispatches vs {})",
            mode.name(),
            p.plan.report().total,
            report.total
        );
    }
    println!("\ndone in {:.1} s", t0.elapsed().as_secs_f64());
    Ok(())
}
