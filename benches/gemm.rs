//! GEMM forward throughput at scaled-down DiT shapes, f32 vs f16 vs bf16 weights side by side,
//! plus the full LoRA + gated-residual epilogue; then one DiT projection shape per weight dtype
//! (f16, bf16 and every quantized and fp8 format, decoded in the kernels' load stage), with
//! each dtype's time as a ratio to f16 printed at the end. Criterion's "elem/s" here counts FLOPs
//! (2·M·N·K per GEMM; the epilogue's FLOPs are not counted), so "Gelem/s" reads as GFLOP/s.
//! Each iteration submits the pre-bound dispatch and waits for the queue (`gpu.sync()`).
//!
//! The per-dtype shape defaults to M64 K3072 N3072 (seconds per dtype on lavapipe);
//! `WGDIT_BENCH_GEMM_SHAPE=MxKxN` sets another, e.g. `4096x12288x3072` (the DiT's FF down
//! projection at 1024², 4096 image tokens). `WGDIT_BENCH_GEMM_DTYPES=f16,q4_k` limits the dtypes.
//! Float weights are uniform random values; quantized and fp8 ones random valid blocks ([`weight`]).
//! Then the kernel families side by side on one shape (`gemm_variant`): portable, f16, coop and
//! coop-emulated where the adapter runs them (the `wgdit bench kernels` variants), bf16 weights,
//! M128 K512 N512 on a CPU adapter, M4096 K3072 N3072 (the DiT's output projection) on a GPU;
//! `WGDIT_BENCH_GEMM_SHAPE` sets it too. Each variant's time is printed as a ratio to portable.
//!
//! Roofline (derived): 256x256x768 moves 1.8 MB in f32 for 101 MFLOP (≈55 FLOP/B) and
//! 256x1024x256 2.4 MB for 134 MFLOP (≈57 FLOP/B): above the f32 ridge of every GPU in
//! field-notes §4 (H100: 67 TFLOP/s / 3.35 TB/s ≈ 20 FLOP/B), so both are compute-bound; on
//! lavapipe (2 cores, AVX2 FMA) the ceiling is a few tens of GFLOP/s. Per dtype (derived):
//! M64 K3072 N3072 does 1.2 GFLOP over 18.9 MB of f16 weights (64 FLOP/B; 4.5-bit Q4_K: 5.3 MB,
//! 227 FLOP/B), so every dtype is compute-bound there and the ratio measures decode ALU work;
//! at M = 4096 weights are read once per 64-row tile, far from any bandwidth limit.
//! Per family (derived): M4096 K3072 N3072 is 77 GFLOP over 119 MB (f32 x and y, bf16 W; ≈650
//! FLOP/B), compute-bound even at an H100's f16 tensor peak (989 TFLOP/s / 3.35 TB/s ≈ 295 FLOP/B).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::time::{Duration, Instant};
use wgdit::gpu::{Bound, Gpu};
use wgdit::kernels::gemm::{self, Epilogue, GemmArgs, GemmProblem, Lora, Residual, Variant};
use wgdit::layout::PerSampleRef;
use wgdit::pipeline::kernel_bench::{gemm_variant, measure, tiles_for, GemmCase, GemmTensors};
use wgdit::rng::Rng;
use wgdit::tensor::{DType, Tensor};

struct Setup {
    bound: Bound,
    flops: u64,
}

