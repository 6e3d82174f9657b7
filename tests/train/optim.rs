//! The optimizer bookkeeping: lr schedules (DiffSynth's ConstantLR numbers from torch), and
//! AdamW over several GPU tensors (bound once, uniforms rewritten per step) against the f32
//! CPU reference of `kernels::adamw` over several steps, with and without clipping and
//! accumulation scaling; zeroing gradients; moments saved and restored mid-run.

use std::sync::Arc;
use wgdit::gpu::Gpu;
use wgdit::kernels::adamw::{cpu, params, Hyper};
use wgdit::rng::Rng;
use wgdit::tensor::{DType, Tensor};
use wgdit::testing::{assert_close, test_gpu, Tol};
use wgdit::train::optim::{AdamW, AdamWOptions, LrSchedule};

// As tests/adamw.rs: the same f32 operations as the reference; the global norm is summed in
// another order on the GPU, so the clip coefficient may differ by an ulp, and GPU sqrt/division
// round within an ulp: ~1e-7 relative per step, a few steps accumulate a few of them.
const STEP: Tol = Tol { abs: 2e-7, rel: 2e-6, rel_l2: 1e-6 };

/// Awkward sizes, one above sq_norm's 4096-element partial so the norm spans workgroups.
const SHAPES: [&[usize]; 4] = [&[1], &[17], &[3, 65], &[4099]];

#[test]
fn diffsynth_lr_is_a_third_for_five_steps_as_torch_constant_lr() {
    // torch.optim.lr_scheduler.ConstantLR(AdamW(lr=1e-4)), lr seen by optimizer steps 1..8
    let torch = [
        3.3333333333333335e-05,
        3.3333333333333335e-05,
        3.3333333333333335e-05,
        3.3333333333333335e-05,
        3.3333333333333335e-05,
        1e-4,
        1e-4,
        1e-4,
    ];
    for (i, want) in torch.iter().enumerate() {
        let got = LrSchedule::DiffSynth.lr(1e-4, i as u64 + 1);
        assert!((got - want).abs() <= 1e-20, "step {}: {got} vs {want}", i + 1);
    }
}

#[test]
fn warmup_rises_linearly_to_the_base_lr() {
    let s = LrSchedule::Constant { warmup: 4 };
    let lrs: Vec<f64> = (1..=6).map(|k| s.lr(2.0, k)).collect();
    assert_eq!(lrs, [0.5, 1.0, 1.5, 2.0, 2.0, 2.0]);
    assert_eq!(LrSchedule::Constant { warmup: 0 }.lr(2.0, 1), 2.0);
}

#[test]
fn linear_and_cosine_schedules_decay_to_zero_at_the_last_step_after_the_warmup() {
    // base 1, warmup W = 2, last step T = 10: s < 2 is s/2; from s = 2, p = (s − 2)/8;
    // linear 1 − p, cosine (1 + cos πp)/2, both 1 at s = 2 and 0 at s = 10 (values by hand).
    let (lin, cos) = (LrSchedule::Linear { warmup: 2, steps: 10 }, LrSchedule::Cosine { warmup: 2, steps: 10 });
    let want_lin = [(1, 0.5), (2, 1.0), (3, 0.875), (6, 0.5), (9, 0.125), (10, 0.0)];
    let want_cos = [
        (1, 0.5),
        (2, 1.0),
        (4, 0.8535533905932737), // (1 + cos π/4)/2
        (6, 0.5),
        (8, 0.14644660940672624), // (1 + cos 3π/4)/2
        (10, 0.0),
    ];
    for (sched, want) in [(lin, &want_lin), (cos, &want_cos)] {
        for &(s, want) in want {
            let got = sched.lr(1.0, s);
            assert!((got - want).abs() < 1e-15, "{sched:?} step {s}: {got} vs {want}");
        }
    }
    // No warmup: step 1 is already on the decay (p = 1/T); a run that ends within its warmup
    // ends at 0 on its last step; constant keeps the base after the warmup.
    assert_eq!(LrSchedule::Linear { warmup: 0, steps: 4 }.lr(2.0, 1), 1.5);
    assert_eq!(LrSchedule::Cosine { warmup: 0, steps: 4 }.lr(2.0, 4), 0.0);
    assert_eq!(LrSchedule::Linear { warmup: 5, steps: 5 }.lr(1.0, 4), 0.8);
    assert_eq!(LrSchedule::Linear { warmup: 5, steps: 5 }.lr(1.0, 5), 0.0);
    assert_eq!(LrSchedule::Constant { warmup: 2 }.lr(1.0, 10), 1.0);
    for name in wgdit::train::optim::LR_SCHEDULES {
        assert_eq!(LrSchedule::from_name(name, 1, 3).unwrap().name(), name);
    }
}

