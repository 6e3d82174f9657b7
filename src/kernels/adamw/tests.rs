//! AdamW: the f32 CPU reference vs torch.optim.AdamW numbers (fixture from
//! tools/gen_adamw_fixture.py), the GPU kernel vs both, and the squared-norm reduction.

use crate::gpu::Gpu;
use crate::kernels::adamw::{self, cpu, Hyper};
use crate::kernels::norm::sq_norm;
use crate::kernels::test_util::*;
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::testing::{assert_close, test_gpu, Tol};

// Same f32 operations in the same order as torch (config A is bit-exact). With clipping the
// norm is summed in another order than torch's vector_norm, so the clip coefficient can be 1 ulp
// off and scales every gradient by it: ~1-ulp (6e-8 relative) differences throughout, also from
// GPU sqrt/division. Parameters are O(1) and move by ~lr per step.
const STEP: Tol = Tol { abs: 1e-7, rel: 1e-6, rel_l2: 5e-7 };
const GRAD_SCALE: f32 = 0.25;
const MAX_NORM: f32 = 0.5;

struct Fixture(Vec<u8>);

impl Fixture {
    fn load() -> Fixture {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/adamw/adamw_torch.safetensors");
        Fixture(std::fs::read(path).expect("fixture missing: run tools/gen_adamw_fixture.py"))
    }
    fn get(&self, name: &str) -> Vec<f32> {
        let st = safetensors::SafeTensors::deserialize(&self.0).expect("fixture parses");
        let t = st.tensor(name).unwrap_or_else(|_| panic!("fixture lacks {name}"));
        t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
    }
    fn hyper(&self, cfg: &str) -> Hyper {
        let st = safetensors::SafeTensors::deserialize(&self.0).expect("fixture parses");
        let h: Vec<f64> = st
            .tensor(&format!("{cfg}.hyper"))
            .expect("hyper")
            .data()
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        Hyper { lr: h[0], beta1: h[1], beta2: h[2], eps: h[3], weight_decay: h[4] }
    }
    fn grads(&self) -> [Vec<f32>; 3] {
        [self.get("g1"), self.get("g2"), self.get("g3")]
    }
}

/// (grad_scale, max_norm) of a fixture config.
fn clip_of(cfg: &str) -> (f32, f32) {
    if cfg == "b" {
        (GRAD_SCALE, MAX_NORM)
    } else {
        (1.0, 0.0)
    }
}

#[test]
fn cpu_adamw_reproduces_torch_on_three_steps_with_and_without_clipping() {
    let fx = Fixture::load();
    for cfg in ["a", "b"] {
        let h = fx.hyper(cfg);
        let (scale, max_norm) = clip_of(cfg);
        let mut p = fx.get("p0");
        let (mut m, mut v) = (vec![0.0; p.len()], vec![0.0; p.len()]);
        for (i, g) in fx.grads().iter().enumerate() {
            let sq = sq_norm::cpu::sq_norm(&[g]) as f32;
            cpu::step(&adamw::params(p.len(), &h, i as u32 + 1, scale, max_norm), sq, g, &mut p, &mut m, &mut v);
            let s = assert_close(&format!("{cfg} cpu p{}", i + 1), &p, &fx.get(&format!("{cfg}.p{}", i + 1)), STEP);
            eprintln!("{cfg} step {}: cpu vs torch max_abs {:.2e} rel_l2 {:.2e}", i + 1, s.max_abs, s.rel_l2);
        }
        assert_close(&format!("{cfg} m3"), &m, &fx.get(&format!("{cfg}.m3")), STEP);
        assert_close(&format!("{cfg} v3"), &v, &fx.get(&format!("{cfg}.v3")), STEP);
    }
}

/// Runs `steps` GPU AdamW steps (with the squared-norm passes when clipping) and returns (p, m, v).
fn gpu_steps(
    gpu: &Gpu,
    h: &Hyper,
    p0: &[f32],
    grads: &[Vec<f32>],
    scale: f32,
    max_norm: f32,
    first_step: u32,
) -> [Vec<f32>; 3] {
    let n = p0.len();
    let (p, m, v) = (up(gpu, p0, &[n]), up(gpu, &vec![0.0; n], &[n]), up(gpu, &vec![0.0; n], &[n]));
    let partials = poisoned(gpu, &[sq_norm::partials(&[n])]);
    let sq = poisoned(gpu, &[1]);
    for (i, g) in grads.iter().enumerate() {
        let tg = up(gpu, g, &[n]);
        let mut launches = Vec::new();
        if max_norm > 0.0 {
            launches = sq_norm::launch(gpu, &sq_norm::Args { tensors: &[&tg], partials: &partials, out: &sq }).unwrap();
        }
        let params = adamw::params(n, h, first_step + i as u32, scale, max_norm);
        let sqn = (max_norm > 0.0).then_some(&sq);
        launches.push(
            adamw::launch(gpu, &adamw::Args { params, grad: &tg, sq_norm: sqn, param: &p, m: &m, v: &v }).unwrap(),
        );
        gpu.run(&launches).unwrap();
    }
    [&p, &m, &v].map(|t: &Tensor| t.to_f32(gpu).unwrap())
}

