//! Joint flash attention (forward and backward) vs the f64 CPU reference, outputs poisoned before
//! every run; the CPU backward vs central finite differences of the CPU forward.

use crate::gpu::Gpu;
use crate::kernels::attention::{self, cpu, BackwardArgs};
use crate::layout::AttnOptions;
use crate::layout::JointShape;
use crate::rng::Rng;
use crate::tensor::{DType, Tensor};
use crate::testing::{assert_close, test_gpu, Stats, Tol};

/// O is a convex combination of V rows (|O| ≲ 1): f32 dot products of length Dh, exp() within a few
/// ulp of libm, and an online-softmax rescale per key tile.
const TOL_O: Tol = Tol { abs: 2e-6, rel: 1e-5, rel_l2: 1e-5 };
/// lse = m + log(l): absolute error ~ ulp(|m|), so relative.
const TOL_LSE: Tol = Tol { abs: 2e-6, rel: 2e-6, rel_l2: 1e-6 };
/// dQ/dK/dV sum S terms of P·(dP − D)·K: dP − D cancels (D is the P-weighted mean of dP), so the
/// absolute error follows |dP| ~ sqrt(Dh) rather than the gradient's size.
const TOL_GRAD: Tol = Tol { abs: 1e-5, rel: 1e-4, rel_l2: 1e-5 };

#[derive(Clone, Copy, Debug, PartialEq)]
enum MaskKind {
    None,
    AllValid,
    Padded,        // trailing zeros: the last third of the text tokens of the last sample
    NonContiguous, // [1,0,1,0,1,1,0] repeated, every sample
    LeftPadded,    // leading zeros: the first (b + 1)·s_txt / (2B) text tokens of sample b
}

struct Case {
    shape: JointShape,
    mask: MaskKind,
    /// Q and K uniform in ±amp.
    amp: f32,
}

fn shape(batch: usize, heads: usize, head_dim: usize, s_txt: usize, s_img: usize) -> JointShape {
    JointShape { batch, heads, head_dim, s_txt, s_img }
}

fn mask_values(sh: &JointShape, kind: MaskKind) -> Option<Vec<f32>> {
    let n = sh.s_txt;
    let row = |b: usize, j: usize| -> f32 {
        match kind {
            MaskKind::None | MaskKind::AllValid => 1.0,
            MaskKind::Padded => (b + 1 < sh.batch || j < n - n / 3) as u8 as f32,
            MaskKind::NonContiguous => [1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0][j % 7],
            MaskKind::LeftPadded => (j >= (b + 1) * n / (2 * sh.batch)) as u8 as f32,
        }
    };
    match kind {
        MaskKind::None => None,
        _ => Some((0..sh.batch).flat_map(|b| (0..n).map(move |j| row(b, j))).collect()),
    }
}

struct Inputs {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    mask: Option<Vec<f32>>,
    d_o: Vec<f32>,
}

fn inputs(case: &Case, seed: u64) -> Inputs {
    let mut rng = Rng::new(seed);
    let n = case.shape.head_major_len();
    Inputs {
        q: rng.vec_uniform(n, -case.amp, case.amp),
        k: rng.vec_uniform(n, -case.amp, case.amp),
        v: rng.vec_uniform(n, -1.0, 1.0),
        mask: mask_values(&case.shape, case.mask),
        d_o: rng.vec_normal(n, 1.0),
    }
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}
fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

fn upload(gpu: &Gpu, v: &[f32], name: &str) -> Tensor {
    Tensor::from_f32(gpu, v, &[v.len()], DType::F32, name).unwrap()
}

fn poisoned(gpu: &Gpu, n: usize, name: &str) -> Tensor {
    let t = Tensor::zeros(gpu, &[n], DType::F32, name).unwrap();
    gpu.poison(&t.buffer);
    t
}

struct GpuRun {
    o: Vec<f32>,
    lse: Vec<f32>,
    grads: [Vec<f32>; 3],
}

/// Runs forward then backward on the GPU (the backward consumes the GPU's own O and lse).
fn run_gpu(gpu: &Gpu, sh: &JointShape, x: &Inputs) -> GpuRun {
    let (q, k, v, d_o) =
        (upload(gpu, &x.q, "q"), upload(gpu, &x.k, "k"), upload(gpu, &x.v, "v"), upload(gpu, &x.d_o, "do"));
    let mask = x.mask.as_ref().map(|m| upload(gpu, m, "mask"));
    let (n, nl) = (sh.head_major_len(), sh.lse_len());
    let (o, lse) = (poisoned(gpu, n, "o"), poisoned(gpu, nl, "lse"));
    let opts = AttnOptions::full(sh.heads);
    let args = attention::Args { q: &q, k: &k, v: &v, mask: mask.as_ref(), segments: None, opts, o: &o, lse: &lse };
    gpu.run(&[attention::launch_forward(gpu, sh, &args).unwrap()]).unwrap();
    let (dq, dk, dv, delta) =
        (poisoned(gpu, n, "dq"), poisoned(gpu, n, "dk"), poisoned(gpu, n, "dv"), poisoned(gpu, nl, "delta"));
    let args = BackwardArgs {
        q: &q,
        k: &k,
        v: &v,
        mask: mask.as_ref(),
        o: &o,
        lse: &lse,
        d_o: &d_o,
        delta: &delta,
        dq: &dq,
        dk: &dk,
        dv: &dv,
    };
    gpu.run(&attention::launch_backward(gpu, sh, &args).unwrap()).unwrap();
    let get = |t: &Tensor| t.to_f32(gpu).unwrap();
    GpuRun { o: get(&o), lse: get(&lse), grads: [get(&dq), get(&dk), get(&dv)] }
}