/// A bench weight [n, k]: uniform values in [-1, 1] for f32/f16/bf16; for the quantized and fp8
/// dtypes random quant bits with every block scale 2^-8 and fp8 NaN/infinity codes moved to
/// finite ones. The decode cost does not depend on the values, and no host quantizer is needed.
fn weight(gpu: &Gpu, dtype: DType, n: usize, k: usize) -> Tensor {
    let mut rng = Rng::new(8);
    if matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
        return Tensor::from_f32(gpu, &rng.vec_uniform(n * k, -1.0, 1.0), &[n, k], dtype, "bench").expect("upload");
    }
    let mut b: Vec<u8> = (0..dtype.bytes(n * k)).map(|_| rng.next_u64() as u8).collect();
    // Byte offsets of each block's scales: f16 fields, or the f32 of the scaled fp8 blocks.
    let (f16s, f32s): (&[usize], &[usize]) = match dtype {
        DType::Q8_0 | DType::Q4_0 | DType::Q5_0 => (&[0], &[]),
        DType::Q4_1 | DType::Q5_1 | DType::Q4K | DType::Q5K => (&[0, 2], &[]),
        DType::Q2K => (&[80, 82], &[]),
        DType::Q3K => (&[108], &[]),
        DType::Q6K => (&[208], &[]),
        _ => (&[], if dtype.is_blocked() { &[0] } else { &[] }),
    };
    if matches!(dtype, DType::F8E4M3 | DType::F8E5M2 | DType::F8E4M3Scaled | DType::F8E5M2Scaled) {
        // inf/NaN codes (E5M2 exponent all ones, E4M3 0x7f/0xff) lose an exponent bit.
        let e5m2 = matches!(dtype, DType::F8E5M2 | DType::F8E5M2Scaled);
        let bad = |q: u8| if e5m2 { q & 0x7c == 0x7c } else { q & 0x7f == 0x7f };
        b.iter_mut().filter(|q| bad(**q)).for_each(|q| *q &= !0x40);
    }
    for blk in b.chunks_exact_mut(dtype.block_bytes()) {
        for &o in f16s {
            blk[o..o + 2].copy_from_slice(&0x1c00u16.to_le_bytes()); // f16 2^-8
        }
        for &o in f32s {
            blk[o..o + 4].copy_from_slice(&(1.0f32 / 256.0).to_le_bytes());
        }
    }
    Tensor::from_bytes(gpu, &b, &[n, k], dtype, "bench").expect("upload")
}

fn setup(gpu: &Gpu, (m, k, n): (usize, usize, usize), dtype: DType, fused: bool, v: Variant) -> Setup {
    let mut rng = Rng::new(7);
    let mut t = |len: usize, shape: &[usize], dt: DType| {
        Tensor::from_f32(gpu, &rng.vec_uniform(len, -1.0, 1.0), shape, dt, "bench").expect("upload")
    };
    let x = t(m * k, &[m, k], DType::F32);
    let w = weight(gpu, dtype, n, k);
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

/// (M, K, N) of the per-dtype bench: `WGDIT_BENCH_GEMM_SHAPE=MxKxN` or M64 K3072 N3072.
fn dtype_shape() -> (usize, usize, usize) {
    let Ok(s) = std::env::var("WGDIT_BENCH_GEMM_SHAPE") else { return (64, 3072, 3072) };
    let v: Vec<usize> = s.split('x').map(|d| d.trim().parse().expect("WGDIT_BENCH_GEMM_SHAPE: MxKxN")).collect();
    assert!(v.len() == 3, "WGDIT_BENCH_GEMM_SHAPE: MxKxN, got {s}");
    (v[0], v[1], v[2])
}

/// f16 first (the baseline of the ratios), then bf16 and every quantized and fp8 dtype, or the
/// `WGDIT_BENCH_GEMM_DTYPES` list.
fn bench_dtypes() -> Vec<DType> {
    match std::env::var("WGDIT_BENCH_GEMM_DTYPES") {
        Ok(s) => {
            s.split(',').map(|n| DType::from_name(n.trim()).unwrap_or_else(|| panic!("unknown dtype {n}"))).collect()
        }
        Err(_) => wgdit::dtype::ALL.into_iter().filter(|d| *d != DType::F32).collect(),
    }
}

fn bench_weight_dtypes(c: &mut Criterion) {
    let gpu = Gpu::default_adapter().expect("a GPU adapter (lavapipe is enough)");
    let shape = dtype_shape();
    let (m, k, n) = shape;
    let mut g = c.benchmark_group("gemm_weight_dtype");
    g.sample_size(10).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(2));
    let mut times: Vec<(DType, f64)> = Vec::new();
    for dtype in bench_dtypes() {
        let s = setup(&gpu, shape, dtype, false, Variant::Auto);
        g.throughput(Throughput::Elements(s.flops));
        let mut best = f64::INFINITY;
        g.bench_function(BenchmarkId::new(format!("M{m}_K{k}_N{n}_bias"), dtype.name()), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    gpu.submit(&[&s.bound]).expect("submit");
                    gpu.sync().expect("sync");
                }
                let el = start.elapsed();
                best = best.min(el.as_secs_f64() / iters as f64);
                el
            })
        });
        times.push((dtype, best));
    }
    g.finish();
    let base = times.iter().find(|(d, _)| *d == DType::F16).map(|t| t.1);
    println!("\nGEMM M{m} K{k} N{n} by weight dtype (fastest mean of a sample; ratio = time / f16 time):");
    println!("{:<16} {:>10} {:>9} {:>8} {:>6}", "dtype", "ms", "GFLOP/s", "bits/w", "ratio");
    for (d, t) in &times {
        let gflops = 2.0 * (m * n * k) as f64 / t / 1e9;
        let ratio = base.map_or("-".to_string(), |b| format!("{:.2}", t / b));
        println!("{:<16} {:>10.2} {:>9.1} {:>8.2} {:>6}", d.name(), t * 1e3, gflops, d.bits_per_element(), ratio);
    }
}

