//! GEMM forward throughput at scaled-down DiT shapes, f32 vs f16 vs bf16 weights side by side,
//! plus the full LoRA + gated-residual epilogue. Criterion's "elem/s" here counts FLOPs
//! (2·M·N·K per GEMM; the epilogue's FLOPs are not counted), so "Gelem/s" reads as GFLOP/s.
//! Each iteration submits the pre-bound dispatch and waits for the queue (`gpu.sync()`).
//!
//! Roofline (derived): 256x256x768 moves 1.8 MB in f32 for 101 MFLOP (≈55 FLOP/B) and
//! 256x1024x256 2.4 MB for 134 MFLOP (≈57 FLOP/B): above the f32 ridge of every GPU in
//! field-notes §4 (H100: 67 TFLOP/s / 3.35 TB/s ≈ 20 FLOP/B), so both are compute-bound; on
//! lavapipe (2 cores, AVX2 FMA) the ceiling is a few tens of GFLOP/s.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::time::Duration;
use wgdit::gpu::{Bound, Gpu};
use wgdit::kernels::gemm::{self, Epilogue, GemmArgs, GemmProblem, Lora, Residual, Variant};
use wgdit::layout::PerSampleRef;
use wgdit::rng::Rng;
use wgdit::tensor::{DType, Tensor};

struct Setup {
    bound: Bound,
    flops: u64,
}

fn setup(gpu: &Gpu, (m, k, n): (usize, usize, usize), dtype: DType, fused: bool, v: Variant) -> Setup {
    let mut rng = Rng::new(7);
    let mut t = |len: usize, shape: &[usize], dt: DType| {
        Tensor::from_f32(gpu, &rng.vec_uniform(len, -1.0, 1.0), shape, dt, "bench").expect("upload")
    };
    let x = t(m * k, &[m, k], DType::F32);
    let w = t(n * k, &[n, k], dtype);
    let bias = t(n, &[n], DType::F32);
    let (r, gate) = (32, t(3 * n, &[3 * n], DType::F32));
    let (lt, lb) = (t(m * r, &[m, r], DType::F32), t(n * r, &[n, r], DType::F32));
    let y = t(m * n, &[m, n], DType::F32);
    let problem = GemmProblem::rows(0, m).gate(PerSampleRef::per_sample(2 * n, 3 * n));
    let epilogue = if fused {
        Epilogue {
            bias: Some(&bias),
            lora: Some(Lora { t: &lt, b: &lb, rank: r }),
            gate: Some(&gate),
            residual: Residual::InPlace,
            gelu: false,
        }
    } else {
        Epilogue { bias: Some(&bias), ..Default::default() }
    };
    let args = GemmArgs { x: &x, weight: &w, n, problems: &[problem], epilogue, y: &y, y_col0: 0 };
    let launch = gemm::launch_variant(gpu, &args, v).expect("launch");
    Setup { bound: gpu.bind(&launch).expect("bind"), flops: 2 * (m * n * k) as u64 }
}

fn bench(c: &mut Criterion) {
    let gpu = Gpu::default_adapter().expect("a GPU adapter (lavapipe is enough)");
    let mut g = c.benchmark_group("gemm_flops");
    g.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    // Auto = the variant `gemm::launch` picks on this adapter (registers on lavapipe).
    let (a, wg) = (Variant::Auto, Variant::Workgroup);
    let cases = [
        ((256, 256, 768), DType::F32, false, a),
        ((256, 256, 768), DType::F16, false, a),
        ((256, 256, 768), DType::BF16, false, a),
        ((256, 1024, 256), DType::F32, false, a),
        ((256, 1024, 256), DType::F16, false, a),
        ((256, 1024, 256), DType::BF16, false, a),
        ((256, 256, 768), DType::BF16, true, a),
        ((256, 256, 768), DType::F32, false, wg),
    ];
    for (shape, dtype, fused, v) in cases {
        let s = setup(&gpu, shape, dtype, fused, v);
        let (m, k, n) = shape;
        let epi = if fused { "bias+lora32+gate+residual" } else { "bias" };
        let id = BenchmarkId::new(format!("M{m}_K{k}_N{n}_{epi}_{v:?}"), dtype.name());
        g.throughput(Throughput::Elements(s.flops));
        g.bench_function(id, |b| {
            b.iter(|| {
                gpu.submit(&[&s.bound]).expect("submit");
                gpu.sync().expect("sync");
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