/// Compares forward and backward with the reference; returns the stats of (O, lse, dQ, dK, dV).
fn check_case(gpu: &Gpu, case: &Case, seed: u64) -> [Stats; 5] {
    let sh = &case.shape;
    let x = inputs(case, seed);
    let got = run_gpu(gpu, sh, &x);
    let (q, k, v) = (f64s(&x.q), f64s(&x.k), f64s(&x.v));
    let (o, lse) = cpu::forward(sh, &cpu::Visibility::full(sh, x.mask.as_deref()), &q, &k, &v);
    let g = cpu::backward(sh, &q, &k, &v, x.mask.as_deref(), &f64s(&x.d_o));
    let name = format!("{sh:?} {:?} amp {}", case.mask, case.amp);
    let s_o = assert_close(&format!("O {name}"), &got.o, &f32s(&o), TOL_O);
    let s_l = assert_close(&format!("lse {name}"), &got.lse, &f32s(&lse), TOL_LSE);
    let mut s = [s_o, s_l, s_o, s_o, s_o];
    for (i, what) in ["dQ", "dK", "dV"].iter().enumerate() {
        s[2 + i] = assert_close(&format!("{what} {name}"), &got.grads[i], &f32s(&g[i]), TOL_GRAD);
    }
    assert_masked_keys_have_zero_gradient(sh, x.mask.as_deref(), &got.grads);
    s
}

fn assert_masked_keys_have_zero_gradient(sh: &JointShape, mask: Option<&[f32]>, grads: &[Vec<f32>; 3]) {
    let Some(m) = mask else { return };
    for b in 0..sh.batch {
        for j in (0..sh.s_txt).filter(|&j| m[b * sh.s_txt + j] == 0.0) {
            for h in 0..sh.heads {
                let row = ((b * sh.heads + h) * sh.seq() + j) * sh.head_dim;
                let zero = |g: &Vec<f32>| g[row..row + sh.head_dim].iter().all(|&x| x == 0.0);
                assert!(zero(&grads[1]) && zero(&grads[2]), "masked key b={b} j={j} h={h} has nonzero dK/dV");
            }
        }
    }
}

fn report(label: &str, s: &[Stats; 5]) {
    let names = ["O", "lse", "dQ", "dK", "dV"];
    let parts: Vec<String> =
        names.iter().zip(s).map(|(n, s)| format!("{n} max_abs {:.2e} rel_l2 {:.2e}", s.max_abs, s.rel_l2)).collect();
    println!("{label}: {}", parts.join("; "));
}

#[test]
fn attention_matches_cpu_reference_across_shapes_and_masks() {
    let gpu = test_gpu();
    use MaskKind::*;
    let cases = [
        (shape(1, 1, 16, 1, 1), None),
        (shape(1, 1, 16, 0, 16), None),
        (shape(2, 1, 16, 0, 17), AllValid), // a mask over zero text tokens
        (shape(2, 3, 16, 5, 31), Padded),
        (shape(1, 3, 16, 7, 65), NonContiguous),
        (shape(2, 1, 64, 7, 16), NonContiguous),
        (shape(2, 3, 16, 1, 65), AllValid),
        (shape(1, 1, 64, 5, 1), Padded),
        (shape(2, 1, 16, 7, 31), None),
    ];
    for (i, (sh, mask)) in cases.into_iter().enumerate() {
        let case = Case { shape: sh, mask, amp: 1.0 };
        report(&format!("{sh:?} {mask:?}"), &check_case(&gpu, &case, 10 + i as u64));
    }
}

#[test]
fn attention_over_307_tokens_crosses_unaligned_tile_boundaries() {
    // S = 7 + 300 = 307: 5 query workgroups of 64 (the last with 51 rows) and 10 key tiles of 32
    // (the last with 19 keys), with a non-contiguous text mask on top.
    let gpu = test_gpu();
    let case = Case { shape: shape(2, 1, 16, 7, 300), mask: MaskKind::NonContiguous, amp: 1.0 };
    report("S=307", &check_case(&gpu, &case, 21));
}