struct Run {
    gpu: Arc<Gpu>,
    params: Vec<Tensor>,
    grads: Vec<Tensor>,
    opt: AdamW,
}

fn setup(gpu: &Arc<Gpu>, init: &[Vec<f32>], opts: AdamWOptions) -> Run {
    let mk = |v: &Vec<f32>, s: &[usize], l: &str| Tensor::from_f32(gpu, v, s, DType::F32, l).unwrap();
    let params: Vec<Tensor> = init.iter().zip(SHAPES).map(|(v, s)| mk(v, s, "param")).collect();
    let grads: Vec<Tensor> = SHAPES.iter().map(|s| Tensor::zeros(gpu, s, DType::F32, "grad").unwrap()).collect();
    let pairs: Vec<(Tensor, Tensor)> = params.iter().cloned().zip(grads.iter().cloned()).collect();
    let opt = AdamW::new(gpu, &pairs, opts).unwrap();
    Run { gpu: gpu.clone(), params, grads, opt }
}

/// CPU state: params, m, v per tensor.
struct Host {
    p: Vec<Vec<f32>>,
    m: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}

impl Host {
    fn new(init: &[Vec<f32>]) -> Host {
        let zeros = || init.iter().map(|p| vec![0f32; p.len()]).collect();
        Host { p: init.to_vec(), m: zeros(), v: zeros() }
    }
    fn step(&mut self, h: &Hyper, step: u32, grads: &[Vec<f32>], scale: f32, max_norm: f32) {
        let refs: Vec<&[f32]> = grads.iter().map(|g| &g[..]).collect();
        let sq = wgdit::kernels::norm::sq_norm::cpu::sq_norm(&refs) as f32;
        for (i, g) in grads.iter().enumerate() {
            let p = params(g.len(), h, step, scale, max_norm);
            cpu::step(&p, sq, g, &mut self.p[i], &mut self.m[i], &mut self.v[i]);
        }
    }
}

fn init(seed: u64) -> Vec<Vec<f32>> {
    let mut rng = Rng::new(seed);
    SHAPES.iter().map(|s| rng.vec_normal(s.iter().product(), 1.0)).collect()
}

/// Runs `steps` steps on GPU and CPU with the DiffSynth lr schedule and compares after each.
fn compare(seed: u64, scale: f32, max_norm: f32, steps: u32) {
    let gpu = test_gpu();
    let hyper = Hyper { lr: 1e-2, ..Hyper::default() };
    let opts = AdamWOptions { hyper, max_norm };
    let x0 = init(seed);
    let run = setup(&gpu, &x0, opts);
    let mut host = Host::new(&x0);
    let mut rng = Rng::new(seed + 100);
    let mut worst = (0f64, 0f64);
    for step in 1..=steps {
        let lr = LrSchedule::DiffSynth.lr(1e-2, step as u64);
        let grads: Vec<Vec<f32>> = SHAPES.iter().map(|s| rng.vec_normal(s.iter().product(), 0.7)).collect();
        for (t, g) in run.grads.iter().zip(&grads) {
            run.gpu.write(&t.buffer, 0, bytemuck::cast_slice(g));
        }
        run.opt.step(step, lr, scale).unwrap().expect("finite gradients");
        host.step(&Hyper { lr, ..hyper }, step, &grads, scale, max_norm);
        if max_norm > 0.0 {
            let refs: Vec<&[f32]> = grads.iter().map(|g| &g[..]).collect();
            let norm = scale as f64 * wgdit::kernels::norm::sq_norm::cpu::sq_norm(&refs).sqrt();
            assert!(norm > 2.0 * max_norm as f64, "clipping is active (norm {norm})");
        }
        let (m, v) = run.opt.moments().unwrap();
        for i in 0..SHAPES.len() {
            let name = format!("step {step} tensor {i}");
            let p = run.params[i].to_f32(&gpu).unwrap();
            for (what, got, want) in [("param", &p, &host.p[i]), ("m", &m[i], &host.m[i]), ("v", &v[i], &host.v[i])] {
                let st = assert_close(&format!("{name} {what}"), got, want, STEP);
                worst = (worst.0.max(st.max_abs), worst.1.max(st.rel_l2));
            }
        }
    }
    println!(
        "adamw scale {scale} max_norm {max_norm}: worst max_abs {:.2e}, rel_l2 {:.2e} over {steps} steps",
        worst.0, worst.1
    );
    // one AdamW dispatch per tensor, and the global norm (read back every step, clipping or not)
    assert_eq!(run.opt.dispatches(), SHAPES.len() + SHAPES.len() + 1);
}

#[test]
fn adamw_over_four_tensors_matches_the_cpu_reference_for_six_steps() {
    compare(1, 1.0, 0.0, 6);
}