/// (M, K, N) of the per-family bench: `WGDIT_BENCH_GEMM_SHAPE`, else small on a CPU adapter.
fn variant_shape(gpu: &Gpu) -> (usize, usize, usize) {
    match std::env::var("WGDIT_BENCH_GEMM_SHAPE") {
        Ok(_) => dtype_shape(),
        Err(_) if gpu.is_cpu() => (128, 512, 512),
        Err(_) => (4096, 3072, 3072),
    }
}

fn bench_variants(c: &mut Criterion) {
    use wgdit::gpu::Family;
    let gpu = Gpu::default_adapter().expect("a GPU adapter (lavapipe is enough)");
    let (m, k, n) = variant_shape(&gpu);
    let case = GemmCase { name: "bench".into(), m, n, k, bias: true, gelu: false };
    let t = GemmTensors::new(&gpu, &case).expect("upload");
    let mut g = c.benchmark_group("gemm_family");
    g.sample_size(10).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(2));
    g.throughput(Throughput::Elements(2 * (m * n * k) as u64));
    let mut times: Vec<(Family, f64)> = Vec::new();
    for family in Family::ALL {
        let tiles = match tiles_for(&gpu, family) {
            Ok(t) => t,
            Err(why) => {
                println!("gemm_family: {} skipped: {why}", family.name());
                continue;
            }
        };
        let bound = gpu.bind(&t.launch(&gpu, gemm_variant(&gpu, tiles)).expect("launch")).expect("bind");
        g.bench_function(BenchmarkId::new(format!("M{m}_K{k}_N{n}_bias_bf16"), family.name()), |b| {
            b.iter(|| {
                gpu.submit(&[&bound]).expect("submit");
                gpu.sync().expect("sync");
            })
        });
        let (ms, _) = measure(&gpu, std::slice::from_ref(&bound), 3).expect("measure");
        times.push((family, ms));
    }
    g.finish();
    let base = times.iter().find(|(f, _)| *f == Family::Portable).map(|t| t.1);
    println!("\nGEMM M{m} K{k} N{n} by kernel family (median of 3 GPU-timed runs; speed-up = portable ms / ms):");
    println!("{:<14} {:>10} {:>9} {:>9}", "family", "ms", "GFLOP/s", "speed-up");
    for (f, ms) in &times {
        let gflops = 2.0 * (m * n * k) as f64 / (ms * 1e-3) / 1e9;
        let up = base.map_or("-".to_string(), |b| format!("{:.2}", b / ms));
        println!("{:<14} {:>10.3} {:>9.2} {:>9}", f.name(), ms, gflops, up);
    }
}

criterion_group!(benches, bench, bench_weight_dtypes, bench_variants);
criterion_main!(benches);