#[test]
fn attention_with_head_dim_128_matches_cpu_reference() {
    // Dh = 128: key tiles of 16 (the real model's head size).
    let gpu = test_gpu();
    let case = Case { shape: shape(1, 2, 128, 5, 65), mask: MaskKind::Padded, amp: 1.0 };
    report("Dh=128", &check_case(&gpu, &case, 31));
}

#[test]
fn attention_stays_accurate_with_scores_near_plus_minus_50() {
    // Q, K in ±7 with Dh = 16 (scale 1/4): scaled scores reach about ±50, so exp(s) alone would
    // overflow nothing but lose everything to a naive softmax's cancellation; the online max keeps
    // every exponent ≤ 0.
    let gpu = test_gpu();
    let case = Case { shape: shape(2, 3, 16, 7, 65), mask: MaskKind::NonContiguous, amp: 7.0 };
    let x = inputs(&case, 41);
    let (q, k) = (f64s(&x.q), f64s(&x.k));
    let max_score = (0..case.shape.seq())
        .flat_map(|i| (0..case.shape.seq()).map(move |j| (i, j)))
        .map(|(i, j)| (0..16).map(|d| q[i * 16 + d] * k[j * 16 + d]).sum::<f64>().abs() / 4.0)
        .fold(0.0, f64::max);
    assert!(max_score > 40.0, "test inputs too tame: max |score| {max_score}");
    report(&format!("large scores (max |s| {max_score:.1})"), &check_case(&gpu, &case, 41));
}

#[test]
#[ignore = "slow on lavapipe: S = 2565 takes about 15 s alone (passes: rel_l2 ≤ 1.3e-6)"]
fn attention_over_2565_tokens_matches_cpu_reference() {
    let gpu = test_gpu();
    let case = Case { shape: shape(1, 1, 16, 5, 2560), mask: MaskKind::Padded, amp: 1.0 };
    report("S=2565", &check_case(&gpu, &case, 51));
}

/// L = Σ O·dO in f64.
fn loss(sh: &JointShape, q: &[f64], k: &[f64], v: &[f64], mask: Option<&[f32]>, d_o: &[f64]) -> f64 {
    let (o, _) = cpu::forward(sh, &cpu::Visibility::full(sh, mask), q, k, v);
    o.iter().zip(d_o).map(|(a, b)| a * b).sum()
}

#[test]
fn cpu_backward_matches_central_finite_differences() {
    for (sh, mask) in [(shape(2, 2, 4, 3, 4), MaskKind::Padded), (shape(1, 1, 8, 7, 2), MaskKind::NonContiguous)] {
        let x = inputs(&Case { shape: sh, mask, amp: 1.5 }, 61);
        let m = x.mask.as_deref();
        let mut qkv = [f64s(&x.q), f64s(&x.k), f64s(&x.v)];
        let d_o = f64s(&x.d_o);
        let analytic = cpu::backward(&sh, &qkv[0], &qkv[1], &qkv[2], m, &d_o);
        let h = 1e-5;
        for t in 0..3 {
            for e in 0..qkv[t].len() {
                let x0 = qkv[t][e];
                qkv[t][e] = x0 + h;
                let lp = loss(&sh, &qkv[0], &qkv[1], &qkv[2], m, &d_o);
                qkv[t][e] = x0 - h;
                let lm = loss(&sh, &qkv[0], &qkv[1], &qkv[2], m, &d_o);
                qkv[t][e] = x0;
                let fd = (lp - lm) / (2.0 * h);
                // central differences: truncation O(h²) ~ 1e-10, rounding ~ 1e-16 / h ~ 1e-11
                assert!(
                    (fd - analytic[t][e]).abs() <= 1e-7 * (1.0 + fd.abs()),
                    "{sh:?} tensor {t} [{e}]: fd {fd} vs analytic {}",
                    analytic[t][e]
                );
            }
        }
    }
}

mod options;
mod tiles;

#[test]
fn attention_with_trusted_shaders_matches_checked_shaders_bit_for_bit() {
    // Unchecked pipelines drop wgpu's bounds clamping, nothing else: every in-bounds access reads
    // and writes the same values, so forward and backward agree exactly (docs/reliability.md).
    let (checked, trusted) = (test_gpu(), crate::testing::trusted_test_gpu());
    for (i, (sh, mask)) in
        [(shape(2, 3, 16, 5, 31), MaskKind::Padded), (shape(1, 1, 64, 7, 65), MaskKind::None)].into_iter().enumerate()
    {
        let x = inputs(&Case { shape: sh, mask, amp: 1.0 }, 40 + i as u64);
        let (a, b) = (run_gpu(&checked, &sh, &x), run_gpu(&trusted, &sh, &x));
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&a.o), bits(&b.o), "O {sh:?}");
        assert_eq!(bits(&a.lse), bits(&b.lse), "lse {sh:?}");
        for (g, h) in a.grads.iter().zip(&b.grads) {
            assert_eq!(bits(g), bits(h), "grads {sh:?}");
        }
    }
}
