//! The DiT forward in the three `--qkv` modes side by side: standard (20 dispatches per block),
//! merged (16) and fused (8), on one small config with seeded random bf16 weights
//! (`RandomWeights`): 2 blocks, 4 heads × 32 (D = 128), 256 image tokens (16 × 16) + 32 text tokens,
//! batch 1. Each timed iteration replays the pre-bound plan (one submission) and waits for the
//! queue (`gpu.sync()`), as `models::qwen_image::bench::time_forward` does. Throughput counts matmul FLOPs of
//! the graph (GEMMs 2·M·N·K, attention 4·S²·D; norms, RoPE and softmax not counted), so
//! criterion's "elem/s" reads as FLOP/s. After the group, the mean and best time per mode and their
//! ratios to fused are printed. Then weight streaming (`stream`): the same forward with blocks
//! streamed through the ring, against all resident. `cargo bench --bench dit` (a few minutes on
//! lavapipe).

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wgdit::gpu::Gpu;
use wgdit::models::qwen_image::bench::random_inputs;
use wgdit::models::qwen_image::load::RandomWeights;
use wgdit::models::qwen_image::runtime::Dit;
use wgdit::models::qwen_image::{DitConfig, ForwardShape, QkvMode};
use wgdit::tensor::DType;

fn config() -> DitConfig {
    DitConfig::small()
}

/// Matmul FLOPs of one forward: per block the QKV (3D), out (D) and FFN (4D up + down) GEMMs over
/// all R rows, 24·R·D², plus attention 4·S²·D; the last block's text FFN is skipped by the graph.
fn forward_flops(c: &DitConfig, s: &ForwardShape) -> u64 {
    let (d, st, si) = (c.hidden() as u64, s.s_txt as u64, s.s_img() as u64);
    let r = st + si;
    let blocks = c.num_layers as u64;
    let per_block = 24 * r * d * d + 4 * r * r * d;
    let skipped_text_ffn = 16 * st * d * d;
    let embed = 2 * si * c.in_channels as u64 * d + 2 * st * c.joint_attention_dim as u64 * d;
    let modulation = 2 * d * (256 + d + blocks * 12 * d + 2 * d);
    let out = 2 * si * d * c.out_features() as u64;
    blocks * per_block - skipped_text_ffn + embed + modulation + out
}

// Roofline: 307 MFLOP / ~5 MB of weight + activation traffic ≈ 60 FLOP/B: compute bound (lavapipe: attention-bound).

fn bench(c: &mut Criterion) {
    let gpu: Arc<Gpu> = Gpu::default_adapter().expect("the DiT bench needs a GPU adapter (lavapipe is enough)");
    let cfg = config();
    let shape = ForwardShape { batch: 1, s_txt: 32, img_shapes: vec![[1, 16, 16]], masked: false };
    let inputs = random_inputs(&cfg, &shape, 7);
    let flops = forward_flops(&cfg, &shape);
    // Per mode: the ms per forward of every timed call (criterion's warm-up call included).
    let samples: RefCell<BTreeMap<&'static str, Vec<f64>>> = Default::default();

    let mut g = c.benchmark_group(format!("dit_forward {} (2 blocks, D=128, 256+32 tokens)", gpu.info().name));
    g.sample_size(10).sampling_mode(SamplingMode::Flat);
    g.warm_up_time(Duration::from_millis(1)).measurement_time(Duration::from_secs(1));
    g.throughput(Throughput::Elements(flops)); // "elements" = matmul FLOPs
    for mode in QkvMode::ALL {
        let weights = RandomWeights::new(&cfg, DType::BF16, 1);
        let mut dit = Dit::new(&gpu, cfg.clone(), Box::new(weights), mode).expect("model");
        let plan = dit.plan(&shape, false).expect("plan");
        plan.write_inputs(&inputs);
        let samples = &samples;
        g.bench_function(mode.name(), |b| {
            b.iter_custom(|iters| {
                let t0 = Instant::now();
                for _ in 0..iters {
                    plan.submit().expect("run");
                    gpu.sync().expect("sync");
                }
                let dt = t0.elapsed();
                let ms = dt.as_secs_f64() * 1e3 / iters as f64;
                samples.borrow_mut().entry(mode.name()).or_default().push(ms);
                dt
            })
        });
    }
    g.finish();

    let samples = samples.into_inner();
    if QkvMode::ALL.iter().any(|m| !samples.contains_key(m.name())) {
        return; // a filter left some modes out: no ratio table
    }
    let mean = |m: &str| samples[m].iter().sum::<f64>() / samples[m].len() as f64;
    let best = |m: &str| samples[m].iter().copied().fold(f64::INFINITY, f64::min);
    println!(
        "\nmatmul work per forward: {:.1} MFLOP; ms per forward (mean and best of the timed calls):",
        flops as f64 / 1e6
    );
    for mode in QkvMode::ALL {
        let m = mode.name();
        println!(
            "{m:<8} mean {:>9.2} ms ({:>5.2}x fused)   best {:>9.2} ms ({:>5.2}x fused)",
            mean(m),
            mean(m) / mean("fused"),
            best(m),
            best(m) / best("fused")
        );
    }
}

/// Weight streaming: the fused forward of an 8-block D = 512 model (bf16, 12 MiB per block; the
/// fused modulation chunks stay resident) with
/// every block resident, 2 resident, and none (blocks assembled on the worker thread, and in turn)
/// — `models::qwen_image::bench::measure_streaming`, one table with the ratios to resident.
// Roofline: a block's 12 MiB upload is ~2.5 ms of memcpy at 5 GB/s against 0.6 GFLOP of GEMMs at
// 80 rows (~100 ms on lavapipe's ~6 GFLOP/s) or 60 MFLOP at 8 rows; a GPU over PCIe: 0.5 ms vs µs.
fn stream(_c: &mut Criterion) {
    let gpu: Arc<Gpu> = Gpu::default_adapter().expect("the DiT bench needs a GPU adapter (lavapipe is enough)");
    let cfg = DitConfig {
        num_layers: 8,
        attention_head_dim: 64,
        num_attention_heads: 8,
        joint_attention_dim: 64,
        axes_dims_rope: [16, 24, 24],
        ..DitConfig::small()
    };
    let mut make = || Dit::new(&gpu, cfg.clone(), Box::new(RandomWeights::new(&cfg, DType::BF16, 1)), QkvMode::Fused);
    let cases = [(2, true), (0, true), (0, false)];
    // 80 rows: the GEMMs outweigh a block's upload; 8 rows: they do not.
    for (s_txt, grid) in [(16, [1, 8, 8]), (4, [1, 2, 2])] {
        let shape = ForwardShape { batch: 1, s_txt, img_shapes: vec![grid], masked: false };
        let rows =
            wgdit::models::qwen_image::bench::measure_streaming(&mut make, &shape, &cases, 7).expect("stream bench");
        println!(
            "\nweight streaming, fused, 8 blocks, D = 512, {s_txt} + {} tokens, bf16, on {} (per forward, median of 7):\n{}",
            grid[1] * grid[2],
            gpu.info().name,
            wgdit::models::qwen_image::bench::stream_table(&rows)
        );
    }
}

criterion_group!(benches, bench, stream);
criterion_main!(benches);