#[test]
fn adamw_with_accumulation_scale_and_global_norm_clipping_matches_the_cpu_reference() {
    // grads ~0.7·N(0,1) over 4412 elements: norm ≈ 46·0.25 ≫ 0.5, so clipping is active
    compare(2, 0.25, 0.5, 4);
}

#[test]
fn a_non_finite_gradient_is_reported_and_never_applied() {
    let gpu = test_gpu();
    for (bad, max_norm) in [(f32::NAN, 0.0), (f32::INFINITY, 0.0), (f32::NAN, 1.0), (3e30, 0.0)] {
        let start = init(7);
        let run = setup(&gpu, &start, AdamWOptions { max_norm, ..AdamWOptions::default() });
        for (i, t) in run.grads.iter().enumerate() {
            let mut g = vec![0.25f32; t.numel()];
            if i == 2 {
                g[t.numel() / 2] = bad; // 3e30² overflows the f32 norm
            }
            gpu.write(&t.buffer, 0, bytemuck::cast_slice(&g));
        }
        let sq = run.opt.step(1, 1e-2, 1.0).unwrap().expect_err("a non-finite norm");
        assert!(!sq.is_finite(), "{bad}: norm {sq}");
        for (p, want) in run.params.iter().zip(&start) {
            assert_eq!(&p.to_f32(&gpu).unwrap(), want, "{bad}: a parameter moved");
        }
    }
}

#[test]
fn zero_grads_clears_every_gradient() {
    let gpu = test_gpu();
    let run = setup(&gpu, &init(3), AdamWOptions::default());
    for t in &run.grads {
        gpu.poison(&t.buffer);
    }
    run.opt.zero_grads();
    for t in &run.grads {
        assert!(t.to_f32(&gpu).unwrap().iter().all(|&x| x == 0.0));
    }
}

#[test]
fn moments_restored_into_a_new_optimizer_continue_identically() {
    let gpu = test_gpu();
    let opts = AdamWOptions { hyper: Hyper { lr: 1e-2, ..Hyper::default() }, max_norm: 1.0 };
    let x0 = init(4);
    let a = setup(&gpu, &x0, opts);
    let mut rng = Rng::new(5);
    let grads: Vec<Vec<Vec<f32>>> =
        (0..4).map(|_| SHAPES.iter().map(|s| rng.vec_normal(s.iter().product(), 0.5)).collect()).collect();
    let feed = |r: &Run, g: &[Vec<f32>], step: u32| {
        for (t, g) in r.grads.iter().zip(g) {
            r.gpu.write(&t.buffer, 0, bytemuck::cast_slice(g));
        }
        r.opt.step(step, 1e-2, 1.0).unwrap().expect("finite gradients");
    };
    feed(&a, &grads[0], 1);
    feed(&a, &grads[1], 2);
    // "checkpoint": params and moments to the host, into a fresh optimizer
    let p: Vec<Vec<f32>> = a.params.iter().map(|t| t.to_f32(&gpu).unwrap()).collect();
    let (m, v) = a.opt.moments().unwrap();
    let b = setup(&gpu, &p, opts);
    b.opt.set_moments(&m, &v);
    for (k, g) in grads[2..].iter().enumerate() {
        feed(&a, g, 3 + k as u32);
        feed(&b, g, 3 + k as u32);
    }
    for i in 0..SHAPES.len() {
        assert_eq!(a.params[i].to_f32(&gpu).unwrap(), b.params[i].to_f32(&gpu).unwrap(), "tensor {i}");
    }
}

#[test]
fn lora_parameters_upload_train_and_download() {
    use wgdit::models::qwen_image::DitConfig;
    use wgdit::train::lora::{parse_targets, LoraConfig, LoraParams};
    let cfg = DitConfig {
        num_layers: 1,
        attention_head_dim: 8,
        joint_attention_dim: 8,
        axes_dims_rope: [2, 3, 3],
        ..DitConfig::tiny()
    };
    let gpu = test_gpu();
    let conf = LoraConfig { rank: 2, alpha: 2.0, targets: parse_targets("to_q,img_mod.1") };
    let mut lora = LoraParams::init(&cfg, &conf, &mut Rng::new(1)).unwrap();
    let before = lora.clone();
    let params = lora.upload(&gpu).unwrap();
    let grads: Vec<Tensor> = params.iter().map(|p| Tensor::zeros(&gpu, &p.shape, DType::F32, "g").unwrap()).collect();
    let pairs: Vec<(Tensor, Tensor)> = params.iter().cloned().zip(grads.iter().cloned()).collect();
    let opt = AdamW::new(&gpu, &pairs, AdamWOptions::default()).unwrap();
    for g in &grads {
        gpu.write(&g.buffer, 0, bytemuck::cast_slice(&vec![1.0f32; g.numel()]));
    }
    opt.step(1, 1e-3, 1.0).unwrap().expect("finite gradients");
    lora.download(&gpu, &params).unwrap();
    // step 1 with g = 1: p·(1 − lr·wd) − lr·m̂/(√v̂ + eps) ≈ p − 1e-3 for every element
    for (b, a) in before.params.iter().zip(&lora.params) {
        assert!(b.b.iter().zip(&a.b).all(|(x, y)| (x - y - 1e-3).abs() < 1e-6), "{}", a.module.path);
        assert!(b.a.iter().zip(&a.a).all(|(x, y)| ((x * (1.0 - 1e-5) - y) - 1e-3).abs() < 1e-6));
    }
}

