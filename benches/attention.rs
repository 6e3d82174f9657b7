//! Joint flash attention throughput: forward and backward at B = 1, Dh = 128, per kernel family
//! side by side (the `wgdit bench kernels` variants: `kernel_bench::attention_launcher`; a variant
//! the adapter cannot run is printed as skipped), with each variant's time as a ratio to portable
//! printed at the end.
//! `cargo bench --bench attention`: H = 4, S = 1024 on a GPU; H = 2, S = 256 on a CPU adapter such
//! as lavapipe (about 0.1-0.3 GFLOP/s there) so the default run stays near a minute.
//! `WGDIT_BENCH_S=4096` overrides S.
//! FLOPs counted as matmul work only: forward 4·B·H·S²·Dh (Q·Kᵀ and P·V), backward 10·B·H·S²·Dh
//! (recomputed Q·Kᵀ in both passes, dP = dO·Vᵀ in both, dQ, dK, dV); exp() and the softmax are not
//! counted. Each timed iteration submits the pre-bound dispatches and waits for the queue.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::time::Duration;
use wgdit::gpu::{Family, Gpu};
use wgdit::layout::JointShape;
use wgdit::pipeline::kernel_bench::{attention_launcher, measure, tiles_for, AttnCase, AttnTensors, Case};

/// (heads, S) for this adapter.
fn size(gpu: &Gpu) -> (usize, usize) {
    let heads = if gpu.is_cpu() { 2 } else { 4 };
    match std::env::var("WGDIT_BENCH_S") {
        Ok(s) => (heads, s.parse().expect("WGDIT_BENCH_S must be an integer")),
        Err(_) if gpu.is_cpu() => (heads, 256),
        Err(_) => (heads, 1024),
    }
}

fn bench(c: &mut Criterion) {
    let gpu = Gpu::default_adapter().expect("the attention bench needs a GPU adapter");
    let (heads, s) = size(&gpu);
    let shape = JointShape { batch: 1, heads, head_dim: 128, s_txt: 0, s_img: s };
    // Roofline: fp32 CUDA cores: H100 67 TFLOP/s ≈ 16 µs per GFLOP; at S ≥ 1k the kernel is
    // compute bound (arithmetic intensity ~S/2 FLOP per byte of Q/K/V).
    let mut g = c.benchmark_group(format!("attention {} (B=1 H={heads} Dh=128 S={s})", gpu.info().name));
    g.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(5));
    let mut times = Vec::new();
    for backward in [false, true] {
        let case = AttnCase { name: "bench".into(), shape, backward };
        let t = AttnTensors::new(&gpu, &case).expect("upload");
        let pass = if backward { "backward" } else { "forward" };
        g.throughput(Throughput::Elements(Case::Attention(case).flop() as u64)); // "elements" = FLOP
        for family in Family::ALL {
            let launcher = match tiles_for(&gpu, family).map(attention_launcher) {
                Ok(l) => l,
                Err(why) => {
                    println!("attention {pass}: {} skipped: {why}", family.name());
                    continue;
                }
            };
            let launches = match launcher(&gpu, &t) {
                Ok(l) => l,
                Err(e) => {
                    println!("attention {pass}: {} skipped: {e}", family.name());
                    continue;
                }
            };
            let bound: Vec<_> = launches.iter().map(|l| gpu.bind(l).expect("bind")).collect();
            let refs: Vec<_> = bound.iter().collect();
            g.bench_function(BenchmarkId::new(format!("{pass} FLOP"), family.name()), |b| {
                b.iter(|| {
                    gpu.submit(&refs).expect("submit");
                    gpu.sync().expect("sync");
                })
            });
            times.push((pass, family, measure(&gpu, &bound, 3).expect("measure").0));
        }
    }
    g.finish();
    println!("\nattention by kernel family (median of 3 GPU-timed runs; speed-up = portable ms / ms):");
    for (pass, f, ms) in &times {
        let base = times.iter().find(|(p, b, _)| p == pass && *b == Family::Portable).map(|t| t.2);
        let up = base.map_or("-".to_string(), |b| format!("{:.2}", b / ms));
        println!("{pass:<9} {:<14} {ms:>10.3} ms  speed-up {up}", f.name());
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
