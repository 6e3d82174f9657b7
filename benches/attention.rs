//! Joint flash attention throughput: forward and backward at B = 1, Dh = 128.
//! `cargo bench --bench attention`: H = 4, S = 1024 on a GPU; H = 2, S = 256 on a CPU adapter such
//! as lavapipe (about 0.1-0.3 GFLOP/s there) so the default run stays near a minute.
//! `WGDIT_BENCH_S=4096` overrides S.
//! FLOPs counted as matmul work only: forward 4·B·H·S²·Dh (Q·Kᵀ and P·V), backward 10·B·H·S²·Dh
//! (recomputed Q·Kᵀ in both passes, dP = dO·Vᵀ in both, dQ, dK, dV); exp() and the softmax are not
//! counted. Each timed iteration submits the dispatches and waits for the queue (`gpu.sync()`).
//! Variants side by side: the portable kernels, the device's tile backend, and on CPU adapters
//! the f32 emulation and the f16 backend (a variant whose layout does not fit is skipped with
//! the reason).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::time::Duration;
use wgdit::gpu::Gpu;
use wgdit::kernels::attention::{launch_backward_variant, launch_forward_variant, Args, BackwardArgs, Variant};
use wgdit::kernels::Tiles;
use wgdit::layout::{AttnOptions, JointShape};
use wgdit::rng::Rng;
use wgdit::tensor::{DType, Tensor};

/// (heads, S) for this adapter.
fn size(gpu: &Gpu) -> (usize, usize) {
    let heads = if gpu.is_cpu() { 2 } else { 4 };
    match std::env::var("WGDIT_BENCH_S") {
        Ok(s) => (heads, s.parse().expect("WGDIT_BENCH_S must be an integer")),
        Err(_) if gpu.is_cpu() => (heads, 256),
        Err(_) => (heads, 1024),
    }
}

fn tensor(gpu: &Gpu, rng: &mut Rng, n: usize, name: &str) -> Tensor {
    Tensor::from_f32(gpu, &rng.vec_uniform(n, -1.0, 1.0), &[n], DType::F32, name).expect("upload")
}

fn bench(c: &mut Criterion) {
    let gpu = Gpu::default_adapter().expect("the attention bench needs a GPU adapter");
    let (heads, s) = size(&gpu);
    let sh = JointShape { batch: 1, heads, head_dim: 128, s_txt: 0, s_img: s };
    let mut rng = Rng::new(7);
    let n = sh.head_major_len();
    let [q, k, v, o, d_o, dq, dk, dv] =
        ["q", "k", "v", "o", "do", "dq", "dk", "dv"].map(|name| tensor(&gpu, &mut rng, n, name));
    let [lse, delta] = ["lse", "delta"].map(|name| tensor(&gpu, &mut rng, sh.lse_len(), name));
    let opts = AttnOptions::full(heads);
    let args = Args { q: &q, k: &k, v: &v, mask: None, segments: None, opts, o: &o, lse: &lse };
    let bargs = BackwardArgs {
        q: &q,
        k: &k,
        v: &v,
        mask: None,
        o: &o,
        lse: &lse,
        d_o: &d_o,
        delta: &delta,
        dq: &dq,
        dk: &dk,
        dv: &dv,
    };
    let flop = (sh.batch * sh.heads * s * s * sh.head_dim) as u64;
    // Roofline: fp32 CUDA cores (no tensor cores in WGSL): H100 67 TFLOP/s ≈ 16 µs per GFLOP; at S ≥ 1k
    // the kernel is compute bound (arithmetic intensity ~S/2 FLOP per byte of Q/K/V). The coop tile
    // programs run on tensor cores: ~10x that ceiling.
    let mut variants = vec![Variant::Portable];
    variants.extend(Tiles::of(gpu.kernel_choice()).map(Variant::Tile));
    if gpu.is_cpu() {
        variants.extend([Variant::Tile(Tiles::Emulated16), Variant::Tile(Tiles::F16)]);
    }
    variants.dedup();
    let mut g = c.benchmark_group(format!("attention {} (B=1 H={heads} Dh=128 S={s})", gpu.info().name));
    g.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(5));
    for variant in variants {
        match launch_forward_variant(&gpu, &sh, &args, variant) {
            Ok(fwd) => {
                g.throughput(Throughput::Elements(4 * flop)); // "elements" = FLOP
                g.bench_function(format!("forward {variant:?} FLOP"), |b| {
                    b.iter(|| {
                        gpu.run(std::slice::from_ref(&fwd)).expect("run");
                        gpu.sync().expect("sync");
                    })
                });
            }
            Err(e) => eprintln!("forward {variant:?} skipped: {e}"),
        }
        match launch_backward_variant(&gpu, &sh, &bargs, variant) {
            Ok(bwd) => {
                g.throughput(Throughput::Elements(10 * flop));
                g.bench_function(format!("backward {variant:?} FLOP"), |b| {
                    b.iter(|| {
                        gpu.run(&bwd).expect("run");
                        gpu.sync().expect("sync");
                    })
                });
            }
            Err(e) => eprintln!("backward {variant:?} skipped: {e}"),
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