#[test]
fn gpu_adamw_matches_torch_fixture() {
    let gpu = test_gpu();
    let fx = Fixture::load();
    for cfg in ["a", "b"] {
        let (scale, max_norm) = clip_of(cfg);
        let [p, m, v] = gpu_steps(&gpu, &fx.hyper(cfg), &fx.get("p0"), &fx.grads(), scale, max_norm, 1);
        let s = assert_close(&format!("{cfg} gpu p3"), &p, &fx.get(&format!("{cfg}.p3")), STEP);
        assert_close(&format!("{cfg} gpu m3"), &m, &fx.get(&format!("{cfg}.m3")), STEP);
        assert_close(&format!("{cfg} gpu v3"), &v, &fx.get(&format!("{cfg}.v3")), STEP);
        eprintln!("{cfg}: gpu vs torch after 3 steps max_abs {:.2e} rel_l2 {:.2e}", s.max_abs, s.rel_l2);
    }
}

#[test]
fn gpu_adamw_matches_cpu_reference_at_awkward_sizes() {
    let gpu = test_gpu();
    let h = Hyper { lr: 3e-3, ..Hyper::default() };
    for (i, &n) in [1usize, 3, 17, 65, 257, 70001].iter().enumerate() {
        let mut rng = Rng::new(i as u64);
        let p0 = normal(&mut rng, n, 1.0);
        let grads: Vec<Vec<f32>> = (0..2).map(|_| normal(&mut rng, n, 0.5)).collect();
        let max_norm = if i % 2 == 0 { 0.3 } else { 0.0 };
        // start at step 7 so the bias corrections are not the first-step ones
        let got = gpu_steps(&gpu, &h, &p0, &grads, 0.5, max_norm, 7);
        let (mut p, mut m, mut v) = (p0.clone(), vec![0.0; n], vec![0.0; n]);
        for (k, g) in grads.iter().enumerate() {
            let sq = sq_norm::cpu::sq_norm(&[g]) as f32;
            cpu::step(&adamw::params(n, &h, 7 + k as u32, 0.5, max_norm), sq, g, &mut p, &mut m, &mut v);
        }
        // in-place buffers cannot be poisoned; assert_close still rejects any NaN
        assert_close(&format!("p n={n}"), &got[0], &p, STEP);
        assert_close(&format!("m n={n}"), &got[1], &m, STEP);
        assert_close(&format!("v n={n}"), &got[2], &v, STEP);
    }
}

#[test]
fn squared_norm_sums_several_tensors_without_atomics() {
    let gpu = test_gpu();
    let mut rng = Rng::new(9);
    let lens = [1usize, 17, 4096, 4097, 70001];
    let data: Vec<Vec<f32>> = lens.iter().map(|&n| normal(&mut rng, n, 1.0)).collect();
    let ts: Vec<Tensor> = data.iter().map(|d| up(&gpu, d, &[d.len()])).collect();
    let refs: Vec<&Tensor> = ts.iter().collect();
    let (partials, out) = (poisoned(&gpu, &[sq_norm::partials(&lens)]), poisoned(&gpu, &[1]));
    gpu.run(&sq_norm::launch(&gpu, &sq_norm::Args { tensors: &refs, partials: &partials, out: &out }).unwrap())
        .unwrap();
    let want = sq_norm::cpu::sq_norm(&data.iter().map(|d| &d[..]).collect::<Vec<_>>());
    // f32 tree sums of ~78k positive terms: relative error ~ log2(n)·eps
    let s =
        assert_close("sq_norm", &out.to_f32(&gpu).unwrap(), &[want as f32], Tol { abs: 0.0, rel: 1e-5, rel_l2: 1e-5 });
    assert_eq!(sq_norm::run(&gpu, &refs).unwrap().to_bits(), out.to_f32(&gpu).unwrap()[0].to_bits(), "apply = launch");
    eprintln!("sq_norm of {} values: rel err {:.2e}", lens.iter().sum::<usize>(), s.rel_l2);
}