/// The same tensors as [`setup`], allocated and packed by the optimizer.
fn setup_packed(gpu: &Arc<Gpu>, init: &[Vec<f32>], opts: AdamWOptions) -> Run {
    let named: Vec<(String, Vec<usize>, &[f32])> =
        init.iter().zip(SHAPES).enumerate().map(|(i, (v, s))| (format!("t{i}"), s.to_vec(), &v[..])).collect();
    let opt = AdamW::packed(gpu, &named, opts).unwrap();
    let (params, grads) = opt.pairs().into_iter().unzip();
    Run { gpu: gpu.clone(), params, grads, opt }
}

#[test]
fn packed_adamw_equals_per_tensor_adamw_bit_for_bit() {
    // One dispatch over packs (tensors at 4096-element offsets, zero padding) vs one per tensor:
    // the same norm partials and the same per-element operations, so every bit agrees, with
    // clipping and accumulation scaling on.
    let gpu = test_gpu();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for (seed, scale, max_norm) in [(11, 1.0, 0.0), (12, 0.25, 0.5)] {
        let opts = AdamWOptions { hyper: Hyper { lr: 1e-2, ..Hyper::default() }, max_norm };
        let x0 = init(seed);
        let (a, b) = (setup(&gpu, &x0, opts), setup_packed(&gpu, &x0, opts));
        assert_eq!((a.opt.dispatches(), b.opt.dispatches()), (2 * SHAPES.len() + 1, 3));
        let mut rng = Rng::new(seed + 1);
        for step in 1..=4 {
            let grads: Vec<Vec<f32>> = SHAPES.iter().map(|s| rng.vec_normal(s.iter().product(), 0.7)).collect();
            let mut norms = Vec::new();
            for r in [&a, &b] {
                r.opt.zero_grads();
                for (t, g) in r.grads.iter().zip(&grads) {
                    r.gpu.write(&t.buffer, 0, bytemuck::cast_slice(g));
                }
                norms.push(r.opt.step(step, 1e-2, scale).unwrap().expect("finite gradients"));
            }
            assert_eq!(norms[0].to_bits(), norms[1].to_bits(), "step {step}: squared norms {norms:?}");
            let ((ma, va), (mb, vb)) = (a.opt.moments().unwrap(), b.opt.moments().unwrap());
            for i in 0..SHAPES.len() {
                let (pa, pb) = (a.params[i].to_f32(&gpu).unwrap(), b.params[i].to_f32(&gpu).unwrap());
                assert_eq!(bits(&pa), bits(&pb), "seed {seed} step {step} tensor {i}: param");
                assert_eq!(bits(&ma[i]), bits(&mb[i]), "seed {seed} step {step} tensor {i}: m");
                assert_eq!(bits(&va[i]), bits(&vb[i]), "seed {seed} step {step} tensor {i}: v");
            }
        }
    }
}

#[test]
fn packed_adamw_is_three_dispatches_for_any_number_of_tensors_and_zeroes_on_the_gpu() {
    let gpu = test_gpu();
    let data: Vec<Vec<f32>> = (0..40).map(|i| vec![0.5; 1 + 97 * i]).collect();
    for count in [1, 4, 40] {
        let named: Vec<(String, Vec<usize>, &[f32])> =
            data[..count].iter().enumerate().map(|(i, v)| (format!("t{i}"), vec![v.len()], &v[..])).collect();
        let opt = AdamW::packed(&gpu, &named, AdamWOptions::default()).unwrap();
        assert_eq!((opt.tensors(), opt.dispatches()), (count, 3), "{count} tensors");
        for (p, g) in opt.pairs() {
            assert_eq!(p.to_f32(&gpu).unwrap(), vec![0.5; p.numel()], "initial values");
            gpu.poison(&g.buffer);
        }
        opt.zero_grads();
        for (_, g) in opt.pairs() {
            assert!(g.to_f32(&gpu).unwrap().iter().all(|&x| x == 0.0), "{count} tensors: a gradient not zeroed");
        }
    }
}
